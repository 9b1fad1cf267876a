"""A bundle's recorded test files (``test_files.csv``) as records, and where each dataset lives: the one map
from a dataset's name to its folder that ``leukoscope model test``, ``model add-reference`` and the benches use.

A checkout finds the datasets in ``../shared/data`` beside it; two of them are kept there as subsets under
their own folder names. ``--data-root NAME=PATH`` overrides any of them."""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from training.datasets import Record

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# datasets whose folder under SHARED_DATA is not their name (the subsets this project keeps)
FOLDERS = {"bone-marrow-mll": "bone-marrow-mll-subset", "aml-cytomorphology-lmu": "aml-cytomorphology-lmu-subset"}


def data_root(dataset: str, roots: dict[str, str] | None = None) -> Path:
    """The folder of ``dataset``: the one given for it, else its folder in the shared data."""
    if roots and dataset in roots:
        return Path(roots[dataset])
    return SHARED_DATA / FOLDERS.get(dataset, dataset)


@dataclass(frozen=True)
class RecordedFile:
    """One row of ``test_files.csv``: the image as a record, and the checksum the bundle recorded for it."""
    record: Record
    sha256: str

    def problem(self) -> str | None:
        """None when the file is there with the recorded content; else "missing" or "changed"."""
        path = Path(self.record.path)
        if not path.is_file():
            return "missing"
        return None if hashlib.sha256(path.read_bytes()).hexdigest() == self.sha256 else "changed"


def recorded_files(bundle, roots: dict[str, str] | None = None, dataset: str | None = None) -> list[RecordedFile]:
    """Every row of the bundle's ``test_files.csv`` (of ``dataset`` only, when given), its path resolved
    through ``data_root``."""
    if "test_files.csv" not in bundle.files:
        raise ValueError(f"{bundle.name} records no test files")
    rows = csv.DictReader(io.StringIO(bundle.files["test_files.csv"].decode()))
    return [RecordedFile(Record(str(data_root(r["dataset"], roots) / r["relpath"]), r["relpath"], r["label"], None,
                                r["dataset"], float(r["um_per_px"]) if r.get("um_per_px") else None,
                                r.get("kind") or "cell"), r["sha256"])
            for r in rows if dataset is None or r["dataset"] == dataset]
