"""The blast screen (issue 11): the operating point chosen on validation, the device's rule that applies
it, the shipped bundles, and the bench that measures the screen across labs."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from device.model.classifier import Classifier, decide

LABELS = ["basophil", "blast", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
BLAST = [1]


def probs(**named) -> np.ndarray:
    p = np.zeros(len(LABELS), np.float32)
    for k, v in named.items():
        p[LABELS.index(k)] = v
    return p / p.sum()


def test_operating_point_keeps_sensitivity_at_equal_specificity():
    from training.metrics import operating_point

    pos = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3])
    op = operating_point(pos, score, target=0.5)
    # the highest threshold reaching the target is 0.7 (3 of 6); every threshold down to just above 0.4 has the
    # same specificity, so the screen goes down to half-way between the last blast (0.45) and that negative
    assert op["at_target"]["threshold"] == pytest.approx(0.7) and op["at_target"]["sensitivity"] == 0.5
    assert op["chosen"]["threshold"] == pytest.approx(0.425)
    assert op["chosen"]["sensitivity"] == 1.0 and op["chosen"]["specificity"] == 1.0
    # every blast is caught: there is no next point up in sensitivity
    assert "next" not in op


def test_operating_point_stops_at_the_first_negative():
    from training.metrics import operating_point

    pos = np.array([1, 1, 0, 1, 0, 1], bool)
    score = np.array([0.9, 0.8, 0.75, 0.7, 0.65, 0.2])
    op = operating_point(pos, score, target=0.75)  # 3 of 4 positives: threshold 0.7
    assert op["chosen"]["threshold"] == pytest.approx(0.675)  # 0.65 is a negative: not below it
    assert op["chosen"]["tp"] == 3 and op["chosen"]["fp"] == 1
    # the next point up catches the last blast at the price of one more false positive: reported, not taken
    assert op["next"]["threshold"] == pytest.approx(0.2)
    assert op["next"]["sensitivity"] == 1.0 and op["next"]["fp"] == 2


def test_blast_probability_at_the_operating_point_counts_as_blast_even_when_not_top():
    th = {"review": 0.7, "malignant": 0.25, "malignant_review": 0.1}
    p = probs(lymphocyte=0.6, blast=0.3, monocyte=0.1)
    assert decide(p, BLAST, None, th) == (LABELS.index("blast"), None)
    # exactly at the point: a blast
    p = probs(lymphocyte=0.75, blast=0.25)
    assert decide(p, BLAST, None, th) == (LABELS.index("blast"), None)
    # between the review point and the operating point: left for review, never counted as normal
    p = probs(lymphocyte=0.8, blast=0.2)
    assert decide(p, BLAST, None, th) == (LABELS.index("lymphocyte"), "possible-blast")
    # below the review point, confident: the normal label
    p = probs(lymphocyte=0.95, blast=0.05)
    assert decide(p, BLAST, None, th) == (LABELS.index("lymphocyte"), None)
    # unfamiliar cells go to review, unless their blast probability reaches the operating point
    assert decide(probs(lymphocyte=0.95, blast=0.05), BLAST, 99.0, {**th, "ood": 10.0})[1] == "unfamiliar"
    assert decide(probs(lymphocyte=0.6, blast=0.4), BLAST, 99.0, {**th, "ood": 10.0})[1] is None
    # a low top probability without blast suspicion
    assert decide(probs(lymphocyte=0.5, monocyte=0.45, blast=0.05), BLAST, None, th) == \
        (LABELS.index("lymphocyte"), "low-confidence")
    # a blast on top but below the operating point is not counted as one: it goes to review
    assert decide(probs(blast=0.09, lymphocyte=0.05, monocyte=0.04, neutrophil=0.04, eosinophil=0.04, basophil=0.04,
                        ig=0.04, platelet=0.04, erythroblast=0.04), BLAST, None, {"malignant": 0.5})[1] == "possible-blast"
    # a broken output or distance is never a confident call
    assert decide(np.full(len(LABELS), np.nan), BLAST, None, th)[1] == "low-confidence"
    assert decide(probs(lymphocyte=0.95, blast=0.05), BLAST, float("nan"), {**th, "ood": 10.0})[1] == "unfamiliar"
    # a bundle without an operating point (the differential): only the top label and review rules
    assert decide(probs(lymphocyte=0.6, blast=0.4), BLAST, None, {"review": 0.5}) == (LABELS.index("lymphocyte"), None)


def test_the_device_applies_the_bundle_operating_point(tmp_path):
    """The shipped screen bundle through the real LiteRT interpreter: moving only the operating point in the
    bundle's metadata turns the same crop into a blast."""
    from device.model.bundle import load_bundle
    from device.model.installed import trial_crops

    bundle = load_bundle()
    assert bundle.metadata["task"] == "screen" and "malignant" in bundle.categories
    assert 0 < bundle.thresholds["malignant_review"] <= bundle.thresholds["malignant"] < 1
    crops = trial_crops(bundle, 6)
    clf = Classifier(bundle)
    raw, _ = clf.raw(crops)
    b = bundle.labels.index("blast")
    i = int(np.argmin(raw[:, b]))  # the least blast-like crop: not a blast at the shipped point
    assert clf.classify(crops[i : i + 1])[0].category != "malignant"
    meta = copy.deepcopy(bundle.metadata)
    meta["thresholds"].update(malignant=float(raw[i, b]) * 0.999, malignant_review=0.0)
    moved = type(bundle)(None, meta, bundle.model_bytes, bundle.ood, bundle.files)
    pred = Classifier(moved).classify(crops[i : i + 1])[0]
    assert pred.label == "blast" and pred.category == "malignant" and pred.flag is None
    assert pred.label != bundle.labels[int(raw[i].argmax())] or raw[i].argmax() == b


def test_bundle_refuses_operating_points_out_of_order(tmp_path):
    import json

    from device.model.bundle import BundleError, default_bundle_path, load_bundle, pack

    b = load_bundle()
    for bad in ({"malignant": 1.5}, {"malignant": 0.2, "malignant_review": 0.3}, {"malignant_review": -0.1}):
        meta = copy.deepcopy(b.metadata)
        meta["thresholds"].update(bad)
        files = dict(b.files, **{"metadata.json": json.dumps(meta).encode()})
        with pytest.raises(BundleError, match="malignant"):
            load_bundle(data=pack(files))
    assert default_bundle_path().is_file()


def test_both_shipped_bundles_are_offered_and_switchable(tmp_path):
    """Settings lists the screen and the 8-class differential; choosing one installs it through the same checks
    as an upload, keeps the old one for roll-back, and is audited."""
    from device.model.bundle import builtin_bundle_paths, load_bundle
    from device.model.installed import install_builtin, models_dir

    shipped = {stem: load_bundle(p) for stem, p in builtin_bundle_paths().items()}
    assert {"default", "differential"} <= set(shipped)
    assert shipped["default"].metadata["task"] == "screen"
    assert shipped["differential"].metadata["task"] == "differential"
    assert "malignant" not in shipped["differential"].categories
    b = install_builtin("differential", tmp_path)
    assert b.sha256 == shipped["differential"].sha256
    assert load_bundle(models_dir(tmp_path) / "current.lkb").sha256 == b.sha256
    install_builtin("default", tmp_path)
    assert load_bundle(models_dir(tmp_path) / "previous.lkb").sha256 == b.sha256
    from device.model.bundle import BundleError

    with pytest.raises(BundleError, match="no shipped model"):
        install_builtin("../../etc/passwd", tmp_path)


def test_settings_page_switches_to_the_differential(page_app, admin):
    from device.model.bundle import builtin_bundle_paths, load_bundle
    from device.model.installed import models_dir
    from testkit.web import csrf_of

    base, app, rt, _ = page_app
    s = admin
    page = s.get(base + "/settings").text
    assert 'id="shipped-models"' in page and "Use this model" in page and "no blast class" in page
    r = s.post(base + "/settings/model/builtin", data={"csrf_token": csrf_of(page), "builtin": "differential"})
    assert r.ok and "classifies every field captured from now on" in r.text  # what really happens (issue 21)
    current = load_bundle(models_dir(rt.config.data_dir) / "current.lkb")
    assert current.sha256 == load_bundle(builtin_bundle_paths()["differential"]).sha256
    r = s.post(base + "/settings/model/builtin", data={"csrf_token": csrf_of(page), "builtin": "nothing"})
    assert r.status_code == 400 and "current model stays in use" in r.text


def test_round_window_frames_every_source_alike():
    """Outside the round window every pixel is the same fixed colour, whatever the crop held (a dataset's
    padding, another cell); stain statistics are measured inside it only; grey mode keeps equal channels."""
    from device.analysis.preprocess import WINDOW_FILL, Preprocessing, prepare_cell, stain_reference, window_mask

    pp = Preprocessing(input_size=64, crop_um=20.0, window_um=20.0)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    b = a.copy()
    b[:, :20] = (90, 20, 160)  # a purple padding band at the edge: outside the window after resizing
    mask = window_mask(64, pp)
    assert mask.sum() == pytest.approx(np.pi * 32 ** 2, rel=0.05) and not mask[0, 0] and mask[32, 32]
    pa, pb = prepare_cell(a, pp), prepare_cell(b, pp)
    assert (pa[~mask] == WINDOW_FILL).all() and (pb[~mask] == WINDOW_FILL).all()
    ref = stain_reference([pa], pp)
    normed = prepare_cell(a, Preprocessing(input_size=64, crop_um=20.0, window_um=20.0, stain_reference=ref))
    assert np.abs(normed[mask].astype(int) - pa[mask].astype(int)).mean() < 2.0  # its own reference: unchanged
    grey = prepare_cell(a, Preprocessing(input_size=64, crop_um=20.0, window_um=20.0, grey=True))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    with pytest.raises(ValueError, match="window_um"):
        Preprocessing(input_size=64, crop_um=0.0, window_um=20.0)


@pytest.mark.tensorflow
def test_augmentation_keeps_the_device_window():
    """Zoom, shift, stain, hue and grey changes in training never move or recolour the window's outside."""
    tf = pytest.importorskip("tensorflow")
    from device.analysis.preprocess import WINDOW_FILL, Preprocessing, window_mask
    from training.augment import augment_image
    from training.config import AugmentConfig

    mask = window_mask(96, Preprocessing(input_size=96, crop_um=20.0, window_um=20.0))
    img = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    cfg = AugmentConfig(zoom=0.25, shift=0.05, stain=0.2, blur=2.0, hue=0.04, saturation=0.3, grey=1.0)
    out = augment_image(tf.constant(img), cfg, tf.constant([1, 2]), mask, float(WINDOW_FILL)).numpy()
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[~mask] == WINDOW_FILL).all()
    inside = out[mask].astype(int)
    assert (inside[:, 0] == inside[:, 1]).all() and inside.std() > 5  # grey=1.0: grey, and not blank
