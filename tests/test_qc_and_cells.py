from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.detect_bccd import DEFAULT_ROOT, evaluate
from device.cells import find_cells
from device.imageio import read_image
from device.qc import check_field

FIELD = DEFAULT_ROOT / "JPEGImages" / "BloodImage_00000.jpg"


def test_every_bccd_field_passes_qc():
    failed = [p.name for p in sorted((DEFAULT_ROOT / "JPEGImages").glob("*.jpg")) if not check_field(read_image(p)).ok]
    assert failed == []


@pytest.mark.parametrize("change, words", [
    (lambda im: cv2.GaussianBlur(im, (0, 0), 2), "out of focus: refocus"),
    (lambda im: (im * 0.25).astype(np.uint8), "too dark"),
    (lambda im: np.full_like(im, 250), "too bright"),
    (lambda im: np.full_like(im, 200), "no smear in view"),
])
def test_bad_fields_are_rejected_in_words(change, words):
    qc = check_field(change(read_image(FIELD)))
    assert not qc.ok
    assert any(words in p for p in qc.problems), qc.problems


def test_qc_does_not_depend_on_resolution():
    img = read_image(FIELD)
    big = cv2.resize(img, (1920, 1440), interpolation=cv2.INTER_CUBIC)
    assert check_field(big).ok
    assert not check_field(cv2.GaussianBlur(big, (0, 0), 6)).ok


def test_cell_finder_meets_the_bccd_targets():
    r = evaluate(DEFAULT_ROOT)
    assert r["images"] == 364 and r["wbc"] == 372
    assert r["recall"] >= 0.98, r
    assert r["precision"] >= 0.95, r


def test_cell_finder_on_a_field_with_two_cells_and_an_empty_slide():
    boxes = [c.box for c in find_cells(read_image(DEFAULT_ROOT / "JPEGImages" / "BloodImage_00010.jpg"))]
    assert len(boxes) >= 2
    assert find_cells(np.full((480, 640, 3), 230, np.uint8)) == []
