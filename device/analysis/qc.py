"""Quality control of a field before it is analysed.

It judges the smear, not the lab: exposure and clipping are measured on the
cells (a bright, empty background between the cells of a good thin smear is no
fault), focus is the width of the cells' edges in micrometres (so it means the
same at every magnification and resolution), and "no smear" means no cells.
Each check has a threshold in the config and a message an operator can act on.
Thresholds measured with ``python -m bench.qc``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from device.schema import N_, below, check, setting

# Focus is measured at this scale or the field's own, whichever is coarser: a sharp
# edge is then a couple of pixels wide whatever the sensor.
FOCUS_UM_PER_PX = 0.1


@dataclass(frozen=True)
class QCSettings:
    """The ``[qc]`` section of the config file: each threshold with its range and, when the Settings page edits it,
    its label (device/schema.py)."""
    # focus: width of the cells' sharpest edges (BCCD: 0.25-0.83; 0.5 um blur: 1.08+)
    max_edge_um: float = setting(0.95, gt=0, le=10, label=N_("Focus: widest acceptable cell edge (um)"))
    # grey level of the empty glass (0..255): below it the field is too dark
    min_background: float = setting(70.0, ge=0, le=255, label=N_("Minimum glass brightness (0-255)"))
    # mean grey of the cells: above it they are washed out
    max_cell_brightness: float = setting(235.0, ge=0, le=255, label=N_("Maximum cell brightness (0-255)"))
    # fraction of cell pixels at 0 or 255 in any channel
    max_clipped: float = setting(0.05, ge=0, le=1, label=N_("Maximum clipped fraction of cell pixels"))
    # fraction of the field covered by cells (an empty slide: 0)
    min_cell_fraction: float = setting(0.02, ge=0, le=1,
                                       label=N_("Minimum fraction of the field covered by cells (smear present)"))
    max_cell_fraction: float = setting(0.97, ge=0, le=1)  # above it the smear is too thick to tell cells apart
    min_contrast: float = setting(25.0, ge=0, le=255)  # grey levels between glass and cells; below it nothing is in view

    def __post_init__(self):
        check(self)
        below(self, "min_background", "max_cell_brightness")
        below(self, "min_cell_fraction", "max_cell_fraction")


@dataclass(frozen=True)
class QCResult:
    edge_um: float
    background: float
    cell_brightness: float
    clipped: float
    cell_fraction: float
    contrast: float
    um_per_px: float
    ok: bool
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems) if self.problems else "ok"

    def figures(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


MESSAGES = {
    "dark": "Too dark: open the diaphragm or turn the lamp up, then capture again",
    "bright": "Too bright: turn the lamp down or close the diaphragm, then capture again",
    "clipped": "Over- or under-exposed cells: adjust the lamp, then capture again",
    "empty": "No smear in view: move to a stained area of the slide",
    "thick": "Smear too thick here: move towards the thin end (feathered edge) of the smear",
    "focus": "Out of focus: turn the fine focus, then capture again",
}


def _focus_copy(rgb: np.ndarray, um_per_px: float) -> tuple[np.ndarray, float]:
    if um_per_px >= FOCUS_UM_PER_PX:
        return rgb, um_per_px
    f = um_per_px / FOCUS_UM_PER_PX
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, um_per_px * w / small.shape[1]


def edge_width_um(grey: np.ndarray, um_per_px: float, cells: np.ndarray, contrast: float) -> float:
    """Width of the sharpest edges: the grey step between glass and cells divided by the
    steepest gradients on the cells' borders (a step blurred by sigma is about 2.5 sigma
    wide). The sharpest 0.5 % are used: every real field has some in-focus edges."""
    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = cv2.magnitude(gx, gy)
    # Edges of cells: the border band of the cell mask.
    band = cv2.dilate(cells, np.ones((5, 5), np.uint8)) & ~cv2.erode(cells, np.ones((5, 5), np.uint8))
    values = mag[band.astype(bool)]
    if values.size < 50 or contrast <= 0:
        return float("inf")
    steep = float(np.percentile(values, 99.5))
    return contrast / max(steep, 1e-3) * um_per_px


def check_field(rgb: np.ndarray, s: QCSettings | None = None, um_per_px: float = FOCUS_UM_PER_PX) -> QCResult:
    s = s or QCSettings()
    img, um = _focus_copy(rgb, um_per_px)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    green = img[..., 1]
    background = float(np.percentile(green, 95))
    darkest = float(np.percentile(green, 5))
    contrast = background - darkest
    # Cells: clearly darker than the glass in green (red cells and nuclei absorb it).
    cells = (green.astype(np.float32) < background - max(0.35 * contrast, 12.0)).astype(np.uint8)
    cells = cv2.morphologyEx(cells, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    cell_fraction = float(cells.mean())
    on_cells = cells.astype(bool)
    if on_cells.any():
        cell_brightness = float(grey[on_cells].mean())
        # One channel may saturate under a bright lamp and lose little; a cell pixel
        # white in every channel (or black in any) has lost its detail.
        px = img[on_cells]
        clipped = float(((px <= 0).any(axis=1) | (px >= 254).all(axis=1)).mean())
    else:
        cell_brightness, clipped = float(grey.mean()), float(((img <= 0) | (img >= 255)).any(axis=2).mean())
    edge = edge_width_um(grey, um, cells, contrast)
    problems = []
    if background < s.min_background:
        problems.append(MESSAGES["dark"])
    elif contrast < s.min_contrast and background >= 250:
        problems.append(MESSAGES["bright"])
    elif contrast < s.min_contrast or cell_fraction < s.min_cell_fraction:
        problems.append(MESSAGES["empty"])
    elif cell_brightness > s.max_cell_brightness:
        problems.append(MESSAGES["bright"])
    elif clipped > s.max_clipped:
        problems.append(MESSAGES["clipped"])
    elif cell_fraction > s.max_cell_fraction:
        problems.append(MESSAGES["thick"])
    elif edge > s.max_edge_um:
        problems.append(MESSAGES["focus"])
    return QCResult(round(edge, 3) if np.isfinite(edge) else 99.0, round(background, 1), round(cell_brightness, 1),
                    round(clipped, 4), round(cell_fraction, 4), round(contrast, 1), round(um_per_px, 5),
                    not problems, tuple(problems))
