"""A field through the model: its cells located (``device.analysis.pipeline``), then classified in one batch.

Downstream of the image work, so ``device.analysis`` never imports the model."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from device.analysis.cells import FoundCell
from device.analysis.pipeline import GALLERY_SIZE, FieldLocator, FieldSettings, cell_views
from device.analysis.preprocess import prepare_cell, shrink_to
from device.analysis.qc import QCResult
from device.analysis.scale import ScaleEstimate
from device.model.classifier import CellPrediction, Classifier


@dataclass
class AnalyzedCell:
    found: FoundCell
    crop: np.ndarray  # RGB square crop for the review gallery
    prediction: CellPrediction


def cell_json(cell: AnalyzedCell, probabilities: bool = True) -> dict:
    """One analysed cell as ``analyze``, ``classify`` and the capture's answer show it: a flagged cell is
    "uncertain" (label and category), never the model's raw category; the model's top label stays in
    ``predicted``. The capture's answer leaves out the probabilities (``probabilities=False``)."""
    p = cell.prediction
    out = {"box": list(cell.found.box), "label": p.shown_label, "predicted": p.label,
           "category": "uncertain" if p.flag else p.category, "probability": round(p.probability, 4),
           "flag": p.flag}
    if probabilities:
        out["probabilities"] = {k: round(v, 4) for k, v in p.probabilities.items()}
    return out


@dataclass
class FieldAnalysis:
    qc: QCResult
    stored: np.ndarray  # the field as the record keeps it (bounded size): made once, by ``locate``
    scale: ScaleEstimate | None = None
    cells: list[AnalyzedCell] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    inputs: np.ndarray | None = None  # what the model was given (uint8 crops, prepared), for parity checks


class Analyzer:
    def __init__(self, classifier: Classifier, settings: FieldSettings | None = None):
        self.classifier = classifier
        self.locator = FieldLocator(settings)

    @property
    def settings(self) -> FieldSettings:
        return self.locator.settings

    @settings.setter
    def settings(self, value: FieldSettings) -> None:
        self.locator.settings = value

    def analyze(self, rgb: np.ndarray, skip_qc: bool = False, um_per_px: float | None = None) -> FieldAnalysis:
        t0 = time.perf_counter()
        loc = self.locator.locate(rgb, um_per_px, skip_qc)
        t1 = time.perf_counter()
        result = FieldAnalysis(loc.qc, loc.stored, loc.scale)
        pp = self.classifier.pp
        views = cell_views(rgb, loc.cells, loc.scale.um_per_px, pp)
        batch = (np.stack([prepare_cell(v, pp) for v in views]) if views
                 else np.zeros((0, pp.input_size, pp.input_size, 3), np.uint8))
        predictions = self.classifier.classify(batch)
        result.inputs = batch
        t2 = time.perf_counter()
        for c, view, p in zip(loc.cells, views, predictions):
            crop = shrink_to(view, GALLERY_SIZE, GALLERY_SIZE)
            result.cells.append(AnalyzedCell(c, crop, p))
        result.timings_ms.update({"locate": (t1 - t0) * 1000, "classify": (t2 - t1) * 1000,
                                  "total": (t2 - t0) * 1000})
        return result
