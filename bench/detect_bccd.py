"""The field path on BCCD as other microscopes would show it: white-cell recall and
precision at IoU >= 0.5, with QC on (a field QC rejects finds nothing).

    python -m bench.detect_bccd                        # the 364 fields as photographed
    python -m bench.detect_bccd --magnification 0.5    # another objective (0.33, 0.5, 1, 1.5, 2)
    python -m bench.detect_bccd --resolution 3         # another sensor, same optics
    python -m bench.detect_bccd --split test --limit 40   # a fast subset
    python -m bench.detect_bccd --stain all            # other stains (testkit.bccd.STAIN_LOOKS), one row each
"""
from __future__ import annotations

import argparse

from bench import result
from testkit.bccd import BCCD_ROOT, STAIN_LOOKS, evaluate, stain_shifted, views_for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["all", "train", "val", "test", "trainval"], default="all")
    ap.add_argument("--magnification", type=float, default=1.0)
    ap.add_argument("--resolution", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N fields (fast mode)")
    ap.add_argument("--skip-qc", action="store_true")
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--stain", choices=["none", "all", *STAIN_LOOKS], default="none",
                    help="re-stain the fields in optical-density space (one look, or every look)")
    args = ap.parse_args(argv)
    names = None
    if args.split != "all":
        names = (BCCD_ROOT / "ImageSets" / "Main" / f"{args.split}.txt").read_text().split()
    views = views_for(args.magnification, args.resolution, names, args.limit)
    looks = list(STAIN_LOOKS) if args.stain == "all" else [args.stain]
    rows = {}
    for look in looks:
        r = evaluate(views if look == "none" else stain_shifted(views, look), skip_qc=args.skip_qc)
        if args.show_misses:
            print(f"imperfect fields ({look}):", " ".join(r["imperfect"]))
        r.pop("imperfect")
        rows[look] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
        print(f"{look:>14}: recall {r['recall']:.4f} precision {r['precision']:.4f} (tp {r['tp']} fp {r['fp']} "
              f"fn {r['fn']}, QC rejected {r['qc_rejected']} of {r['fields']})")
    out = {"bench": "detect_bccd", "split": args.split, "magnification": args.magnification,
           "resolution": args.resolution, "qc": not args.skip_qc, "stain": args.stain}
    if len(rows) == 1:
        out.update(rows[looks[0]])
    else:
        out["looks"] = rows
        out["worst_recall"] = min(r["recall"] for r in rows.values())
    result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
