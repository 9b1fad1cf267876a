"""A calibration as one file: an .npz of plain arrays (no pickles) with its metadata as JSON, bound to one
bundle by that bundle's model checksum and sealed by a digest of its own content, so a file edited by hand,
damaged, or fitted for another bundle is refused when it is loaded."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np

from device.calibration.fit import Calibration

FORMAT = "leukoscope-calibration/1"
ARRAYS = ("mu", "sd", "W", "b", "ood_means", "ood_precision", "ood_class_threshold")
MAX_BYTES = 32 * 1024 * 1024


class CalibrationFileError(ValueError):
    """A calibration file that must not be used; the message names the problem."""


def _digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def dumps(cal: Calibration) -> bytes:
    arrays = {"mu": cal.mu.astype(np.float32), "sd": cal.sd.astype(np.float32), "W": cal.W.astype(np.float32),
              "b": cal.b.astype(np.float32), "ood_means": cal.ood["means"], "ood_precision": cal.ood["precision"],
              "ood_class_threshold": cal.ood["class_threshold"]}
    meta = {"format": FORMAT, "bundle_sha256": cal.bundle_sha256, "labels": cal.labels, "categories": cal.categories,
            "alpha": cal.alpha, "thresholds": cal.thresholds, "false_calls": list(cal.false_calls),
            "n_cells": cal.n_cells, "n_samples": cal.n_samples, "created_at": cal.created_at, "figures": cal.figures,
            "fit_seconds": cal.fit_seconds}
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps({**meta, "digest": _digest(arrays, meta)}).encode(), np.uint8),
             **arrays)
    return buf.getvalue()


def loads(data: bytes, bundle=None) -> Calibration:
    """Read and check a calibration file; with ``bundle``, it must have been fitted for that bundle."""
    if len(data) > MAX_BYTES:
        raise CalibrationFileError("the calibration file is larger than a calibration may be")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
        meta = json.loads(raw.pop("meta").tobytes().decode())
    except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged file
        raise CalibrationFileError(f"the calibration file is damaged ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CalibrationFileError("not a Leukoscope calibration file")
    if any(name not in raw for name in ARRAYS):
        raise CalibrationFileError("the calibration file lacks arrays")
    digest = meta.pop("digest", None)
    if digest != _digest(raw, meta):
        raise CalibrationFileError("the calibration file was altered or damaged (its content does not match its seal)")
    if bundle is not None:
        if meta["bundle_sha256"] != bundle.sha256:
            raise CalibrationFileError(f"the calibration was fitted for another model (model checksum "
                                       f"{meta['bundle_sha256'][:12]}…), not {bundle.name}")
        if meta["labels"] != list(bundle.labels):
            raise CalibrationFileError("the calibration's labels differ from the model's")
    k, d = len(meta["labels"]), raw["mu"].shape[0]
    shapes = {"W": (d, k), "b": (k,), "sd": (d,), "ood_means": (k, d), "ood_precision": (d, d),
              "ood_class_threshold": (k,)}
    for name, shape in shapes.items():
        if raw[name].shape != shape or not np.isfinite(raw[name]).all():
            raise CalibrationFileError(f"the calibration's {name} has shape {raw[name].shape}; expected {shape}")
    if bundle is not None and bundle.ood is not None and bundle.ood["means"].shape[1] != d:
        raise CalibrationFileError("the calibration's embedding width differs from the model's")
    return Calibration(meta["bundle_sha256"], meta["labels"], meta["categories"], raw["mu"].astype(np.float64),
                       raw["sd"].astype(np.float64), float(meta["alpha"]), raw["W"].astype(np.float64),
                       raw["b"].astype(np.float64), meta["thresholds"],
                       {"means": raw["ood_means"], "precision": raw["ood_precision"],
                        "class_threshold": raw["ood_class_threshold"]},
                       tuple(meta["false_calls"]), int(meta["n_cells"]), int(meta["n_samples"]), meta["created_at"],
                       meta.get("figures", {}), float(meta.get("fit_seconds", 0.0)))
