"""The model bundle: the contract between training and the device.

A bundle is one zip archive (``*.lkb``) holding ``model.tflite``,
``metadata.json``, ``ood.npz`` (feature statistics for the unfamiliar-cell
check), ``test_files.csv`` and ``MODEL_CARD.md``. One file, so installing a
new model is a single atomic rename.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from device import labels as vocab
from device.preprocess import Preprocessing

FORMAT = "leukoscope-bundle/1"
REQUIRED_MEMBERS = ("model.tflite", "metadata.json")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


class BundleError(ValueError):
    """A bundle that must not be used; the message names the problem."""


@dataclass(frozen=True)
class Bundle:
    path: Path | None
    metadata: dict
    model_bytes: bytes
    ood: dict[str, np.ndarray] | None
    files: dict[str, bytes]

    @property
    def labels(self) -> list[str]:
        return [entry["name"] for entry in self.metadata["labels"]]

    @property
    def categories(self) -> list[str]:
        return [entry["category"] for entry in self.metadata["labels"]]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def thresholds(self) -> dict:
        return self.metadata.get("thresholds", {})

    @property
    def name(self) -> str:
        return f"{self.metadata['name']} {self.metadata['version']}"

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]["model.tflite"]


def default_bundle_path() -> Path:
    return Path(str(resources.files("device").joinpath("assets/models/default.lkb")))


def pack(files: dict[str, bytes]) -> bytes:
    """Archive members in a fixed order, uncompressed (the TFLite file does not compress well)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, files[name])
    return buf.getvalue()


def load_bundle(path: str | Path | None = None, data: bytes | None = None) -> Bundle:
    """Read and validate a bundle (structure, checksum, labels). Tensor shapes are
    checked when an interpreter is built (``device.classifier``)."""
    where = "bundle" if path is None else Path(path).name
    if data is None:
        path = Path(path) if path is not None else default_bundle_path()
        where = path.name
        try:
            size = path.stat().st_size
            if size > MAX_BUNDLE_BYTES:
                raise BundleError(f"{where}: {size:,} bytes is larger than a model bundle may be")
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{where}: model bundle not found at {path}") from None
        except OSError as exc:
            raise BundleError(f"{where}: cannot read the model bundle ({exc.strerror or exc})") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{where}: {len(data):,} bytes is larger than a model bundle may be")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise BundleError(f"{where}: archive member {bad} is corrupt (checksum mismatch)")
            files = {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        raise BundleError(f"{where}: not a Leukoscope model bundle (not a valid archive; "
                          "the file may be truncated or corrupt)") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise BundleError(f"{where}: the archive cannot be read ({exc})") from None
    missing = [m for m in REQUIRED_MEMBERS if m not in files]
    if missing:
        raise BundleError(f"{where}: the bundle lacks {', '.join(missing)}")
    try:
        meta = json.loads(files["metadata.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: metadata.json is not valid JSON ({exc})") from None
    _check_metadata(meta, where)
    model = files["model.tflite"]
    digest = hashlib.sha256(model).hexdigest()
    if digest != meta["sha256"]["model.tflite"]:
        raise BundleError(f"{where}: model.tflite checksum mismatch (expected {meta['sha256']['model.tflite'][:12]}…, "
                          f"got {digest[:12]}…): the model file is corrupt or was altered")
    ood = None
    if "ood.npz" in files:
        try:
            with np.load(io.BytesIO(files["ood.npz"])) as z:
                ood = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged member
            raise BundleError(f"{where}: ood.npz is damaged ({exc})") from None
    return Bundle(Path(path) if path is not None else None, meta, model, ood, files)


def _check_metadata(meta: dict, where: str) -> None:
    if meta.get("format") != FORMAT:
        raise BundleError(f"{where}: unsupported bundle format {meta.get('format')!r} (this device reads {FORMAT})")
    for key in ("name", "version", "task", "labels", "input", "preprocessing", "sha256"):
        if key not in meta:
            raise BundleError(f"{where}: metadata.json lacks '{key}'")
    if not meta["labels"]:
        raise BundleError(f"{where}: the bundle names no labels")
    for entry in meta["labels"]:
        if entry.get("category") not in vocab.CATEGORIES:
            raise BundleError(f"{where}: label {entry.get('name')!r} has unknown category {entry.get('category')!r}")
    try:
        Preprocessing.from_dict(meta["preprocessing"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: pre-processing settings are invalid ({exc})") from None


def summary(bundle: Bundle) -> dict:
    """What ``leukoscope model info`` shows."""
    meta = bundle.metadata
    return {
        "path": str(bundle.path) if bundle.path else None,
        "name": meta["name"], "version": meta["version"], "task": meta["task"],
        "created_at": meta.get("created_at"), "quantization": meta["input"].get("quantization"),
        "labels": meta["labels"], "input": meta["input"], "thresholds": meta.get("thresholds"),
        "datasets": meta.get("datasets"), "metrics": meta.get("metrics"), "parity": meta.get("parity"),
        "sha256": meta["sha256"], "model_bytes": len(bundle.model_bytes),
        "versions": meta.get("versions"), "model_card": meta.get("model_card"),
    }
