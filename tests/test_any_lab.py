"""Issue 20's training levers: restained copies through the device path, class-and-source weights,
a pretrained backbone with frozen batch norm and a head-only start, the test-only Jiangxi lab."""
from __future__ import annotations

import numpy as np
import pytest

from testkit import SHARED_DATA as SHARED

JIANGXI = SHARED / "jiangxi-tecom-wbc"
PBC = SHARED / "pbc-normal-wbc"
WEIGHTS = SHARED.parent / "models" / "imagenet-mobilenet-v2" / "mobilenet_v2_1.0_imagenet_notop.weights.h5"


def test_restain_moves_colour_but_keeps_the_cell():
    from device.imageio import read_image
    from training.stain import restain

    img = read_image(sorted((PBC / "lymphocyte").iterdir())[0])
    looks = [restain(img, np.random.default_rng(s)) for s in range(8)]
    for out in looks:
        assert out.shape == img.shape and out.dtype == np.uint8
        # the layout stays (nucleus where it was): grey levels correlate strongly
        assert np.corrcoef(out.mean(2).ravel(), img.mean(2).ravel())[0, 1] > 0.8
    # and the looks differ from the original and from each other in colour, not by a rounding error
    means = np.array([o.reshape(-1, 3).mean(0) for o in looks])
    assert np.abs(means - img.reshape(-1, 3).mean(0)).max() > 10
    assert means.std(0).max() > 4
    # deterministic for a seed
    np.testing.assert_array_equal(restain(img, np.random.default_rng(3)), looks[3])


def test_stain_variants_follow_the_device_path_in_load_cells_order():
    """Restained copies line up with load_cells' cells and are prepared like them (window filled alike)."""
    from device.analysis.preprocess import WINDOW_FILL, Preprocessing, window_mask
    from training.data import load_cells
    from training.datasets import read_pbc
    from training.stain import load_stain_variants

    recs = read_pbc(PBC).records[::700][:6]
    pp = Preprocessing(input_size=64, crop_um=20.0, window_um=20.0)
    cs = load_cells(recs, pp, sorted({r.label for r in recs}))
    v = load_stain_variants(recs, pp, 2, 1.0, seed=1)
    assert v.shape == (len(cs.x), 2, 64, 64, 3)
    outside = ~window_mask(64, pp)
    assert (v[:, :, outside] == WINDOW_FILL).all()
    # same cell, other look: correlated with its original, less with another cell
    a = v[0, 0].mean(2).ravel()
    assert np.corrcoef(a, cs.x[0].mean(2).ravel())[0, 1] > np.corrcoef(a, cs.x[3].mean(2).ravel())[0, 1]


def test_example_weights_balance_classes_and_sources():
    from training.config import TrainConfig
    from training.train import example_weights

    names = ["blast", "lymphocyte", "neutrophil"]
    y = np.array([0] * 10 + [1] * 30 + [1] * 10 + [2] * 50)
    src = np.array(["mll"] * 10 + ["pbc"] * 30 + ["mll"] * 10 + ["pbc"] * 50)
    w = example_weights(y, src, names, TrainConfig(balance="source", cost={"lymphocyte": 2.0}))
    assert w.mean() == pytest.approx(1.0)
    total = {c: w[y == c].sum() for c in range(3)}
    assert total[1] == pytest.approx(2 * total[0]) and total[0] == pytest.approx(total[2])
    lym = y == 1
    assert w[lym & (src == "mll")].sum() == pytest.approx(w[lym & (src == "pbc")].sum())
    plain = example_weights(y, src, names, TrainConfig())
    assert plain[lym & (src == "mll")].sum() < plain[lym & (src == "pbc")].sum()
    with pytest.raises(ValueError, match="not labels of the task"):
        example_weights(y, src, names, TrainConfig(cost={"myeloblast": 2.0}))
    with pytest.raises(ValueError, match="balance"):
        example_weights(y, src, names, TrainConfig(balance="lab"))


@pytest.mark.tensorflow
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="the shared ImageNet weights are not here")
def test_pretrained_backbone_loads_and_freezes_batch_norm():
    import keras

    from training.models import build_model

    m = build_model("mobilenetv2", 64, 3, weights=str(WEIGHTS), freeze_bn=True)
    bb = m.get_layer("backbone")
    bns = [lyr for lyr in bb.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    assert bns and not any(lyr.trainable for lyr in bns)
    first = next(lyr for lyr in bb.layers if isinstance(lyr, keras.layers.Conv2D))
    assert np.abs(first.get_weights()[0]).sum() > 0  # the ImageNet kernels, not a fresh init
    fresh = build_model("mobilenetv2", 64, 3)
    w0 = next(lyr for lyr in fresh.get_layer("backbone").layers if isinstance(lyr, keras.layers.Conv2D))
    assert not np.allclose(first.get_weights()[0], w0.get_weights()[0])


def test_jiangxi_reader_is_a_test_only_lab():
    from collections import Counter

    from training.datasets import read_source

    d = read_source("jiangxi", JIANGXI)
    assert len(d.records) == 300 and d.info.um_per_px == pytest.approx(0.14)
    assert Counter(r.label for r in d.records) == {"neutrophil": 176, "lymphocyte": 53, "monocyte": 48,
                                                   "eosinophil": 22, "basophil": 1}
    # no shipped recipe trains on it (nor on AML-LMU)
    from training.config import REPO_ROOT, load_recipe

    for path in (REPO_ROOT / "training/configs").glob("*.toml"):
        assert {s.kind for s in load_recipe(path).data.sources} & {"jiangxi", "aml-lmu"} == set(), path.name


@pytest.mark.tensorflow
def test_head_epochs_then_whole_network_train_for_real(tmp_path):
    """A pretrained-style run: head only, then the whole network with batch norm frozen, source-balanced,
    with restained copies; the backbone's weights move only in the second phase."""
    pytest.importorskip("tensorflow")
    import json

    from training.config import recipe_from_dict
    from training.train import train

    recipe = recipe_from_dict({
        "task": "screen", "name": "tiny-mnv2", "seed": 3,
        "data": {"sources": [{"kind": "pbc", "path": str(PBC)},
                             {"kind": "mll", "path": str(SHARED / "bone-marrow-mll-subset")}],
                 "max_per_class": 6, "stain_normalize": True},
        "preprocessing": {"input_size": 48, "crop_um": 20.0, "window_um": 20.0},
        "model": {"name": "mobilenetv2", "width": 0.35, "freeze_bn": True},
        "train": {"epochs": 2, "head_epochs": 1, "batch_size": 16, "warmup_epochs": 0, "balance": "source",
                  "cost": {"blast": 1.5, "lymphocyte": 2.0}},
        "augment": {"stain_variants": 1},
    })
    lines = []
    run = train(recipe, out_root=tmp_path, log=lines.append)
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["val_balanced_accuracy"]) == 2 and len(hist["loss"]) == 2
    assert any("restained copies" in str(x) for x in lines)
    assert any("blast/bone-marrow-mll" in str(x) for x in lines)
