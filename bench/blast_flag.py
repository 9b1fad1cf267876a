"""Does the default bundle (which knows no blasts) avoid forcing blasts into a normal class?

On AML-Cytomorphology_LMU: the fraction of the 22 blasts (MYO, MOB) that the bundle
marks uncertain (low confidence or unfamiliar) or atypical, beside the same fraction
for the normal-type cells (LYT, MON, NGS, NGB, EOS, BAS). Cells are framed as the
appliance frames them: the cell finder's box nearest the centre, times the
bundle's cell context.

    python -m bench.blast_flag [--bundle PATH]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from bench import result

AML = Path(__file__).resolve().parent.parent.parent / "shared/data/aml-cytomorphology-lmu-subset"
BLASTS = ("MYO", "MOB")
NORMAL_TYPES = ("LYT", "MON", "NGS", "NGB", "EOS", "BAS")


def frame_cell(img: np.ndarray, pp, settings) -> np.ndarray:
    from device.cells import central_cell, find_cells
    from device.preprocess import crop_box, prepare_cell

    c = central_cell(find_cells(img, settings), img.shape)
    if c is None:
        return prepare_cell(img, pp, from_dataset=True)
    return prepare_cell(crop_box(img, c.box, pp.cell_context), pp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--root", type=Path, default=AML)
    args = ap.parse_args(argv)

    from device.bundle import load_bundle
    from device.cells import CellFinderSettings
    from device.classifier import Classifier
    from device.imageio import read_image

    bundle = load_bundle(args.bundle)
    clf = Classifier(bundle)
    pp = bundle.preprocessing
    settings = CellFinderSettings(min_area_fraction=0.002, max_cells=10)
    groups = {"blasts": BLASTS, "normal_types": NORMAL_TYPES}
    out = {}
    for group, codes in groups.items():
        paths = [p for code in codes for p in sorted((args.root / code).glob("*.png"))]
        crops = np.stack([frame_cell(read_image(p), pp, settings) for p in paths])
        preds = clf.classify(crops)
        marked = [p.flag is not None or p.category == "atypical" for p in preds]
        reasons = Counter(p.flag or ("atypical" if p.category == "atypical" else "forced-normal") for p in preds)
        out[group] = {"n": len(paths), "marked": int(sum(marked)), "fraction_marked": round(float(np.mean(marked)), 4),
                      "reasons": dict(reasons), "labels": dict(Counter(p.label for p in preds))}
        print(f"{group:>13}: {sum(marked)}/{len(paths)} marked uncertain or atypical "
              f"({100 * np.mean(marked):.1f} %); {dict(reasons)}")
    gap = out["blasts"]["fraction_marked"] - out["normal_types"]["fraction_marked"]
    result({"bench": "blast_flag", "bundle": bundle.name, "blasts": out["blasts"], "normal_types": out["normal_types"],
            "gap": round(gap, 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
