"""The field's physical scale (micrometres per pixel), measured from its red cells.

Every blood smear carries a ruler: red cells are about 7.5 um across whatever the
microscope, objective or camera. The circle Hough transform (OpenCV's gradient method)
finds the round outlines in the green channel (red cells absorb green), on a copy
resampled until red cells are about 33 px across in it (the transform over-sizes tiny
circles and under-sizes large ones); circles that are a red cell's pale centre are
dropped; the median diameter is the red-cell size. With too few circles, or too wide a
spread of sizes, the configured value (``[camera] um_per_pixel``) is used. A small frame (a
120 x 120 single-cell image) shows only a handful of red cells: it is read from as many as it
can hold (at least 3), and its confidence counts them against that.

Chosen by measurement against BCCD's annotated red cells (``python -m bench.scale``):
isolated round objects are rare in crowded fields and distance-transform measures of
cell clumps have long error tails; the circle median deviates from field to field by
5 % (p50) and 13 % (p90).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

RBC_DIAMETER_UM = 7.5
# A 40x-100x objective on a camera port gives roughly this range (100x on 1.1 um sensor
# pixels: 0.011; 40x behind a 0.35x relay on 3.45 um pixels: 0.25); outside it the operator
# is warned (a 10x objective, digital zoom, a stage micrometer value mistyped).
PLAUSIBLE_UM_PER_PX = (0.01, 0.3)
_SIDES = (240, 480, 960)  # first look on a copy this long; a larger one when it shows too few circles
_MIN_RADIUS = 3


SCALE_WARNING = ("Unusual scale: check that a 40x-100x objective is in use and the camera is not zoomed, "
                 "or set the pixel size in Settings")


@dataclass(frozen=True)
class ScaleEstimate:
    um_per_px: float
    confidence: float  # 0..1; 0 when the configured value was used
    source: str  # "red cells", "last measured", "configured" or "given"
    red_cells: int
    rbc_diameter_px: float | None

    @property
    def plausible(self) -> bool:
        lo, hi = PLAUSIBLE_UM_PER_PX
        return lo <= self.um_per_px <= hi

    @property
    def warning(self) -> str | None:
        if self.plausible:
            return None
        # A fixed sentence (translated on the page); the figure itself is in the field's scale record.
        return SCALE_WARNING

    def to_dict(self) -> dict:
        d = asdict(self)
        d["um_per_px"] = round(self.um_per_px, 5)
        d["confidence"] = round(self.confidence, 3)
        if self.rbc_diameter_px is not None:
            d["rbc_diameter_px"] = round(self.rbc_diameter_px, 2)
        d["warning"] = self.warning
        return d


def given(um_per_px: float) -> ScaleEstimate:
    """A scale that is known (a dataset's stated pixel size, a test), not measured."""
    return ScaleEstimate(float(um_per_px), 1.0, "given", 0, None)


# OpenCV's parallel circle transform returns a different set of circles from run to run (one PBC image read
# 0.0852 or 0.0879 um/px), so OpenCV runs on one thread in this process: a field always reads the same. (It was
# switched to one thread around each transform, but cv2.setNumThreads rebuilds OpenCV's thread pool under any
# other thread's running OpenCV call: two threads analysing at once crashed the process, a segmentation fault.)
cv2.setNumThreads(1)


def circle_radii(grey: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Radii (pixels) of the round outlines of ``grey`` between ``lo`` and ``hi``."""
    h, w = grey.shape
    hi = min(hi, min(h, w) // 3)
    if hi <= lo:
        return np.zeros(0)
    g = cv2.GaussianBlur(grey, (3, 3), 0)
    found = cv2.HoughCircles(g, cv2.HOUGH_GRADIENT_ALT, dp=1, minDist=max(4, lo), param1=60, param2=0.7,
                             minRadius=lo, maxRadius=hi)
    if found is None:
        return np.zeros(0)
    circles = found[0].astype(np.float64)
    return circles[_outlines(g, circles), 2]


_ANGLES = np.linspace(0, 2 * np.pi, 24, endpoint=False)


def _outlines(grey: np.ndarray, circles: np.ndarray) -> np.ndarray:
    """Which circles are a cell's outline: darker just inside than just outside (a red
    cell against the glass). A red cell's pale centre draws a circle too, the other way round."""
    h, w = grey.shape

    def ring(k: float) -> np.ndarray:
        xs = circles[:, :1] + k * circles[:, 2:3] * np.cos(_ANGLES)
        ys = circles[:, 1:2] + k * circles[:, 2:3] * np.sin(_ANGLES)
        return grey[np.clip(ys.round().astype(int), 0, h - 1), np.clip(xs.round().astype(int), 0, w - 1)]

    inside, outside = ring(0.8), ring(1.25)
    # Below ~8 px of radius the two rings are too close to tell (and pale centres are too
    # small for the finder to draw): those circles are kept.
    return (circles[:, 2] < 8) | (np.median(outside.astype(np.int16) - inside, axis=1) > 4)


def _green(rgb: np.ndarray, factor: float, max_side: int = 320) -> np.ndarray:
    """The green channel scaled by ``factor``; only its centre when that would be
    larger than ``max_side`` (enough red cells, a bounded cost)."""
    h, w = rgb.shape[:2]
    ch, cw = min(h, int(max_side / factor)), min(w, int(max_side / factor))
    y, x = (h - ch) // 2, (w - cw) // 2
    g = np.ascontiguousarray(rgb[y:y + ch, x:x + cw, 1])
    if abs(factor - 1.0) < 1e-3:
        return g
    return cv2.resize(g, (max(1, round(cw * factor)), max(1, round(ch * factor))),
                      interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


_TARGET_DIAMETER = 33.0  # the measurement is unbiased when red cells are about this wide in the copy
_MAX_COPY_SIDE = 900


def estimate_scale(rgb: np.ndarray, fallback_um_per_px: float, min_red_cells: int = 5,
                   min_confidence: float = 0.0) -> ScaleEstimate:
    """um per pixel of ``rgb`` from its red cells, or the configured fallback (fewer than
    ``min_red_cells`` circles, or a reading less confident than ``min_confidence``).

    The circle finder over- or under-sizes cells that look very small or very large in
    its copy, so the measurement is repeated on a copy resampled until red cells are
    about 33 px across in it: the same measurement at every magnification."""
    h, w = rgb.shape[:2]
    lo, hi = _MIN_RADIUS, 60  # first look: any size; then around the target size
    for side in _SIDES:  # small red cells (low magnification) need a larger first copy
        f = min(1.0, side / max(h, w))
        radii = circle_radii(_green(rgb, f, max_side=side), lo, hi) / f
        if len(radii) >= min_red_cells or f == 1.0:
            break
    # A small frame (a 120 x 120 single-cell image) holds only a handful of red cells: it is read from
    # as many as it can hold (at least 3), and its confidence counts them against that, not against 15.
    need = max(3, min(min_red_cells, _room(h, w, radii)))
    for _ in range(3):
        if len(radii) < need:
            break
        d = 2.0 * float(np.median(radii))
        f_next = float(np.clip(_TARGET_DIAMETER / d, 100.0 / max(h, w), _MAX_COPY_SIDE / max(h, w)))
        if abs(f_next / f - 1.0) < 0.08:
            break
        lo, hi = int(_TARGET_DIAMETER / 4), int(_TARGET_DIAMETER)
        again = circle_radii(_green(rgb, f_next), lo, hi) / f_next
        if len(again) < need:
            break  # keep the last reading that had enough circles
        f, radii = f_next, again
    room = _room(h, w, radii)
    if len(radii) < max(3, min(min_red_cells, room)):
        return ScaleEstimate(float(fallback_um_per_px), 0.0, "configured", int(len(radii)), None)
    d = 2.0 * float(np.median(radii))
    q1, q3 = np.percentile(radii, [25, 75])
    spread = float((q3 - q1) / np.median(radii))
    confidence = min(1.0, len(radii) / min(15.0, max(room, 3))) * max(0.0, 1.0 - spread)
    if confidence < min_confidence:
        return ScaleEstimate(float(fallback_um_per_px), 0.0, "configured", int(len(radii)), d)
    return ScaleEstimate(RBC_DIAMETER_UM / d, round(confidence, 3), "red cells", int(len(radii)), d)


def _room(h: int, w: int, radii: np.ndarray) -> int:
    """About how many whole red cells of the measured size a frame of h x w shows (half its area
    is taken by the white cell, glass and cells cut by the border); 15 or more for a field."""
    if not len(radii):
        return 15
    d = 2.0 * float(np.median(radii))
    return int(min(15, 0.5 * h * w / (d * d)))
