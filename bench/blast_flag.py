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


def frame_cell(path: Path, pp) -> np.ndarray:
    """The cell as the device frames it (its finder, at AML-LMU's pixel size); the whole
    image when the finder finds none."""
    from device.imageio import read_image
    from device.analysis.preprocess import prepare_cell
    from training.data import record_views
    from training.datasets import AML_INFO, Record

    img = read_image(path)
    views = record_views(img, Record(str(path), path.name, "", None, AML_INFO.name, AML_INFO.um_per_px), pp)
    return prepare_cell(views[0] if views else img, pp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--root", type=Path, default=AML)
    args = ap.parse_args(argv)

    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier

    bundle = load_bundle(args.bundle)
    clf = Classifier(bundle)
    pp = bundle.preprocessing
    groups = {"blasts": BLASTS, "normal_types": NORMAL_TYPES}
    out = {}
    for group, codes in groups.items():
        paths = [p for code in codes for p in sorted((args.root / code).glob("*.png"))]
        crops = np.stack([frame_cell(p, pp) for p in paths])
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
