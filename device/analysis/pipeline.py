"""One field through the image work: scale -> QC -> find the white cells -> the crop the classifier sees of each.

The field's scale (um per pixel) is measured from its red cells; QC and the cell
finder run on one copy resampled to a fixed working scale, so their cost and their
sizes do not depend on the camera; crops for the classifier are cut from the
full-resolution frame with a fixed physical side. Training cuts its cells with the
same functions (``locate`` and ``cell_views``), so the model sees what the box sees. Classifying
the crops is the model's job (``device.model.analyzer``): this module knows no model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from device.analysis.cells import CellFinderSettings, FoundCell, locate_cells, resample
from device.analysis.preprocess import Preprocessing, crop_box, crop_square
from device.analysis.qc import MESSAGES, QCResult, QCSettings, check_field
from device.analysis.scale import ScaleEstimate, estimate_scale, given

GALLERY_SIZE = 160  # side of the crop kept for review, in pixels
STORED_SIDE = 1600  # a stored field is at most this long on its longer side (its cells are kept full size)


@dataclass(frozen=True)
class FieldSettings:
    cells: CellFinderSettings = field(default_factory=CellFinderSettings)
    qc: QCSettings = field(default_factory=QCSettings)
    fallback_um_per_px: float = 0.1  # [camera] um_per_pixel: used when a field has too few red cells
    min_scale_confidence: float = 0.3  # below it the red-cell estimate is not trusted


@dataclass
class Located:
    scale: ScaleEstimate
    qc: QCResult
    cells: list[FoundCell]
    stored: np.ndarray  # the bounded copy of the frame (what the record keeps)


def locate(rgb: np.ndarray, s: FieldSettings, um_per_px: float | None = None, skip_qc: bool = False) -> Located:
    """Scale, QC and the white cells of a full-resolution field (boxes in its pixels).
    ``um_per_px`` given (a dataset's known pixel size) skips the measurement.

    The full frame is read once, into a bounded copy; scale, QC and the finder work
    from that copy, so a 12-megapixel frame costs one resample more than a small one."""
    base = stored_copy(rgb)
    f = rgb.shape[1] / base.shape[1]  # full-frame pixels per stored-copy pixel
    if um_per_px:
        scale = given(um_per_px)
    else:
        est = estimate_scale(base, s.fallback_um_per_px, min_confidence=s.min_scale_confidence)
        if est.source == "red cells":  # measured in the copy's pixels: convert to the frame's
            est = ScaleEstimate(est.um_per_px / f, est.confidence, est.source, est.red_cells,
                                est.rbc_diameter_px * f)
        scale = est
    um_base = scale.um_per_px * f
    qc = check_field(base, s.qc, um_base)
    if not scale.plausible:
        # A 4x objective or a zoomed camera: the finder's sizes (and focus in um) would not
        # hold. Say what to check first.
        others = tuple(p for p in qc.problems if p != MESSAGES["focus"])
        qc = replace(qc, ok=False, problems=(scale.warning, *others))
    if not qc.ok and not skip_qc:
        return Located(scale, qc, [], base)
    work = resample(base, um_base / s.cells.working_um_per_px)
    cells = locate_cells(rgb, scale.um_per_px, s.cells, work=work)
    return Located(scale, qc, cells, base)


class FieldLocator:
    """``locate`` with a memory: a field too poor in red cells to measure takes the scale
    last measured with confidence on this microscope (the objective rarely changes between
    fields), else the configured one. The Settings page offers to keep the last reading."""

    def __init__(self, settings: FieldSettings | None = None):
        self.settings = settings or FieldSettings()
        self.last_measured: ScaleEstimate | None = None

    def locate(self, rgb: np.ndarray, um_per_px: float | None = None, skip_qc: bool = False) -> Located:
        s = self.settings
        if self.last_measured is not None:
            s = replace(s, fallback_um_per_px=self.last_measured.um_per_px)
        loc = locate(rgb, s, um_per_px, skip_qc)
        if loc.scale.source == "red cells" and loc.scale.plausible:
            self.last_measured = loc.scale
        elif loc.scale.source == "configured" and self.last_measured is not None:
            loc.scale = replace(loc.scale, source="last measured")
        return loc


def cell_views(rgb: np.ndarray, cells: list[FoundCell], um_per_px: float, pp: Preprocessing) -> list[np.ndarray]:
    """The classifier's view of each cell, from the full-resolution field: a square of
    ``pp.crop_um`` micrometres (older bundles: the box side times ``pp.cell_context``)."""
    # A crop is only ever shown at the model's input or the gallery's size: one at most twice
    # that is as good, and costs nothing more on a 12-megapixel frame than on a small one.
    limit = 2 * max(pp.input_size, GALLERY_SIZE)
    if pp.crop_um:
        side = pp.crop_um / um_per_px
        return [crop_square(rgb, c.box, side, limit) for c in cells]
    return [crop_box(rgb, c.box, pp.cell_context, limit) for c in cells]


def stored_copy(rgb: np.ndarray) -> np.ndarray:
    """The field as stored for the record: bounded in size (boxes keep the frame's coordinates)."""
    h, w = rgb.shape[:2]
    f = STORED_SIDE / max(h, w)
    return rgb if f >= 1 else resample(rgb, f)
