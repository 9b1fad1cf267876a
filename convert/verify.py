"""Recompute a bundle's test figures from its recorded test-file list, with the
device's own interpreter (no TensorFlow): ``leukoscope model test``."""
from __future__ import annotations

from collections import Counter

import numpy as np

from device.model.bundle import Bundle, BundleError
from device.model.classifier import Classifier
from device.imageio import read_image
from device.analysis.preprocess import prepare_cell
from training import metrics
from training.data import record_views
from training.recorded import recorded_files


def verify_bundle(bundle: Bundle, roots: dict[str, str] | None = None, threads: int = 2,
                  limit: int | None = None) -> dict:
    """Every recorded file is found and checked first (a missing one stops with the option that fixes it);
    ``limit``: then classify at most that many images of each label, in the list's order (a quick check)."""
    names = bundle.labels
    index = {n: i for i, n in enumerate(names)}
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    files, mismatched = _usable_files(bundle, roots, limit)
    pp = bundle.preprocessing
    crops, y = [], []
    for rec in files:
        img = read_image(rec.path)
        if pp.crop_um:  # the device's own path, as in training
            views = [prepare_cell(v, pp) for v in record_views(img, rec, pp)]
        else:  # bundles before physical framing: the whole image, centre fraction
            views = [prepare_cell(img, pp, from_dataset=True)]
        crops += views
        y += [index[rec.label]] * len(views)
    clf = Classifier(bundle, threads=threads)
    probs = np.concatenate([clf.raw(np.stack(crops[i : i + 64]))[0] for i in range(0, len(crops), 64)])
    m = metrics.classification_metrics(np.array(y), probs, names)
    figures = bundle.meta.test_metrics
    return {"n": m["n"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"], "recorded_balanced_accuracy": figures.balanced_accuracy if figures else None,
            "files_with_other_content": mismatched, "per_class_sensitivity":
            {k: v["sensitivity"] for k, v in m["per_class"].items()}}


def _usable_files(bundle: Bundle, roots, limit: int | None) -> tuple[list, list[str]]:
    """(the records to classify, the relpaths whose content differs from the record); BundleError when none is
    left, FileNotFoundError (naming the option) for a missing file."""
    where = bundle.path.name if bundle.path else bundle.name
    try:
        recorded = recorded_files(bundle, roots)
    except ValueError:  # no test_files.csv
        raise BundleError(f"{where}: the bundle records no test files, so there is nothing to test") from None
    files, mismatched = [], []
    for f in recorded:
        problem = f.problem()
        if problem == "missing":
            raise FileNotFoundError(f"{f.record.path} is missing; pass --data-root {f.record.dataset}=PATH")
        if problem == "changed":
            mismatched.append(f.record.relpath)
        else:
            files.append(f.record)
    if limit is not None:
        files = _first_per_label(files, limit)
    if not files:
        raise BundleError(f"{where}: none of its {len(recorded)} recorded test files is left to classify"
                          + (f" ({len(mismatched)} differ from the record)" if mismatched else ""))
    return files, mismatched


def _first_per_label(records: list, limit: int) -> list:
    taken: Counter = Counter()
    out = []
    for r in records:
        if taken[r.label] < limit:
            taken[r.label] += 1
            out.append(r)
    return out
