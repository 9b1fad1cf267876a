"""Real TensorFlow on a tiny real subset: the train -> run folder -> evaluate path."""
from __future__ import annotations

import json

import numpy as np
import pytest


tf = pytest.importorskip("tensorflow")

from testkit import PBC  # noqa: E402
from training.config import load_recipe  # noqa: E402

pytestmark = pytest.mark.tensorflow


def test_run_folder_has_everything(tiny_run):
    for name in ("model.keras", "config.toml", "recipe.json", "split_manifest.csv", "split_summary.json",
                 "curves.png", "history.json", "report.json", "report_confusion.png", "report_roc.png",
                 "report_calibration.png"):
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / "report.json").read_text())
    # max_per_class images per class in test, each through the device's finder: one crop per
    # image where it finds the cell, the rest counted.
    cells = report["cells"]["test"]
    assert report["n"] == cells["crops"] == cells["images"] - cells["images_without_cell"]
    assert cells["images"] == 8 * 10
    # Only single platelets (below the finder's smallest nucleus, as on the box) give no crop.
    assert all(p.startswith("platelet/") for p in cells["examples_without_cell"]), cells
    assert report["balanced_accuracy"] > 0.2  # chance is 0.125: the tiny model learned something
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece", "macro_roc_auc"):
        assert 0.0 <= report[key] <= 1.0, key
    assert set(report["per_class"]) == {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte",
                                        "monocyte", "neutrophil", "platelet"}
    pc = report["per_class"]["lymphocyte"]
    assert {"sensitivity", "specificity", "precision", "f1", "roc_auc", "support"} <= set(pc)
    assert np.array(report["confusion_matrix"]).sum() == report["n"]
    assert report["versions"]["tensorflow"] == tf.__version__
    assert report["unit"] == "image"
    assert "malignant" not in report  # the differential has no malignant class


def test_evaluate_reproduces_the_training_report(tiny_run):
    from training.evaluate import evaluate

    again = evaluate(tiny_run, split="test", log=lambda *_: None)
    first = json.loads((tiny_run / "report.json").read_text())
    assert again["confusion_matrix"] == first["confusion_matrix"]
    assert again["balanced_accuracy"] == pytest.approx(first["balanced_accuracy"])
    assert (tiny_run / "eval_test.json").is_file()


def test_shipped_recipe_loads_and_names_real_data():
    from training.config import REPO_ROOT

    recipe = load_recipe(REPO_ROOT / "training/configs/pbc-differential.toml")
    assert recipe.task == "differential"
    assert recipe.data.sources[0].kind == "pbc"
    assert recipe.model.name in ("leukonet", "mobilenetv2", "lenet-lld", "thanh-cnn")


def test_every_shipped_recipe_loads():
    """Each recipe in training/configs parses with its task, sources, framing and model (the screen's
    experiments included), so a documented command never fails on its own config."""
    from training.config import REPO_ROOT, load_recipe
    from training.models import MODELS

    found = sorted((REPO_ROOT / "training/configs").glob("*.toml"))
    assert {"screen.toml", "screen-grey.toml", "screen-style.toml", "screen-gn.toml"} <= {p.name for p in found}
    for path in found:
        recipe = load_recipe(path)
        assert recipe.model.name in MODELS and recipe.data.sources, path.name
        if recipe.task == "screen":
            assert recipe.preprocessing.window_um == 20.0 and recipe.evaluate.target_sensitivity == 0.97, path.name


@pytest.mark.parametrize("name", ["lenet-lld", "thanh-cnn", "leukonet", "leukonet-gn", "mobilenetv2"])
def test_every_model_builds_and_predicts(name):
    from training.models import build_model

    size = 64 if name != "mobilenetv2" else 96
    model = build_model(name, size, 4, dropout=0.1, width=0.35 if name == "mobilenetv2" else 0.5)
    probs = model.predict(np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32), verbose=0)
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert model.get_layer("embedding") is not None


def test_mobilenetv2_never_downloads_and_checks_a_weights_path(tmp_path):
    from training.models import build_model

    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_model("mobilenetv2", 96, 4, weights=str(tmp_path / "missing.h5"))


def test_augmentation_changes_images_but_keeps_shape():
    from training.augment import augment_image
    from training.config import AugmentConfig

    img = tf.constant(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    out = augment_image(img, AugmentConfig(), tf.constant([1, 2], tf.int64))
    assert out.shape == (48, 48, 3) and out.dtype == tf.uint8
    assert not np.array_equal(out.numpy(), img.numpy())
    off = AugmentConfig(flip=False, rot90=False, shear=0, zoom=0, shift=0, brightness=0, contrast=0, stain=0)
    same = augment_image(img, off, tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(same.numpy(), img.numpy())
    # stain jitter alone shifts colour but keeps the layout (highly correlated)
    stain_only = AugmentConfig(flip=False, rot90=False, shear=0, zoom=0, shift=0, brightness=0, contrast=0, stain=0.1)
    s = augment_image(img, stain_only, tf.constant([3, 4], tf.int64)).numpy().astype(float)
    assert np.corrcoef(s.ravel(), img.numpy().astype(float).ravel())[0, 1] > 0.9


def test_all_subtype_reports_the_malignant_operating_point(tmp_path, taleqani_copy):
    """The Taleqani layout through the whole trainer: subtype labels, duplicates removed,
    the threshold chosen on validation for 95 % sensitivity and applied to test."""
    from training.config import recipe_from_dict
    from training.train import train

    recipe = recipe_from_dict({
        "task": "all-subtype", "name": "tq", "seed": 3,
        "data": {"sources": [{"kind": "taleqani", "path": str(taleqani_copy)}],
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "preprocessing": {"input_size": 32},
        "model": {"name": "thanh-cnn"},
        "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
    })
    run = train(recipe, out_root=tmp_path, log=lambda *_: None)
    report = json.loads((run / "report.json").read_text())
    m = report["malignant"]
    assert m["chosen_on"] == "val" and m["target_sensitivity"] == 0.95
    assert m["validation"]["sensitivity"] >= 0.95
    assert {"sensitivity", "specificity", "threshold"} <= set(m["test"])
    summary = json.loads((run / "split_summary.json").read_text())
    assert summary["duplicates_removed"] == 2 and summary["conflicting_duplicates_removed"] == 2
    assert summary["unit"] == "image"


def test_same_seed_same_model(tmp_path):
    """Seeded and deterministic: two runs of one recipe give the same predictions."""
    from training.config import recipe_from_dict
    from training.train import train

    def once(out):
        recipe = recipe_from_dict({
            "task": "differential", "name": "det", "seed": 11,
            "data": {"sources": [{"kind": "pbc", "path": str(PBC)}], "max_per_class": 4},
            "preprocessing": {"input_size": 32}, "model": {"name": "leukonet", "width": 0.25},
            "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
        })
        run = train(recipe, out_root=out, log=lambda *_: None)
        return np.load(run / "test_predictions.npz")["probs"], (run / "split_manifest.csv").read_text()

    (p1, m1), (p2, m2) = once(tmp_path / "a"), once(tmp_path / "b")
    assert m1 == m2
    np.testing.assert_allclose(p1, p2, atol=1e-6)
