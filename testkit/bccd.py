"""Real BCCD fields as other microscopes and cameras would show them.

``magnified(fields, m)``: another objective. Below 1, k x k fields (k = round(1/m))
shrunk and tiled into one frame of the original size; above 1, the central 1/m of a
field enlarged to the original size, boxes following; a cell cut by the new border
is "don't care" (counted neither as found nor as missed).
``resampled(field, r)``: another sensor behind the same optics (the whole field resized).
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from testkit import SHARED_DATA

BCCD_ROOT = SHARED_DATA / "bccd" / "BCCD"
Box = tuple[int, int, int, int]


@dataclass
class View:
    name: str
    image: np.ndarray
    boxes: list[Box]  # white cells to find
    dont_care: list[Box] = field(default_factory=list)  # cells cut by the frame: neither found nor missed


def load_boxes(xml_path: Path, kind: str = "WBC") -> list[Box]:
    out = []
    for obj in ET.parse(xml_path).findall("object"):
        if obj.findtext("name", "").strip() != kind:
            continue
        bb = obj.find("bndbox")
        out.append(tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def bccd_fields(root: Path = BCCD_ROOT, names: list[str] | None = None) -> list[View]:
    from device.imageio import read_image

    xmls = sorted((root / "Annotations").glob("*.xml"))
    if names is not None:
        keep = set(names)
        xmls = [x for x in xmls if x.stem in keep]
    return [View(x.stem, read_image(root / "JPEGImages" / f"{x.stem}.jpg"), load_boxes(x)) for x in xmls]


def _scale_box(b: Box, f: float, dx: float = 0, dy: float = 0) -> Box:
    return (int(round(b[0] * f + dx)), int(round(b[1] * f + dy)), int(round(b[2] * f + dx)), int(round(b[3] * f + dy)))


def resampled(v: View, r: float) -> View:
    h, w = v.image.shape[:2]
    size = (int(round(w * r)), int(round(h * r)))
    img = cv2.resize(v.image, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_CUBIC)
    return View(f"{v.name}@r{r:g}", img, [_scale_box(b, r) for b in v.boxes], [_scale_box(b, r) for b in v.dont_care])


def magnified(views: list[View], m: float) -> list[View]:
    if abs(m - 1.0) < 1e-6:
        return list(views)
    if m < 1:
        k = max(2, int(round(1 / m)))
        out = []
        for i in range(0, len(views) - k * k + 1, k * k):
            group = views[i:i + k * k]
            h, w = group[0].image.shape[:2]
            th, tw = h // k, w // k
            frame = np.zeros((th * k, tw * k, 3), np.uint8)
            boxes = []
            for j, v in enumerate(group):
                y, x = (j // k) * th, (j % k) * tw
                frame[y:y + th, x:x + tw] = cv2.resize(v.image, (tw, th), interpolation=cv2.INTER_AREA)
                boxes += [_scale_box(b, tw / w, x, y) for b in v.boxes]
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            fx = w / (tw * k)
            out.append(View(f"tile{i // (k * k)}@m{m:g}", frame, [_scale_box(b, fx) for b in boxes]))
        return out
    out = []
    for v in views:
        h, w = v.image.shape[:2]
        ch, cw = int(round(h / m)), int(round(w / m))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        img = cv2.resize(v.image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_CUBIC)
        f = w / cw
        keep, cut = [], []
        for b in v.boxes:
            inside = b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + cw and b[3] <= y0 + ch
            overlaps = b[0] < x0 + cw and b[2] > x0 and b[1] < y0 + ch and b[3] > y0
            nb = _scale_box((max(b[0], x0), max(b[1], y0), min(b[2], x0 + cw), min(b[3], y0 + ch)), f, -x0 * f, -y0 * f)
            if inside:
                keep.append(nb)
            elif overlaps:
                cut.append(nb)
        out.append(View(f"{v.name}@m{m:g}", img, keep, cut))
    return out


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def match(pred: list[Box], truth: list[Box], dont_care: list[Box] = (), thr: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching by IoU: (true positives, false positives, false negatives).
    A prediction that overlaps a don't-care cell (IoU >= 0.3, or centre inside it) is not counted."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t = set(), set()
    for v, i, j in pairs:
        if v < thr:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
    ignored = {i for i, p in enumerate(pred) if i not in used_p and any(
        iou(p, d) >= 0.3 or (d[0] <= (p[0] + p[2]) / 2 <= d[2] and d[1] <= (p[1] + p[3]) / 2 <= d[3]) for d in dont_care)}
    tp = len(used_p)
    return tp, len(pred) - tp - len(ignored), len(truth) - tp


EDGE_PX = 8  # an annotated cell this close to the frame's edge is cut by it (BCCD boxes are drawn a few px loose)


def evaluate(views, settings=None, skip_qc: bool = False) -> dict:
    from device.analysis.pipeline import FieldLocator

    from device.analysis.pipeline import FieldSettings

    locator = FieldLocator(settings)  # as on the box: one microscope through the run
    skip_edges = (settings or FieldSettings()).cells.skip_edge_cells
    tp = fp = fn = rejected = 0
    times, scales, misses = [], [], []
    for v in views:
        t0 = time.perf_counter()
        loc = locator.locate(v.image, skip_qc=skip_qc)
        times.append(time.perf_counter() - t0)
        rejected += not loc.qc.ok
        scales.append(loc.scale.um_per_px)
        boxes, dont_care = v.boxes, v.dont_care
        if skip_edges:  # a cell cut by the frame is left out on purpose: neither found nor missed
            h, w = v.image.shape[:2]
            cut = [b for b in boxes if b[0] <= EDGE_PX or b[1] <= EDGE_PX or b[2] >= w - EDGE_PX or b[3] >= h - EDGE_PX]
            boxes, dont_care = [b for b in boxes if b not in cut], list(dont_care) + cut
        k, f, n = match([c.box for c in loc.cells], boxes, dont_care)
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


# Stain looks for the finder's stain bench: each is a linear map in optical-density space (OD = -log of
# the light passed), the space in which stains add up (Beer-Lambert). ``scale`` multiplies every stain's
# density (fading, over-staining); ``mix`` moves density between the channels a stain absorbs (a bluer or a
# redder nucleus: Giemsa-like, Wright/Leishman- or rapid-stain-like); ``glass`` is a density every pixel
# gets (a yellow-brown rapid-stain background, a warm lamp). Rows of ``mix``: output R, G, B from input R, G, B.
STAIN_LOOKS = {
    "faded": {"scale": 0.55},
    "overstained": {"scale": 1.5},
    "giemsa-blue": {"mix": ((1.0, 0.35, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))},
    "rapid-yellow": {"mix": ((0.7, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.25, 0.85)), "glass": (0.0, 0.08, 0.45)},
    "warm-lamp": {"glass": (0.0, 0.1, 0.35)},
    "faded-yellow": {"scale": 0.65, "mix": ((0.8, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.2, 0.9)), "glass": (0.0, 0.06, 0.35)},
}


def restained(rgb: np.ndarray, look: str) -> np.ndarray:
    """``rgb`` as another stain (a ``STAIN_LOOKS`` entry) would show it."""
    p = STAIN_LOOKS[look]
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    od = od @ np.asarray(p.get("mix", np.eye(3)), np.float32).T * p.get("scale", 1.0)
    od = od + np.asarray(p.get("glass", (0.0, 0.0, 0.0)), np.float32)
    return np.clip(256.0 * np.exp(-od) - 1.0, 0, 255).round().astype(np.uint8)


def stain_shifted(views: list[View], look: str) -> list[View]:
    return [View(f"{v.name}@{look}", restained(v.image, look), v.boxes, v.dont_care) for v in views]
