"""``leukoscope evaluate``: score a saved model on a split recorded in its run folder."""
from __future__ import annotations

import json
from pathlib import Path

from device.analysis.preprocess import Preprocessing, normalize
from training import splits
from training.datasets import Record


def records_from_manifest(run_dir: Path, data_roots: dict[str, str] | None = None) -> list[tuple[str, Record]]:
    """(split, record) pairs; dataset roots from the run, or overridden by name."""
    summary = json.loads((run_dir / "split_summary.json").read_text())
    roots = {s["name"]: s["root"] for s in summary["sources"]}
    roots.update(data_roots or {})
    out = []
    for row in splits.read_manifest(run_dir / "split_manifest.csv"):
        path = Path(roots[row["dataset"]]) / row["relpath"]
        um = row.get("um_per_px") or None
        out.append((row["split"], Record(str(path), row["relpath"], row["label"], row["subject"] or None,
                                         row["dataset"], float(um) if um else None, row.get("kind") or "cell")))
    return out


def evaluate(run_dir: str | Path, split: str = "test", model_path: str | Path | None = None,
             data_roots: dict[str, str] | None = None, log=print) -> dict:
    import keras

    from training.config import recipe_from_dict
    import numpy as np

    from training.data import load_cells
    from training.metrics import per_image
    from training.report import build_report, write_report

    run_dir = Path(run_dir)
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    pp: Preprocessing = recipe.preprocessing
    pairs = records_from_manifest(run_dir, data_roots)
    missing = [r.path for _, r in pairs if not Path(r.path).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of the manifest are missing, e.g. {missing[0]}; "
                                "point --data-root NAME=PATH at your copy")
    names = [n for n in json.loads((run_dir / "report.json").read_text())["class_names"]]
    model = keras.models.load_model(model_path or run_dir / "model.keras")
    cs = load_cells([r for s, r in pairs if s == split], pp, names)
    cv = load_cells([r for s, r in pairs if s == "val"], pp, names)
    x_s, y_s, x_v, y_v = cs.x, cs.y, cv.x, cv.y
    probs_s = model.predict(normalize(x_s, pp), batch_size=128, verbose=0)
    probs_v = model.predict(normalize(x_v, pp), batch_size=128, verbose=0)
    report = build_report(names, probs_s, y_s, probs_v, y_v, recipe.evaluate)
    report.update({"split": split, "task": recipe.task, "model_path": str(model_path or run_dir / "model.keras"),
                   "unit_of_figures": "cell", "cells": cs.summary()})
    if any(r.kind == "field" for r in cs.records):
        labels_of = np.array([names.index(r.label) for r in cs.records], np.int64)
        report["per_image"] = per_image(probs_s.argmax(1), cs.image, labels_of, len(names))
        log(f"{split} per field (majority of its cells): accuracy {report['per_image']['accuracy']:.4f}, "
            f"{report['per_image']['images_without_cell']} of {report['per_image']['images']} fields without a cell")
    write_report(run_dir, report, names, probs_s, y_s, stem=f"eval_{split}")
    log(f"{split}: balanced accuracy {report['balanced_accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, "
        f"n={report['n']}; written to {run_dir / f'eval_{split}.json'}")
    return report
