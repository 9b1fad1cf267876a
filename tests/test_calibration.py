"""Site calibration on real cells: the shipped screen bundle, its reference cells, AML-LMU cells (a lab it never
saw) through the device's path, a real SQLite store and the real runtime."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from testkit import AML, PBC, REPO


@pytest.fixture(scope="module")
def lab():
    """AML-LMU cells as the box would store them: embeddings (float16), labels, the bundle's probabilities."""
    from convert.reference import embed
    from device.model import vocabulary
    from device.model.bundle import load_bundle
    from training.datasets import AML_CLASSES, Record, read_aml_lmu

    bundle = load_bundle()
    recs = []
    for r in read_aml_lmu(AML).records:
        name = AML_CLASSES.get(r.relpath.split("/")[0])
        lab = vocabulary.task_label("screen", name) if name else None
        if lab:
            recs.append(Record(**{**r.__dict__, "label": lab}))
    emb, y, probs = embed(bundle, recs, threads=2)
    return bundle, emb.astype(np.float16).astype(np.float32), y.astype(int), probs


@pytest.fixture(scope="module")
def pbc():
    """Held-out-style PBC normal cells (the reference's own lab): a site where the bundle already does well."""
    from convert.reference import embed
    from device.model import vocabulary
    from device.model.bundle import load_bundle
    from training.datasets import read_pbc

    bundle = load_bundle()
    recs = [r for r in read_pbc(PBC).records
            if vocabulary.category_of(r.label) == "normal"]
    recs = [recs[i] for i in np.random.default_rng(4).choice(len(recs), 160, replace=False)]
    emb, y, probs = embed(bundle, recs, threads=2)
    return bundle, emb.astype(np.float16).astype(np.float32), y.astype(int), probs


def _reference(bundle):
    from device.calibration import Reference

    r = bundle.reference
    return Reference(r["embeddings"], r["labels"], r["probabilities"])


def _site(emb, y, probs, idx, per_sample=20, qualified=True):
    from device.calibration import SiteCells

    return SiteCells(emb[idx], y[idx], probs[idx], np.arange(len(idx)) // per_sample, np.full(len(idx), qualified))


@pytest.fixture(scope="module")
def _fair_fit(pbc):
    from device.calibration import fit_calibration

    bundle, emb, y, probs = pbc
    return fit_calibration(bundle, _reference(bundle), _site(emb, y, probs, np.arange(len(y))))


@pytest.fixture
def fair_fit(_fair_fit):
    """The calibration fitted on every PBC cell (about 13 s on 2 cores): fitted once per module, a copy per test
    (a test may change it)."""
    import copy

    return copy.deepcopy(_fair_fit)


def test_the_shipped_bundle_carries_its_reference_cells():
    from device.model.bundle import load_bundle

    b = load_bundle()
    ref = b.reference
    assert ref is not None and ref["embeddings"].shape == (b.metadata["reference"]["cells"], b.ood["means"].shape[1])
    blast = b.labels.index("blast")
    assert (ref["labels"] == blast).sum() == 150 and len(set(ref["labels"].tolist())) == len(b.labels)


def test_a_damaged_reference_member_is_refused(tmp_path):
    import io

    from device.model.bundle import BundleError, REFERENCE_MEMBER, default_bundle_path, load_bundle, pack

    b = load_bundle()
    buf = io.BytesIO()
    np.savez(buf, embeddings=np.zeros((5, 7), np.float16), labels=np.zeros(5, np.int16),
             probabilities=np.zeros((5, len(b.labels)), np.float16))
    width = b.ood["means"].shape[1]
    with pytest.raises(BundleError, match=rf"reference.npz embedding width 7 differs from ood.npz's \({width}\)"):
        load_bundle(data=pack({**b.files, REFERENCE_MEMBER: buf.getvalue()}))
    old = {k: v for k, v in b.files.items() if k != REFERENCE_MEMBER}
    assert load_bundle(data=pack(old)).reference is None  # an older bundle still loads
    assert default_bundle_path().is_file()


def test_too_few_cells_or_samples_are_refused(lab):
    from device.calibration import CalibrationRefused, MIN_CELLS, fit_calibration

    bundle, emb, y, probs = lab
    with pytest.raises(CalibrationRefused, match=f"too few reviewed cells: 50 from 3 samples; at least {MIN_CELLS}"):
        fit_calibration(bundle, _reference(bundle), _site(emb, y, probs, np.arange(50)))
    with pytest.raises(CalibrationRefused, match="from 2 samples"):
        fit_calibration(bundle, _reference(bundle), _site(emb, y, probs, np.arange(120), per_sample=60))


def test_a_bundle_without_reference_cells_cannot_be_calibrated(lab):
    from device.calibration import CalibrationRefused, fit_calibration

    bundle, emb, y, probs = lab
    with pytest.raises(CalibrationRefused, match="carries no reference cells.*add-reference"):
        fit_calibration(bundle, None, _site(emb, y, probs, np.arange(120)))


def test_operator_decided_blasts_do_not_teach(lab):
    from device.calibration.fit import usable

    bundle, emb, y, probs = lab
    site = _site(emb, y, probs, np.arange(len(y)), qualified=False)
    keep = usable(site, bundle.categories)
    blast = bundle.labels.index("blast")
    assert (y == blast).sum() == 22 and not keep[y == blast].any() and keep[y != blast].all()


def test_a_calibration_taught_that_blasts_are_normal_is_refused(lab):
    """Poisoned reviews: the reference blasts' own embeddings, decided 'neutrophil' by the site. The head learns it,
    its operating point must drop to keep the reference blasts' sensitivity, and the guard refuses it."""
    from device.calibration import CalibrationRefused, SiteCells, fit_calibration

    bundle, emb, y, probs = lab
    ref = _reference(bundle)
    blast = bundle.labels.index("blast")
    b = ref.y == blast
    normal = np.nonzero(bundle.labels.index("neutrophil") == y)[0]
    e = np.concatenate([ref.emb[b], emb[normal]])
    n = len(e)
    site = SiteCells(e, np.full(n, bundle.labels.index("neutrophil")), np.concatenate([ref.probs[b], probs[normal]]),
                     np.arange(n) % 8, np.ones(n, bool))
    with pytest.raises(CalibrationRefused, match="refused: .*(blast sensitivity|called blast or sent to review|"
                                                 "more of this box's held-back normal cells)"):
        fit_calibration(bundle, ref, site)


def test_on_aml_lmu_the_calibration_is_refused_for_calling_more_normal_cells_blast(lab):
    """Measured, not wished: on AML-LMU's cells the re-fitted head calls more held-back normal cells blast than the
    bundle does (screen 2.0: 6 of 63 against 2; screen 3.0: 10 of 63 against 0); the guard keeps the bundle's
    decisions."""
    from device.calibration import CalibrationRefused, fit_calibration

    bundle, emb, y, probs = lab
    with pytest.raises(CalibrationRefused, match=r"more of this box's held-back normal cells blast \(\d+ of 63 "
                                                 r"instead of \d+\)"):
        fit_calibration(bundle, _reference(bundle), _site(emb, y, probs, np.arange(len(y))))


def test_a_fair_calibration_is_fitted_judged_and_keeps_the_reference_sensitivity(pbc, fair_fit):
    bundle, emb, y, probs = pbc
    cal = fair_fit
    after = cal.figures["after"]["reference"]
    assert after["blast_sensitivity"]["value"] >= 0.97
    assert after["screen_sensitivity"]["k"] >= cal.figures["before"]["reference"]["screen_sensitivity"]["k"]
    assert cal.n_cells == len(y) and cal.fit_seconds < 60
    assert cal.name.startswith(f"calibrated on {len(y)} cells reviewed on this box, 20")


def _store_with(tmp_path, cal, bundle):
    from device.records import calibrations
    from device.records.store import Store

    store = Store(tmp_path / "data")
    cid = calibrations.propose(store, cal, bundle, "admin")
    return store, cid


def test_rollback_restores_the_exact_previous_decisions(pbc, tmp_path):
    from device.calibration import fit_calibration
    from device.model.classifier import Classifier
    from device.records import calibrations
    from device.records.store import Store
    from training.data import load_cells
    from training.datasets import read_pbc

    bundle, emb, y, probs = pbc
    ref = _reference(bundle)
    from device.calibration import CalibrationRefused

    def accepted(n: int, seeds) -> object:
        """The first draw of n reviewed cells whose calibration the guards accept (this test is about roll-back,
        not about the guards, which may refuse a draw that adds a single false call)."""
        for seed in seeds:
            try:
                return fit_calibration(bundle, ref, _site(emb, y, probs, np.random.default_rng(seed).permutation(len(y))[:n]))
            except CalibrationRefused:
                continue
        pytest.fail(f"no accepted calibration from {n} cells in seeds {list(seeds)}")

    # (draws 1 and 2 of 110 cells are refused by screen 3.0's guards: 9 s each, so the search starts at 3)
    cal_a, cal_b = accepted(110, range(3, 21)), accepted(120, range(21, 41))
    store = Store(tmp_path / "data")
    a = calibrations.propose(store, cal_a, bundle, "admin")
    calibrations.decide(store, a, True, "admin")
    crops = load_cells(read_pbc(PBC).records[:12], bundle.preprocessing,
                       list(bundle.labels)).x
    clf = Classifier(bundle)

    def decisions():
        clf.calibration = calibrations.load_active(store, bundle)[0]
        return [(p.label, p.flag, p.probabilities) for p in clf.classify(crops)]

    plain = [(p.label, p.flag, p.probabilities) for p in Classifier(bundle).classify(crops)]
    with_a = decisions()
    assert with_a != plain  # the calibration changes something
    b = calibrations.propose(store, cal_b, bundle, "admin")
    calibrations.decide(store, b, True, "admin")
    with_b = decisions()
    assert with_b != with_a
    assert calibrations.rollback(store, bundle.sha256, "admin") == a
    assert decisions() == with_a  # exactly: same labels, flags and probabilities
    assert calibrations.rollback(store, bundle.sha256, "admin") is None
    assert decisions() == plain
    actions = [r["action"] for r in store.connect().execute("SELECT action FROM audit ORDER BY id")]
    assert actions.count("calibration-accepted") == 2 and actions.count("calibration-rolled-back") == 2


def test_rejected_calibration_is_never_used(pbc, fair_fit, tmp_path):
    from device.records import calibrations

    bundle = pbc[0]
    store, cid = _store_with(tmp_path, fair_fit, bundle)
    calibrations.decide(store, cid, False, "admin")
    assert calibrations.load_active(store, bundle) == (None, None)
    with pytest.raises(calibrations.CalibrationError, match="not waiting"):
        calibrations.decide(store, cid, True, "admin")


@pytest.mark.parametrize("damage", ["tampered", "other-bundle"])
def test_a_tampered_or_mismatched_calibration_is_refused_at_start(pbc, fair_fit, tmp_path, damage):
    import hashlib

    from device.box.runtime import build_runtime
    from device.calibration import dumps
    from device.config import AppConfig
    from device.records import calibrations

    bundle = pbc[0]
    cal = fair_fit
    store, cid = _store_with(tmp_path, cal, bundle)
    calibrations.decide(store, cid, True, "admin")
    row = calibrations.get(store, cid)
    path = store.path(row["file_path"])
    store.release_lock()
    cfg = AppConfig()
    cfg.storage.data_dir = str(tmp_path / "data")
    shutil.copytree(REPO / "device/assets/fields", tmp_path / "fields")
    cfg.camera.folder = str(tmp_path / "fields")

    rt = build_runtime(cfg, start=False)  # intact: used
    assert rt.classifier.calibration is not None and rt.classifier.calibration.record_id == cid
    rt.stop()
    if damage == "tampered":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        why = "changed on disk"
    else:  # a file fitted for another model, with the database's checksum made to match it
        cal.bundle_sha256 = "0" * 64
        data = dumps(cal)
        path.write_bytes(data)
        rt_store = __import__("device.records.store", fromlist=["Store"]).Store(tmp_path / "data")
        with rt_store.transaction() as tx:
            tx.execute("UPDATE calibrations SET file_sha256 = ? WHERE id = ?", (hashlib.sha256(data).hexdigest(), cid))
        rt_store.close()
        why = "fitted for another model"
    rt = build_runtime(cfg, start=False)
    try:
        assert rt.classifier.calibration is None
        assert any(why in p for p in rt.model_problems), rt.model_problems
        audit = rt.store.connect().execute("SELECT detail FROM audit WHERE action = 'calibration-refused'").fetchall()
        assert audit and why in audit[-1]["detail"]
    finally:
        rt.stop()


def test_site_refer_rule_counts_excess_over_false_calls():
    from device.records.counts import SITE_REFER, SITE_UNDECIDED, CountedCell, summarize

    def sample(blasts, normals, undecided=0):
        return ([CountedCell("blast", "malignant")] * blasts + [CountedCell("neutrophil", "normal")] * normals
                + [CountedCell("neutrophil", "normal", flag="low-confidence")] * undecided)

    site = {"false_call_rate": 0.05, "name": "calibrated on 400 cells reviewed on this box, 2026-12-01"}
    # 5 blast calls in 100 at a 5 % false-call rate: what false calls explain; the old rule referred at 3
    s = summarize(sample(5, 95), site=site)
    assert not any(f["level"] == "refer" for f in s.flags)
    assert s.site["expected_false"] == 5.0 and s.site["p_value"] > 0.3
    assert any(f["level"] == "refer" for f in summarize(sample(5, 95)).flags)
    s = summarize(sample(13, 87), site=site)
    assert [f["message"] for f in s.flags if f["level"] == "refer"] == [SITE_REFER]
    assert s.site["p_value"] < 0.01
    # 20 % message only when the test also refers
    s = summarize(sample(30, 70), site=site)
    assert len([f for f in s.flags if f["level"] == "refer"]) == 2
    # undecided cells: never counted; the range and a flag say what deciding them could do
    s = summarize(sample(4, 46, undecided=50), site={"false_call_rate": 0.01})
    assert s.leukocytes == 50 and s.undecided == 50
    assert s.malignant_range == (0.04, 0.54)
    assert s.to_dict()["fraction_of"] == "4 blast(s) in 50 decided white cells; 50 cell(s) not yet decided"
    assert any(f["message"] == SITE_REFER for f in s.flags)  # 4 in 50 at 1 %: already more than false calls
    s = summarize(sample(1, 49, undecided=50), site={"false_call_rate": 0.01})
    assert not any(f["level"] == "refer" for f in s.flags)
    assert any(f["message"] == SITE_UNDECIDED for f in s.flags)


def test_binomial_tail_matches_the_direct_sum():
    from math import comb

    from device.calibration.referral import binomial_tail

    for b, n, p in ((0, 10, 0.1), (3, 100, 0.02), (7, 100, 0.02), (50, 100, 0.5)):
        direct = sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(b, n + 1))
        assert abs(binomial_tail(b, n, p) - direct) < 1e-12


@pytest.mark.bench
def test_site_calibration_bench_fast():
    from tests.test_bench import run_bench

    r = run_bench("bench.site_calibration", "--fast")
    assert set(r["labs"]) == {"aml-lmu", "jiangxi"} and r["fit_seconds_2000"] <= 60
    row = r["labs"]["aml-lmu"]["k"]["100"]
    for key in ("normal_called_blast", "normal_review", "screen_sensitivity", "referred_0", "referred_5", "referred_20"):
        assert key in row
    assert r["labs"]["jiangxi"]["k"]["0"]["screen_sensitivity"] is None  # no blasts in that lab


def test_backup_and_restore_keep_the_calibration_in_use(pbc, fair_fit, tmp_path):
    from device.records import calibrations
    from device.records.backup import backup, restore
    from device.records.store import Store

    bundle = pbc[0]
    store, cid = _store_with(tmp_path, fair_fit, bundle)
    calibrations.decide(store, cid, True, "admin")
    store.close()
    backup(tmp_path / "data", tmp_path / "bk")
    restore(tmp_path / "bk", tmp_path / "restored")
    cal, problem = calibrations.load_active(Store(tmp_path / "restored"), bundle)
    assert problem is None and cal.record_id == cid
