"""The cell finder on every Romanowsky look: a rapid stain on yellow glass (the Jiangxi set), BCCD
re-stained in optical-density space (testkit.bccd.STAIN_LOOKS), and MGG sources kept as they were."""
from __future__ import annotations

from dataclasses import replace

import random

import numpy as np
import pytest

from device.analysis.cells import central_cell, stain_look, stain_map
from device.analysis.pipeline import FieldSettings, locate
from device.imageio import read_image
from testkit import JIANGXI, JIANGXI_UM_PER_PX, MLL, PBC
from testkit.bccd import STAIN_LOOKS, bccd_fields, evaluate, restained, stain_shifted

FIELDS = bccd_fields()[::6]  # 61 real fields


def test_a_white_cell_is_found_in_98_percent_of_the_rapid_stain_images():
    # Before the optical-density map: no cell in 100 of the 300 (the fixed B - G floor on yellow glass).
    files = sorted((JIANGXI / "images").glob("*.bmp"))
    assert len(files) == 300
    # single-cell images are framed on their cell: a cell touching the frame is still whole (as training reads them)
    s = FieldSettings(cells=replace(FieldSettings().cells, skip_edge_cells=False))
    missed = []
    for f in files:
        img = read_image(f)
        if central_cell(locate(img, s, um_per_px=JIANGXI_UM_PER_PX, skip_qc=True).cells, img.shape) is None:
            missed.append(f.name)
    assert len(missed) <= 6, missed  # measured: 3 of 300


@pytest.mark.parametrize("look", sorted(STAIN_LOOKS))
def test_bccd_restained_keeps_the_finders_recall(look):
    # Measured on all 364 fields (bench.detect_bccd --stain all): recall 0.93-0.99 by look, precision
    # 0.93-0.98; before: faded 0.76, rapid-yellow 0.00, warm-lamp 0.48, faded-yellow 0.00 recall.
    r = evaluate(stain_shifted(FIELDS, look))
    # With cells cut by the frame skipped (issue 21), all 364 fields: rapid-yellow 0.939, faded-yellow 0.915 (below
    # the 0.95: a nucleus spread by the yellow glass touches the edge margin more often); the others 0.96-0.98.
    floor = {"faded-yellow": 0.9, "rapid-yellow": 0.92}.get(look, 0.94)
    assert r["recall"] >= floor and r["precision"] >= 0.9, r


def test_the_restained_fields_really_look_different():
    # The looks must move the colours a fixed B - G floor reads, else the test above proves nothing.
    img = FIELDS[0].image
    for look in ("faded", "rapid-yellow", "warm-lamp"):
        shifted = restained(img, look)
        bg_old = np.clip(img[..., 2].astype(int) - img[..., 1], 0, 255)
        bg_new = np.clip(shifted[..., 2].astype(int) - shifted[..., 1], 0, 255)
        assert np.percentile(bg_new, 99.5) < 0.8 * np.percentile(bg_old, 99.5), look
        assert stain_look(shifted).map == "od"


def test_the_training_sources_keep_the_map_their_crops_were_cut_with():
    # PBC and the marrow set (May-Grunwald-Giemsa on white glass) are read through B - G, exactly as
    # when the current model's training crops were cut; so are BCCD's fields.
    for root in (PBC, MLL):
        files = sorted(root.glob("*/*.jpg"))
        random.Random(1).shuffle(files)
        looks = [stain_look(read_image(f)) for f in files[:40]]
        assert sum(lk.map == "b-g" for lk in looks) >= 38, [lk for lk in looks if lk.map != "b-g"]
    img = FIELDS[3].image
    assert stain_look(img).map == "b-g"
    assert np.array_equal(stain_map(img), np.clip(img[..., 2].astype(int) - img[..., 1], 0, 255).astype(np.uint8))
    jx = read_image(JIANGXI / "images" / "015.bmp")
    assert stain_look(jx).map == "od" and stain_look(jx).tint < -0.2  # yellow glass
