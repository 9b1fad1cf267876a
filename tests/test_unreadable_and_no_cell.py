"""A truncated image never aborts a run, and an image without a cell found never leaves a denominator."""
from __future__ import annotations

import numpy as np
from PIL import Image

from device.analysis.preprocess import Preprocessing
from testkit import MLL, PBC
from training.data import load_cells
from training.datasets import Record

PP = Preprocessing(input_size=64, crop_um=22.0, window_um=22.0)


def _records(tmp_path, label: str, good: list):
    """Real images, one truncated JPEG (a real file cut short) and one blank slide (no cell in it)."""
    cut = tmp_path / "truncated.jpg"
    cut.write_bytes(good[0].read_bytes()[:2500])
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((250, 250, 3), 228, np.uint8)).save(blank)
    paths = [*good, cut, blank]
    return [Record(str(p), p.name, label, None, "test", 0.1, "cell") for p in paths]


def test_a_truncated_jpeg_is_counted_not_fatal(tmp_path):
    good = sorted((PBC / "lymphocyte").glob("*.jpg"))[:3]
    records = _records(tmp_path, "lymphocyte", good)
    cs = load_cells(records, PP, ["lymphocyte", "neutrophil"], threads=2)
    s = cs.summary()
    assert s["images"] == 5 and s["crops"] == 3 and len(cs.x) == 3
    assert s["images_unreadable"] == 1 and s["images_without_cell"] == 1
    assert s["examples_unreadable"][0].startswith("truncated.jpg: ") and "truncated" in s["examples_unreadable"][0]
    assert [r.relpath for r in cs.no_cell] == ["blank.png"]
    assert list(cs.image) == [0, 1, 2]  # crops still point at their own records


def test_the_blast_screen_keeps_images_without_a_cell_in_its_denominators(tmp_path):
    from bench.blast_screen import cells, in_lab, unseen_lab
    from device.model import vocabulary
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier

    bundle = load_bundle(None)
    names = vocabulary.task_labels(bundle.metadata["task"])
    blasts = sorted((MLL / "BLA").glob("*.jpg"))[:4]
    records = _records(tmp_path, "blast", blasts)
    c = cells(records, bundle, Classifier(bundle, threads=2), names)
    r = in_lab(c)
    # four blasts found and one blank image: five in the denominator; the truncated one is counted apart
    assert r["sensitivity"]["n"] == 5 and r["screening_sensitivity"]["n"] == 5
    assert r["no_cell"]["k"] == 1 and r["no_cell"]["n"] == 5 and r["unreadable"] == 1
    assert r["sensitivity"]["k"] <= 4 and r["screening_sensitivity"]["k"] <= 4  # the blank one is a miss
    u = unseen_lab(c, ["MYO"] * len(c.labels))
    assert u["blasts_called"].get("no cell found") == 1 and u["strict_sensitivity"]["n"] == 5
