"""Site calibration: the box re-fits what is cheap to re-fit (a head on the stored embeddings, the review
threshold, the per-class "unfamiliar" statistics, the blast operating point) from the cells its own staff
reviewed, and checks the result against the bundle's reference cells before anything uses it.

numpy only; used by device.records and device.web, never calling them back. The pieces:
``fit`` (fit and judge a calibration), ``apply`` (run one on a batch of cells), ``store`` (its file,
checksummed and bound to one bundle), ``referral`` (the site-aware refer rule's statistics).
"""
from device.calibration.fit import (Calibration, CalibrationRefused, Reference, SiteCells, MIN_CELLS, MIN_SAMPLES,
                                    fit_calibration)
from device.calibration.store import CalibrationFileError, dumps, loads

__all__ = ["Calibration", "CalibrationRefused", "CalibrationFileError", "Reference", "SiteCells", "MIN_CELLS",
           "MIN_SAMPLES", "fit_calibration", "dumps", "loads"]
