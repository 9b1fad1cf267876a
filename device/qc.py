"""Quality control of a field before it is analysed.

Each check has a threshold in the config and a message an operator can act on.
Figures are computed on a copy scaled to 640 px wide, so the thresholds do not
depend on the camera's resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

REFERENCE_WIDTH = 640


@dataclass(frozen=True)
class QCSettings:
    # Thresholds chosen from BCCD fields (every one of the 364 passes; see tests/test_qc.py).
    min_focus: float = 4.0  # variance of the Laplacian (BCCD: 5.4 to 16.6; a 2-px blur gives 2.4)
    min_brightness: float = 60.0  # mean grey level, 0..255
    max_brightness: float = 235.0
    max_clipped: float = 0.05  # fraction of pixels at 0 or 255 in any channel
    min_stain_fraction: float = 0.03  # fraction of coloured pixels (BCCD: 0.048 to 0.42; bare glass: 0)


@dataclass(frozen=True)
class QCResult:
    focus: float
    brightness: float
    clipped: float
    stain_fraction: float
    ok: bool
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems) if self.problems else "ok"

    def figures(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


def _scaled(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w == REFERENCE_WIDTH:
        return rgb
    size = (REFERENCE_WIDTH, max(1, round(h * REFERENCE_WIDTH / w)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if w > REFERENCE_WIDTH else cv2.INTER_LINEAR)


def check_field(rgb: np.ndarray, s: QCSettings | None = None) -> QCResult:
    s = s or QCSettings()
    img = _scaled(rgb)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    focus = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    brightness = float(grey.mean())
    clipped = float(((img <= 0) | (img >= 255)).any(axis=2).mean())
    sat = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1]
    stain_fraction = float((sat > 40).mean())
    problems = []
    if brightness < s.min_brightness:
        problems.append("too dark: open the diaphragm or raise the lamp")
    elif brightness > s.max_brightness:
        problems.append("too bright: lower the lamp or close the diaphragm")
    elif clipped > s.max_clipped:
        problems.append("over- or under-exposed areas: adjust the lamp")
    if stain_fraction < s.min_stain_fraction:
        problems.append("no smear in view: move to a stained area of the slide")
    elif focus < s.min_focus:
        problems.append("out of focus: refocus")
    return QCResult(round(focus, 2), round(brightness, 2), round(clipped, 4), round(stain_fraction, 4),
                    not problems, tuple(problems))
