"""The field path on BCCD as other microscopes would show it: white-cell recall and
precision at IoU >= 0.5, with QC on (a field QC rejects finds nothing).

    python -m bench.detect_bccd                        # the 364 fields as photographed
    python -m bench.detect_bccd --magnification 0.5    # another objective (0.33, 0.5, 1, 1.5, 2)
    python -m bench.detect_bccd --resolution 3         # another sensor, same optics
    python -m bench.detect_bccd --split test --limit 40   # a fast subset
"""
from __future__ import annotations

import argparse

from bench import result
from testkit.bccd import BCCD_ROOT, evaluate, views_for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["all", "train", "val", "test", "trainval"], default="all")
    ap.add_argument("--magnification", type=float, default=1.0)
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N fields (fast mode)")
    ap.add_argument("--skip-qc", action="store_true")
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args(argv)
    names = None
    if args.split != "all":
        names = (BCCD_ROOT / "ImageSets" / "Main" / f"{args.split}.txt").read_text().split()
    r = evaluate(views_for(args.magnification, args.resolution, names, args.limit), skip_qc=args.skip_qc)
    if args.show_misses:
        print("imperfect fields:", " ".join(r["imperfect"]))
    r.pop("imperfect")
    result({"bench": "detect_bccd", "split": args.split, "magnification": args.magnification,
            "resolution": args.resolution, "qc": not args.skip_qc,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
