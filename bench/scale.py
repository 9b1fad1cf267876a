"""The red-cell ruler (device/analysis/scale.py), measured.

1. BCCD: each field's estimate against its annotated red cells (median box side of the
   complete, roughly square RBC boxes): the spread of the ratio field to field.
2. Each single-cell dataset: the ruler's median and p10-p90 over a seeded sample (the
   per-source pixel sizes in training/datasets.py come from here), and how often the
   device's finder finds a central cell at that scale. The Jiangxi set (120 x 120 frames,
   a handful of red cells, no stated pixel size; test-only) is read image by image as the
   device reads it: how many images the ruler reads with confidence, and a central cell
   found at each image's own reading.
3. Other magnifications and sensors (bench.views): the estimate against BCCD's scale.

    python -m bench.scale [--per-set 200] [--fast]
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from bench import result
from testkit.bccd import BCCD_ROOT, bccd_fields, load_boxes, magnified, resampled
from training.recorded import data_root

SETS = {"pbc-normal-wbc": "*/*.jpg", "aml-cytomorphology-lmu": "*/*.png", "bone-marrow-mll": "*/*.jpg",
        "jiangxi-tecom-wbc": "images/*.bmp"}  # dataset: its images below its folder (training.recorded.data_root)


def annotated_rbc_side(xml: Path) -> float | None:
    import xml.etree.ElementTree as ET

    t = ET.parse(xml)
    w, h = int(t.findtext("size/width")), int(t.findtext("size/height"))
    sides = [((b[2] - b[0]) + (b[3] - b[1])) / 2 for b in load_boxes(xml, "RBC")
             if b[0] > 2 and b[1] > 2 and b[2] < w - 2 and b[3] < h - 2 and b[3] > b[1]
             and 0.8 < (b[2] - b[0]) / (b[3] - b[1]) < 1.25]
    return float(np.median(sides)) if len(sides) >= 3 else None


def jiangxi(files, est, s) -> dict:
    """Small frames without a stated pixel size: each read on its own, as ``analyze`` reads a first image."""
    from device.analysis.cells import central_cell
    from device.analysis.pipeline import locate
    from device.imageio import read_image

    conf = [e for e in est if e.source == "red cells" and e.confidence >= s.min_scale_confidence]
    vals = np.array([e.um_per_px for e in conf])
    from device.analysis.pipeline import FieldLocator

    found = in_run = 0
    run = FieldLocator(s)  # as `leukoscope analyze` reads a list: an unread image takes the last confident reading
    for f in files:
        img = read_image(f)
        found += central_cell(locate(img, s, skip_qc=True).cells, img.shape) is not None
        in_run += central_cell(run.locate(img, skip_qc=True).cells, img.shape) is not None
    entry = {"images": len(files), "confident": len(conf), "red_cells_median": float(np.median([e.red_cells for e in est])),
             "central_cell_found_at_own_scale": found, "central_cell_found_in_a_run": in_run}
    if len(vals):
        entry.update({"um_per_px_median": round(float(np.median(vals)), 4),
                      "p10": round(float(np.percentile(vals, 10)), 4), "p90": round(float(np.percentile(vals, 90)), 4),
                      "confidence_median": round(float(np.median([e.confidence for e in conf])), 3)})
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-set", type=int, default=200)
    ap.add_argument("--fast", action="store_true", help="a few images of each (CI)")
    args = ap.parse_args(argv)
    from device.analysis.cells import central_cell
    from device.imageio import read_image
    from device.analysis.pipeline import FieldSettings, locate
    from device.analysis.scale import estimate_scale

    n = 12 if args.fast else args.per_set
    out: dict = {"bench": "scale"}
    # 1. BCCD against its annotations
    ratios, times, um = [], [], []
    fields = bccd_fields(BCCD_ROOT)[:: (30 if args.fast else 1)]
    for v in fields:
        truth = annotated_rbc_side(BCCD_ROOT / "Annotations" / f"{v.name}.xml")
        t0 = time.perf_counter()
        e = estimate_scale(v.image, 0.1)
        times.append(time.perf_counter() - t0)
        if e.source == "red cells":
            um.append(e.um_per_px)
            if truth:
                ratios.append(e.rbc_diameter_px / truth)
    ratios = np.array(ratios)
    dev = np.abs(ratios / np.median(ratios) - 1)
    out["bccd"] = {"fields": len(fields), "measured": len(um), "um_per_px_median": round(float(np.median(um)), 4),
                   "diameter_vs_annotated_box_median": round(float(np.median(ratios)), 3),
                   "deviation_p50": round(float(np.percentile(dev, 50)), 3),
                   "deviation_p90": round(float(np.percentile(dev, 90)), 3), "ms_median": round(1000 * float(np.median(times)), 1)}
    # 2. single-cell datasets
    s = FieldSettings()
    for name, pattern in SETS.items():
        files = sorted(data_root(name).glob(pattern))
        random.Random(0).shuffle(files)
        files = files[:n]
        est = [estimate_scale(read_image(f), 0.1) for f in files]
        if name == "jiangxi-tecom-wbc":
            out[name] = jiangxi(files, est, s)
            continue
        vals = np.array([e.um_per_px for e in est if e.source == "red cells" and e.confidence >= s.min_scale_confidence])
        entry = {"images": len(files), "confident": int(len(vals))}
        if len(vals):
            entry.update({"um_per_px_median": round(float(np.median(vals)), 4),
                          "p10": round(float(np.percentile(vals, 10)), 4), "p90": round(float(np.percentile(vals, 90)), 4)})
        from training.datasets import AML_INFO, MLL_INFO, PBC_INFO

        stated = {"pbc-normal-wbc": PBC_INFO, "aml-cytomorphology-lmu": AML_INFO, "bone-marrow-mll": MLL_INFO}[name].um_per_px
        found = sum(central_cell(locate(read_image(f), s, um_per_px=stated, skip_qc=True).cells,
                                 read_image(f).shape) is not None for f in files)
        entry.update({"stated_um_per_px": stated, "central_cell_found": found})
        out[name] = entry
    # 3. other microscopes
    base = out["bccd"]["um_per_px_median"]
    views = bccd_fields(BCCD_ROOT)[:: (40 if args.fast else 5)]
    for label, vs, expect in ([(f"m{m:g}", magnified(views, m), base / m) for m in (0.33, 0.5, 1.5, 2)]
                              + [(f"r{r:g}", [resampled(v, r) for v in views[:20]], base / r) for r in (0.5, 3, 6.3)]):
        est = [estimate_scale(v.image, 0.1) for v in vs]
        vals = [e.um_per_px / expect for e in est if e.source == "red cells" and e.confidence >= s.min_scale_confidence]
        out[label] = {"frames": len(vs), "confident": len(vals),
                      "ratio_median": round(float(np.median(vals)), 3) if vals else None,
                      "ratio_p10_p90": [round(float(x), 3) for x in np.percentile(vals, [10, 90])] if vals else None}
    for k, v in out.items():
        if k != "bench":
            print(f"{k:>24}: {v}")
    result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
