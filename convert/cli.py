"""The ``leukoscope convert`` and ``leukoscope model test`` commands, registered by this package (the
``leukoscope.commands`` entry points in pyproject.toml), so that ``device`` never imports ``convert``."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _positive(text: str) -> int:
    """--limit: a whole number of at least 1 (0 or less would classify nothing)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


def _convert(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from convert.build import ParityError, convert_run

    try:
        convert_run(args.run_dir, out=args.out, variant=args.variant, representative_count=args.representative,
                    parity_floor=args.parity_floor, name=args.name, version=args.version,
                    blast_specificity=args.blast_specificity)
    except ParityError as exc:
        print(f"leukoscope convert: {exc}", file=sys.stderr)
        return 3
    return 0


def _model_test(args) -> int:
    from convert.verify import verify_bundle
    from device.cli import active_bundle
    from training.cli import data_roots

    r = verify_bundle(active_bundle(args)[0], data_roots(args.data_root), limit=args.limit)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        recorded = r["recorded_balanced_accuracy"]
        print(f"{r['n']} cells from the recorded test images: balanced accuracy {r['balanced_accuracy']:.4f}, "
              f"macro F1 {r['macro_f1']:.4f} (recorded in the bundle: "
              + (f"{recorded:.4f})" if recorded is not None else "not recorded)"))
        if r["files_with_other_content"]:
            print(f"skipped {len(r['files_with_other_content'])} files whose content differs from the record")
    return 0


def _add_reference(args) -> int:
    from convert.reference import add_reference
    from training.cli import data_roots

    ref = add_reference(args.bundle, args.out, data_roots(args.data_root), threads=args.threads)
    print(f"{args.out}: {ref['cells']} reference cells ({ref['bytes']:,} bytes): {ref['per_label']}")
    return 0


def register(commands) -> None:
    """``commands.top``: the ``leukoscope`` sub-command parsers; ``commands.model``: ``leukoscope model``'s."""
    p = commands.top.add_parser("convert", help="convert a trained run into a TFLite model bundle (needs 'train')")
    p.add_argument("run_dir")
    p.add_argument("--out", help="bundle path (default: RUN_DIR/<name>-<variant>.lkb)")
    p.add_argument("--variant", default="int8", choices=["int8", "float16", "dynamic"])
    p.add_argument("--representative", type=int, default=300, help="representative images from the training split")
    p.add_argument("--parity-floor", type=float, default=0.99,
                   help="refuse the bundle when top-1 agreement with the float model is lower")
    p.add_argument("--blast-specificity", type=float,
                   help="call a cell blast only above the point where this share of validation normal cells stays "
                        "below; from the screening point up to it, review (overrides the recipe's [evaluate])")
    p.add_argument("--name")
    p.add_argument("--version")
    p.set_defaults(func=_convert)

    from device.cli import add_bundle_options

    q = commands.model.add_parser("test", help="recompute a bundle's test figures from its recorded test-file list "
                                  "(default: the bundle the device uses)")
    add_bundle_options(q)
    q.add_argument("--data-root", action="append", metavar="NAME=PATH", help="where dataset NAME lives")
    q.add_argument("--limit", type=_positive, metavar="N", help="classify at most N images of each label (every recorded "
                   "file is still found and checked)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_model_test)

    q = commands.model.add_parser("add-reference", help="write a copy of a bundle carrying its reference cells "
                                  "(its own test files through the device path), which site calibration needs")
    q.add_argument("bundle")
    q.add_argument("--out", required=True)
    q.add_argument("--data-root", action="append", metavar="NAME=PATH", help="where dataset NAME lives")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(func=_add_reference)
