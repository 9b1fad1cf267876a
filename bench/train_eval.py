"""Train and evaluate a shipped recipe on the real data; print test figures.

    python -m bench.train_eval --task differential           # full run (<= 60 min on 2 cores)
    python -m bench.train_eval --task differential --quick   # a few hundred images, 4 short epochs (CI)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import result

RECIPES = {"differential": "training/configs/pbc-differential.toml"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="differential", choices=sorted(RECIPES))
    ap.add_argument("--quick", action="store_true", help="a few hundred images, four short epochs")
    ap.add_argument("--out", default="runs/bench", help="where run folders go")
    args = ap.parse_args(argv)

    from training.config import REPO_ROOT, load_recipe
    from training.train import train

    path = REPO_ROOT / RECIPES[args.task]
    recipe = load_recipe(path)
    if args.quick:
        recipe.data.max_per_class = 40
        recipe.train.epochs = 4
        recipe.train.batch_size = 16  # enough steps for batch-norm statistics to settle
        recipe.train.warmup_epochs = 0
        recipe.name = f"{recipe.name}-quick"
    t0 = time.monotonic()
    run_dir = train(recipe, out_root=args.out, config_text=path.read_text())
    report = json.loads((Path(run_dir) / "report.json").read_text())
    result({
        "bench": "train_eval", "task": args.task, "quick": args.quick, "run_dir": str(run_dir),
        "model": recipe.model.name, "split_unit": report["unit"], "test_images": report["cells"]["test"]["images"],
        "test_cells": report["n"], "test_images_without_cell": report["cells"]["test"]["images_without_cell"],
        "balanced_accuracy": round(report["balanced_accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
        "accuracy": round(report["accuracy"], 4), "ece": round(report["ece"], 4),
        "epochs_run": report["epochs_run"], "best_epoch": report["best_epoch"],
        "minutes": round((time.monotonic() - t0) / 60, 1),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
