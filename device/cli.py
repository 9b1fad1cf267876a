"""The ``leukoscope`` command. Sub-commands import their parts lazily, so the
device commands never pull in TensorFlow."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _train(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.config import load_recipe
    from training.train import train

    recipe = load_recipe(args.config)
    if args.epochs:
        recipe.train.epochs = args.epochs
    train(recipe, out_root=args.out, config_text=Path(args.config).read_text())
    return 0


def _data_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--data-root expects NAME=PATH, got {item!r}")
        roots[name] = path
    return roots


def _evaluate(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.evaluate import evaluate

    evaluate(args.run_dir, split=args.split, model_path=args.model, data_roots=_data_roots(args.data_root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="leukoscope", description=(
        "Leukoscope: find, classify and count white blood cells. A screening aid, never a diagnosis."))
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a recipe (needs the 'train' extra)")
    p.add_argument("--config", required=True, help="recipe TOML, e.g. training/configs/pbc-differential.toml")
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epoch count")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="score a trained run's model on one of its splits")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--model", help="a different Keras model file to score on the run's split")
    p.add_argument("--data-root", action="append", metavar="NAME=PATH",
                   help="where dataset NAME lives now, if it moved since training")
    p.set_defaults(func=_evaluate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"leukoscope {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
