"""Scale, QC and the cell finder on real BCCD fields, as this and other microscopes show them."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from testkit.bccd import evaluate, views_for
from testkit.bccd import bccd_fields, magnified, resampled
from device.analysis.cells import CellFinderSettings, find_cells
from device.imageio import read_image
from device.analysis.pipeline import FieldSettings, locate
from device.analysis.qc import MESSAGES, check_field
from device.analysis.scale import estimate_scale

FIELDS = bccd_fields()[::12]  # 31 real fields
BCCD_UM_PER_PX = 0.0847  # the ruler's median over all 364 fields (bench.scale)


@pytest.mark.parametrize("magnification", [0.33, 0.5, 1.0])
def test_the_red_cell_ruler_reads_the_same_scale_at_every_magnification(magnification):
    views = magnified(FIELDS, magnification)
    got = [estimate_scale(v.image, 0.1) for v in views]
    measured = [e.um_per_px for e in got if e.source == "red cells"]
    assert len(measured) >= 0.9 * len(views)
    ratio = np.median(measured) / (BCCD_UM_PER_PX / magnification)
    assert 0.85 <= ratio <= 1.15, ratio


@pytest.mark.parametrize("resolution", [0.5, 3.0])
def test_the_ruler_follows_the_sensor_resolution(resolution):
    got = [estimate_scale(resampled(v, resolution).image, 0.1).um_per_px for v in FIELDS[:10]]
    assert 0.9 <= np.median(got) * resolution / BCCD_UM_PER_PX <= 1.1


def test_a_field_without_red_cells_falls_back_to_the_configured_scale():
    est = estimate_scale(np.full((480, 640, 3), 225, np.uint8), 0.123)
    assert est.source == "configured" and est.um_per_px == 0.123 and est.confidence == 0


def test_an_implausible_scale_is_refused_with_what_to_check():
    # A 4x objective: a pixel covers 2 um; the fallback says so, and QC refuses the field.
    s = FieldSettings(fallback_um_per_px=1.9)
    loc = locate(np.full((480, 640, 3), 225, np.uint8), s)
    assert not loc.qc.ok
    small = cv2.resize(read_image("device/assets/fields/BloodImage_00000.jpg"), (64, 48), interpolation=cv2.INTER_AREA)
    loc = locate(small, s, um_per_px=1.9)
    assert not loc.qc.ok and "objective" in loc.qc.message, loc.qc.message


@pytest.mark.parametrize("view", ["m0.33", "m0.5", "m1", "r0.5", "r3", "bright+30", "dark-30"])
def test_real_fields_pass_qc_at_every_scale_and_lamp_setting(view):
    if view.startswith("m"):
        views = magnified(FIELDS, float(view[1:]))
        images = [v.image for v in views]
    elif view.startswith("r"):
        images = [resampled(v, float(view[1:])).image for v in FIELDS[:12]]
    else:
        k = 1.3 if view.startswith("bright") else 0.7
        images = [np.clip(v.image * k, 0, 255).astype(np.uint8) for v in FIELDS]
    s = FieldSettings()
    results = [locate(img, s).qc for img in images]
    passed = np.mean([q.ok for q in results])
    assert passed >= 0.9, [q.message for q in results if not q.ok]


@pytest.mark.parametrize("change, message", [
    (lambda im: cv2.GaussianBlur(im, (0, 0), 0.5 / BCCD_UM_PER_PX), "focus"),
    (lambda im: cv2.GaussianBlur(im, (0, 0), 1.0 / BCCD_UM_PER_PX), "focus"),
    (lambda im: cv2.GaussianBlur(im, (0, 0), 2.0 / BCCD_UM_PER_PX), "focus"),
    (lambda im: (im / 8).astype(np.uint8), "dark"),  # 3 stops under
    (lambda im: np.clip(im.astype(np.int32) * 8, 0, 255).astype(np.uint8), "bright"),  # 3 stops over
    (lambda im: np.full_like(im, 215), "empty"),  # a blank slide
])
def test_bad_fields_are_rejected_with_the_action_to_take(change, message):
    s = FieldSettings()
    for v in FIELDS[:8]:
        qc = locate(change(v.image), s).qc
        assert not qc.ok and qc.problems == (MESSAGES[message],), (v.name, qc)


def test_the_bundled_out_of_focus_sample_is_rejected_and_its_sharp_twin_passes():
    s = FieldSettings()
    assert locate(read_image("device/assets/fields/BloodImage_00004.jpg"), s).qc.ok
    qc = locate(read_image("device/assets/fields/BloodImage_00004z-out-of-focus.jpg"), s).qc
    assert qc.problems == (MESSAGES["focus"],), qc


def test_a_bright_empty_background_is_no_fault():
    # A thin smear at low magnification: cells on bright, nearly white glass.
    img = magnified(FIELDS[:9], 0.33)[0].image.astype(np.float32)
    glass = img.mean(axis=2) > 190
    img[glass] = img[glass] * 0.2 + 0.8 * 250
    assert check_field(img.astype(np.uint8), um_per_px=3 * BCCD_UM_PER_PX).ok


# Floors a little under the measured figures (bench.detect_bccd, all fields: README). At a third
# of BCCD's magnification the finder misses the 0.97 recall target (measured 0.957).
@pytest.mark.parametrize("magnification, resolution, floor", [
    (1.0, 1.0, 0.95), (0.5, 1.0, 0.95), (0.33, 1.0, 0.9), (1.0, 0.5, 0.93), (1.0, 3.0, 0.93)])
def test_the_finder_keeps_its_figures_at_every_scale_without_a_setting_changed(magnification, resolution, floor):
    r = evaluate(views_for(magnification, resolution, limit=72 if resolution == 1.0 else 24))
    assert r["recall"] >= floor and r["precision"] >= floor, r


def test_finder_sizes_are_physical():
    img = read_image("device/assets/fields/BloodImage_00010.jpg")
    every = CellFinderSettings(skip_edge_cells=False)  # this field's second cell is cut by the edge
    at_native = [c.box for c in find_cells(img, every, um_per_px=BCCD_UM_PER_PX)]
    assert len(at_native) == 2
    # The same field at half the pixels and the scale doubled gives the same cells.
    half = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    at_half = [c.box for c in find_cells(half, every, um_per_px=2 * BCCD_UM_PER_PX)]
    assert len(at_half) == 2
    assert find_cells(np.full((480, 640, 3), 230, np.uint8), um_per_px=0.1) == []
    with pytest.raises(ValueError):
        CellFinderSettings(min_nucleus_um2=0)


def test_the_device_skips_a_cell_cut_by_the_field_edge():
    """Issue 21: a cell cut by the edge is classified from part of a cell (two such fragments called blasts
    raised "refer" alone). The device's finder leaves out nuclei that touch the border; the switch can be off."""
    img = read_image("device/assets/fields/BloodImage_00010.jpg")
    assert CellFinderSettings().skip_edge_cells  # on by default, hence on the box
    every = find_cells(img, CellFinderSettings(skip_edge_cells=False), um_per_px=BCCD_UM_PER_PX)
    kept = find_cells(img, um_per_px=BCCD_UM_PER_PX)
    h, w = img.shape[:2]
    touching = [c for c in every if c.nucleus_box[0] <= 2 or c.nucleus_box[1] <= 2 or c.nucleus_box[2] >= w - 2
                or c.nucleus_box[3] >= h - 2]
    assert len(touching) == 1 and len(every) == 2
    assert [c.box for c in kept] == [c.box for c in every if c not in touching]
    # the whole pipeline (scale, QC, the finder at its working scale) leaves it out too
    loc = locate(img, FieldSettings())
    assert len(loc.cells) == 1
