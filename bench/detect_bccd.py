"""Cell finding on BCCD: recall and precision of WBC boxes at IoU >= 0.5.

    python -m bench.detect_bccd            # all 364 fields
    python -m bench.detect_bccd --split test   # upstream test list only (72 fields)
"""
from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from bench import result

DEFAULT_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "bccd" / "BCCD"


def load_boxes(xml_path: Path) -> list[tuple[int, int, int, int]]:
    out = []
    for obj in ET.parse(xml_path).findall("object"):
        if obj.findtext("name", "").strip() != "WBC":
            continue
        bb = obj.find("bndbox")
        out.append(tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def match(pred, truth, thr=0.5) -> int:
    """Greedy one-to-one matching by IoU; returns true positives."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, tp = set(), set(), 0
    for v, i, j in pairs:
        if v < thr:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        tp += 1
    return tp


def evaluate(root: Path, names: list[str] | None = None, settings=None) -> dict:
    from device.cells import find_cells
    from device.imageio import read_image

    xmls = sorted((root / "Annotations").glob("*.xml"))
    if names is not None:
        xmls = [x for x in xmls if x.stem in set(names)]
    tp = fp = fn = 0
    times, misses = [], []
    for x in xmls:
        truth = load_boxes(x)
        img = read_image(root / "JPEGImages" / f"{x.stem}.jpg")
        t0 = time.perf_counter()
        pred = [c.box for c in find_cells(img, settings)]
        times.append(time.perf_counter() - t0)
        k = match(pred, truth)
        tp += k
        fp += len(pred) - k
        fn += len(truth) - k
        if k < len(truth) or k < len(pred):
            misses.append(x.stem)
    return {"images": len(xmls), "wbc": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "recall": tp / (tp + fn) if tp + fn else 1.0, "precision": tp / (tp + fp) if tp + fp else 1.0,
            "ms_per_field_median": round(1000 * float(np.median(times)), 2), "imperfect": misses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--split", choices=["all", "train", "val", "test", "trainval"], default="all")
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args(argv)
    names = None
    if args.split != "all":
        names = (args.root / "ImageSets" / "Main" / f"{args.split}.txt").read_text().split()
    r = evaluate(args.root, names)
    if args.show_misses:
        print("imperfect fields:", " ".join(r["imperfect"]))
    r.pop("imperfect")
    result({"bench": "detect_bccd", "split": args.split, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                             for k, v in r.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
