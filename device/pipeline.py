"""One field through the pipeline: QC -> find the white cells -> classify them in one batch."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from device.cells import CellFinderSettings, FoundCell, find_cells
from device.classifier import CellPrediction, Classifier
from device.preprocess import crop_box, prepare_cell
from device.qc import QCResult, QCSettings, check_field

GALLERY_SIZE = 160  # side of the crop kept for review, in pixels


@dataclass
class AnalyzedCell:
    found: FoundCell
    crop: np.ndarray  # RGB square crop for the review gallery
    prediction: CellPrediction


@dataclass
class FieldAnalysis:
    qc: QCResult
    cells: list[AnalyzedCell] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


class Analyzer:
    def __init__(self, classifier: Classifier, cells: CellFinderSettings | None = None, qc: QCSettings | None = None):
        self.classifier = classifier
        self.cell_settings = cells or CellFinderSettings()
        self.qc_settings = qc or QCSettings()

    def analyze(self, rgb: np.ndarray, skip_qc: bool = False) -> FieldAnalysis:
        t0 = time.perf_counter()
        qc = check_field(rgb, self.qc_settings)
        t1 = time.perf_counter()
        result = FieldAnalysis(qc)
        result.timings_ms["qc"] = (t1 - t0) * 1000
        if not qc.ok and not skip_qc:
            return result
        found = find_cells(rgb, self.cell_settings)
        t2 = time.perf_counter()
        pp = self.classifier.pp
        views = [crop_box(rgb, c.box, pp.cell_context) for c in found]
        batch = np.stack([prepare_cell(v, pp) for v in views]) if views else np.zeros((0, pp.input_size, pp.input_size, 3), np.uint8)
        predictions = self.classifier.classify(batch)
        t3 = time.perf_counter()
        for c, view, p in zip(found, views, predictions):
            crop = cv2.resize(view, (GALLERY_SIZE, GALLERY_SIZE), interpolation=cv2.INTER_AREA
                              if view.shape[0] > GALLERY_SIZE else cv2.INTER_LINEAR)
            result.cells.append(AnalyzedCell(c, crop, p))
        result.timings_ms.update({"find": (t2 - t1) * 1000, "classify": (t3 - t2) * 1000,
                                  "total": (t3 - t0) * 1000})
        return result
