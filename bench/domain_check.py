"""Cross-lab check on whole fields: every cell the finder returns on BCCD (a different
lab, camera and stain from the training data) is a white cell, so a model that
transfers calls them leukocytes, not platelets or erythroblasts.

    python -m bench.domain_check [--bundle PATH]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from bench import result
from testkit.bccd import BCCD_ROOT as DEFAULT_ROOT, iou, load_boxes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--limit", type=int, default=0, help="only the first N fields (fast mode)")
    args = ap.parse_args(argv)

    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from device.config import AppConfig
    from device.imageio import read_image
    from device.model.analyzer import Analyzer

    bundle = load_bundle(args.bundle)
    cfg = AppConfig()
    analyzer = Analyzer(Classifier(bundle), cfg.field_settings())
    preds = []
    xmls = sorted((args.root / "Annotations").glob("*.xml"))
    for xml in xmls[: args.limit or None]:
        truth = load_boxes(xml)
        res = analyzer.analyze(read_image(args.root / "JPEGImages" / f"{xml.stem}.jpg"), skip_qc=True)
        for c in res.cells:
            if any(iou(c.found.box, t) >= 0.5 for t in truth):  # annotated white cells only
                preds.append(c.prediction)
    cats = Counter("uncertain" if p.flag else p.category for p in preds)
    n = len(preds)
    leuko = (cats["normal"] + cats["atypical"] + cats["malignant"]) / n
    print(f"{n} annotated white cells: {dict(cats)}; labels {dict(Counter(p.label for p in preds))}")
    result({"bench": "domain_check", "bundle": bundle.name, "cells": n, "categories": dict(cats),
            "labels": dict(Counter(p.label for p in preds)), "called_leukocyte": round(leuko, 4),
            "called_non_leukocyte": round(cats["non-leukocyte"] / n, 4), "uncertain": round(cats["uncertain"] / n, 4),
            "median_confidence": round(float(np.median([p.probability for p in preds])), 4)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
