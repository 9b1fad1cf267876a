"""The field path on BCCD as other microscopes would show it: white-cell recall and
precision at IoU >= 0.5, with QC on (a field QC rejects finds nothing).

    python -m bench.detect_bccd                        # the 364 fields as photographed
    python -m bench.detect_bccd --magnification 0.5    # another objective (0.33, 0.5, 1, 1.5, 2)
    python -m bench.detect_bccd --resolution 3         # another sensor, same optics
    python -m bench.detect_bccd --split test --limit 40   # a fast subset
    python -m bench.detect_bccd --stain all            # other stains (testkit.bccd.STAIN_LOOKS), one row each
    python -m bench.detect_bccd --single-cell 300      # single-cell sets: no-cell counts and central-cell drift
"""
from __future__ import annotations

import argparse

from bench import result
from testkit.bccd import BCCD_ROOT, STAIN_LOOKS, evaluate, stain_shifted, views_for


SINGLE_CELL = {  # dataset: its images below its folder, pixel size (stated, or the ruler's median for Jiangxi)
    "pbc-normal-wbc": ("*/*.jpg", 0.102),
    "bone-marrow-mll": ("*/*.jpg", 0.088),
    "aml-cytomorphology-lmu": ("*/*.png", 0.075),
    "jiangxi-tecom-wbc": ("images/*.bmp", 0.14),
}


def single_cell(n: int) -> dict:
    """Per single-cell set (N seeded images each): images without a cell found, by today's finder and by the
    finder as it was before the optical-density map (every field read through B - G, reproduced by forcing
    that map), and how many central cells moved their box centre by more than 2 um between the two (the
    training crops are cut around that centre)."""
    import random
    from dataclasses import replace
    from unittest import mock

    import numpy as np

    from device.analysis import cells
    from device.analysis.pipeline import FieldSettings, locate
    from device.imageio import read_image
    from training.recorded import data_root

    real = cells.stain_look
    # single-cell images are framed on their cell: a cell touching the frame is whole (as training reads them)
    s = FieldSettings(cells=replace(FieldSettings().cells, skip_edge_cells=False))
    out = {}
    for name, (pattern, um) in SINGLE_CELL.items():
        files = sorted(data_root(name).glob(pattern))
        random.Random(0).shuffle(files)
        files = files[:n]
        before = after = moved = od = 0
        for f in files:
            img = read_image(f)
            now = cells.central_cell(locate(img, s, um_per_px=um, skip_qc=True).cells, img.shape)
            with mock.patch.object(cells, "stain_look", lambda rgb: replace(real(rgb), map="b-g")):
                old = cells.central_cell(locate(img, s, um_per_px=um, skip_qc=True).cells, img.shape)
            od += real(cells.resample(img, um / s.cells.working_um_per_px)).map == "od"
            before += old is None
            after += now is None
            if old and now:
                (a, b) = old.box, now.box
                moved += float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)) * um > 2.0
        out[name] = {"images": len(files), "um_per_px": um, "no_cell_before": before, "no_cell_after": after,
                     "central_moved_over_2um": moved, "read_through_od_map": od}
        print(f"{name:>24}: {out[name]}")
    return out


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
    ap.add_argument("--single-cell", type=int, default=0, metavar="N",
                    help="instead: N images of each single-cell set, today's finder against the B - G-only one")
    args = ap.parse_args(argv)
    if args.single_cell:
        result({"bench": "detect_bccd", "single_cell": single_cell(args.single_cell)})
        return 0
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
