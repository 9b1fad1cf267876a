"""Recompute a bundle's test figures from its recorded test-file list, with the
device's own interpreter (no TensorFlow): ``leukoscope model test``."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np

from device.model.bundle import Bundle
from device.model.classifier import Classifier
from device.imageio import read_image
from device.analysis.preprocess import prepare_cell
from training import metrics
from training.data import record_views
from training.datasets import Record

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def verify_bundle(bundle: Bundle, roots: dict[str, str] | None = None, threads: int = 2) -> dict:
    if "test_files.csv" not in bundle.files:
        raise ValueError("this bundle records no test files")
    rows = list(csv.DictReader(io.StringIO(bundle.files["test_files.csv"].decode())))
    roots = dict(roots or {})
    names = bundle.labels
    index = {n: i for i, n in enumerate(names)}
    crops, y, mismatched = [], [], []
    for row in rows:
        root = Path(roots.get(row["dataset"], SHARED_DATA / row["dataset"]))
        path = root / row["relpath"]
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            raise FileNotFoundError(f"{path} is missing; pass --data-root {row['dataset']}=PATH")
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            mismatched.append(row["relpath"])
            continue
        pp = bundle.preprocessing
        img = read_image(path)
        if pp.crop_um:  # the device's own path, as in training
            rec = Record(str(path), row["relpath"], row["label"], None, row["dataset"],
                         float(row["um_per_px"]) if row.get("um_per_px") else None, row.get("kind") or "cell")
            views = [prepare_cell(v, pp) for v in record_views(img, rec, pp)]
        else:  # bundles before physical framing: the whole image, centre fraction
            views = [prepare_cell(img, pp, from_dataset=True)]
        crops += views
        y += [index[row["label"]]] * len(views)
    clf = Classifier(bundle, threads=threads)
    probs = np.concatenate([clf.raw(np.stack(crops[i : i + 64]))[0] for i in range(0, len(crops), 64)])
    m = metrics.classification_metrics(np.array(y), probs, names)
    recorded = bundle.metadata.get("metrics", {}).get(bundle.metadata["input"].get("quantization"), {})
    return {"n": m["n"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"], "recorded_balanced_accuracy": recorded.get("balanced_accuracy"),
            "files_with_other_content": mismatched, "per_class_sensitivity":
            {k: v["sensitivity"] for k, v in m["per_class"].items()}}
