"""The field path on BCCD as other microscopes would show it: white-cell recall and
precision at IoU >= 0.5, with QC on (a field QC rejects finds nothing).

    python -m bench.detect_bccd                        # the 364 fields as photographed
    python -m bench.detect_bccd --magnification 0.5    # another objective (0.33, 0.5, 1, 1.5, 2)
    python -m bench.detect_bccd --resolution 3         # another sensor, same optics
    python -m bench.detect_bccd --split test --limit 40   # a fast subset
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench import result
from bench.views import BCCD_ROOT, bccd_fields, magnified, match, resampled


def evaluate(views, settings=None, skip_qc: bool = False) -> dict:
    from device.analysis.pipeline import FieldLocator

    locator = FieldLocator(settings)  # as on the box: one microscope through the run
    tp = fp = fn = rejected = 0
    times, scales, misses = [], [], []
    for v in views:
        t0 = time.perf_counter()
        loc = locator.locate(v.image, skip_qc=skip_qc)
        times.append(time.perf_counter() - t0)
        rejected += not loc.qc.ok
        scales.append(loc.scale.um_per_px)
        k, f, n = match([c.box for c in loc.cells], v.boxes, v.dont_care)
        tp, fp, fn = tp + k, fp + f, fn + n
        if f or n:
            misses.append(v.name)
    return {"fields": len(views), "wbc": tp + fn, "tp": tp, "fp": fp, "fn": fn, "qc_rejected": rejected,
            "recall": tp / (tp + fn) if tp + fn else 1.0, "precision": tp / (tp + fp) if tp + fp else 1.0,
            "um_per_px_median": float(np.median(scales)) if scales else None,
            "ms_per_field_median": round(1000 * float(np.median(times)), 2), "imperfect": misses}


def views_for(magnification: float = 1.0, resolution: float = 1.0, names=None, limit: int = 0):
    views = bccd_fields(BCCD_ROOT, names)
    if limit:
        views = views[:limit]
    views = magnified(views, magnification)
    return [resampled(v, resolution) for v in views] if resolution != 1.0 else views


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
