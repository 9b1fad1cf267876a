"""The ``leukoscope train`` and ``leukoscope evaluate`` commands, registered by this package (the
``leukoscope.commands`` entry points in pyproject.toml), so that ``device`` never imports ``training``.
TensorFlow is imported only when a command runs."""
from __future__ import annotations

import os
from pathlib import Path


def data_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--data-root expects NAME=PATH, got {item!r}")
        roots[name] = path
    return roots


def _train(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.config import load_recipe
    from training.train import train

    recipe = load_recipe(args.config)
    if args.epochs:
        recipe.train.epochs = args.epochs
    if args.seed is not None:  # the same recipe again, another draw (split, initial head, augmentation order)
        recipe.seed = args.seed
        recipe.name = f"{recipe.name or recipe.task}-seed{args.seed}"
    train(recipe, out_root=args.out, config_text=Path(args.config).read_text())
    return 0


def _evaluate(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.evaluate import evaluate

    evaluate(args.run_dir, split=args.split, model_path=args.model, data_roots=data_roots(args.data_root))
    return 0


def register(commands) -> None:
    """``commands.top``: the ``leukoscope`` sub-command parsers."""
    p = commands.top.add_parser("train", help="train a model from a recipe (needs the 'train' extra)")
    p.add_argument("--config", required=True, help="recipe TOML, e.g. training/configs/pbc-differential.toml")
    p.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epoch count")
    p.add_argument("--seed", type=int, help="override the recipe's seed (repeated runs of one recipe)")
    p.set_defaults(func=_train)

    p = commands.top.add_parser("evaluate", help="score a trained run's model on one of its splits")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--model", help="a different Keras model file to score on the run's split")
    p.add_argument("--data-root", action="append", metavar="NAME=PATH",
                   help="where dataset NAME lives now, if it moved since training")
    p.set_defaults(func=_evaluate)
