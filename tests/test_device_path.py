"""Train on what the device sees: the trainer's crops are the device's crops, and a field
dataset goes from ``train`` through ``convert`` to ``analyze`` with field-level figures."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from testkit import PBC, REPO

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.tensorflow


def _pbc_examples():
    return [sorted((PBC / c).glob("*.jpg"))[i] for c in ("lymphocyte", "neutrophil", "eosinophil", "monocyte")
            for i in (3, 17)]


def test_a_training_crop_is_the_crop_analyze_makes_and_gives_the_same_prediction(tiny_bundle):
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from device.imageio import read_image
    from device.model.analyzer import Analyzer
    from device.analysis.preprocess import prepare_cell
    from training.data import record_views
    from training.datasets import PBC_INFO, Record

    bundle = load_bundle(tiny_bundle)
    clf = Classifier(bundle)
    pp = bundle.preprocessing
    assert pp.crop_um == 28.0  # physical framing travels in the bundle
    analyzer = Analyzer(clf)
    for path in _pbc_examples():
        img = read_image(path)
        rec = Record(str(path), path.name, "lymphocyte", None, PBC_INFO.name, PBC_INFO.um_per_px)
        (view,) = record_views(img, rec, pp)
        train_crop = prepare_cell(view, pp)
        res = analyzer.analyze(img, skip_qc=True, um_per_px=PBC_INFO.um_per_px)
        same = [i for i in range(len(res.cells)) if np.array_equal(res.inputs[i], train_crop)]
        assert len(same) == 1, f"{path.name}: the trainer's crop is not among analyze's {len(res.cells)} crops"
        p_train = clf.classify(train_crop[None])[0]
        assert res.cells[same[0]].prediction.probabilities == p_train.probabilities

    # The command a user runs, on the same images: the same labels for the central cells.
    out = subprocess.run([sys.executable, "-m", "device.cli", "analyze", "--json", "--skip-qc", "--bundle",
                          str(tiny_bundle), "--um-per-px", str(PBC_INFO.um_per_px), *map(str, _pbc_examples())],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(_pbc_examples())
    for row, path in zip(rows, _pbc_examples()):
        assert row["scale"]["source"] == "given" and row["cells"], row
        img = read_image(path)
        res = analyzer.analyze(img, skip_qc=True, um_per_px=PBC_INFO.um_per_px)
        assert [c["box"] for c in row["cells"]] == [list(c.found.box) for c in res.cells]
        assert [c["predicted"] for c in row["cells"]] == [c.prediction.label for c in res.cells]


def test_measured_scale_on_pbc_images_is_close_to_the_stated_one():
    from device.imageio import read_image
    from device.analysis.pipeline import FieldSettings, locate
    from training.datasets import PBC_INFO

    got = [locate(read_image(p), FieldSettings(), skip_qc=True).scale for p in _pbc_examples()]
    measured = [s.um_per_px for s in got if s.source == "red cells"]
    assert len(measured) >= 6
    assert abs(np.median(measured) / PBC_INFO.um_per_px - 1) < 0.1


@pytest.fixture(scope="module")
def taleqani_fields(tmp_path_factory):
    from tests.fieldgen import background, make_taleqani

    root = tmp_path_factory.mktemp("taleqani")
    classes = {"Benign": PBC / "lymphocyte", "Early": PBC / "monocyte", "Pre": PBC / "neutrophil",
               "Pro": PBC / "eosinophil"}
    make_taleqani(root, classes, per_class=14, um_per_px=0.17, seed=3)
    # Three fields with no white cell at all: they must be counted, not silently dropped.
    import cv2

    for i, name in enumerate(("BloodImage_00100", "BloodImage_00200", "BloodImage_00300")):
        bg = background(name, 0.17)
        cv2.imwrite(str(root / "Original" / "Pre" / f"WBC-Pre-empty{i}.jpg"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
    return root


def test_a_field_dataset_goes_from_train_through_convert_to_analyze(taleqani_fields, tmp_path):
    from convert.build import convert_run
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from device.imageio import read_image
    from device.model.analyzer import Analyzer
    from training.config import recipe_from_dict
    from training.evaluate import records_from_manifest
    from training.train import train

    recipe = recipe_from_dict({
        "task": "all-subtype", "name": "fields", "seed": 7,
        "data": {"sources": [{"kind": "taleqani", "path": str(taleqani_fields)}],
                 "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
        "preprocessing": {"input_size": 32},
        "model": {"name": "leukonet", "width": 0.25},
        "train": {"epochs": 12, "batch_size": 16, "warmup_epochs": 0, "learning_rate": 0.003},
    })
    run = train(recipe, out_root=tmp_path / "runs", config_text="# fields\n", log=lambda *_: None)
    report = json.loads((run / "report.json").read_text())
    cells = report["cells"]
    assert sum(c["images_without_cell"] for c in cells.values()) == 3
    assert sum(c["images"] for c in cells.values()) == 4 * 14 + 3
    assert cells["train"]["crops"] > cells["train"]["images"]  # every white cell of a field is a crop
    per_image = report["per_image"]
    assert per_image["images"] == cells["test"]["images"]

    bundle_path = convert_run(run, out=tmp_path / "fields.lkb", representative_count=32, parity_floor=0.8,
                              log=lambda *_: None)
    analyzer = Analyzer(Classifier(load_bundle(bundle_path)))
    names = report["class_names"]
    right = no_cell = 0
    test = [r for s, r in records_from_manifest(run) if s == "test"]
    for rec in test:
        res = analyzer.analyze(read_image(rec.path), skip_qc=True)
        # the top label, as the trainer scores it (the device's blast operating point may relabel a cell)
        tops = [max(c.prediction.probabilities, key=c.prediction.probabilities.get) for c in res.cells]
        votes = np.bincount([names.index(t) for t in tops], minlength=len(names))
        no_cell += not res.cells
        right += bool(res.cells) and names[int(votes.argmax())] == rec.label
    field_accuracy = right / len(test)
    # The appliance's own path agrees with the trainer's per-field figure, well above chance (0.25).
    assert abs(field_accuracy - per_image["accuracy"]) <= 0.15, (field_accuracy, per_image)
    assert field_accuracy >= 0.6, (field_accuracy, per_image)
    assert no_cell == per_image["images_without_cell"]
