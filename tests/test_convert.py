"""Real conversion of a real (tiny) trained model, loaded by the real LiteRT interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from device.model.bundle import BundleError, load_bundle, pack
from device.model.classifier import Classifier
from testkit import PBC, REPO

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.tensorflow


def test_int8_bundle_round_trips_with_metadata(tiny_bundle):
    b = load_bundle(tiny_bundle)
    meta = b.metadata
    assert meta["task"] == "differential"
    assert meta["input"]["dtype"] == "int8" and meta["input"]["quantization"] == "int8"
    assert meta["input"]["size"] == 32
    assert [l["category"] for l in meta["labels"]].count("normal") == 5
    assert set(meta["metrics"]) == {"float", "int8"}
    assert 0 <= meta["parity"]["top1_agreement"] <= 1
    assert meta["parity"]["top1_agreement"] >= meta["parity"]["floor"]
    assert set(meta["parity"]["delta"]) >= {"balanced_accuracy", "macro_f1", "accuracy"}
    assert meta["datasets"][0]["licence"] == "CC BY 4.0" and meta["datasets"][0]["split_unit"] == "image"
    # the reference cells site calibration needs: validation cells, embeddings as wide as ood.npz's
    assert b.reference is not None and meta["reference"]["source"] == "validation split, int8"
    assert b.reference["embeddings"].shape == (meta["reference"]["cells"], b.ood["means"].shape[1])
    assert b.reference["probabilities"].shape[1] == len(b.labels) == len(set(b.reference["labels"].tolist()))
    assert "screening aid, not a diagnosis" in meta["model_card"]
    assert "review" in meta["thresholds"] and "ood" in meta["thresholds"]
    rows = b.files["test_files.csv"].decode().splitlines()
    assert rows[0] == "dataset,relpath,label,sha256,um_per_px,kind"
    # Figures count the cells the device's finder cut from the listed test images (single
    # platelets are below the finder's smallest nucleus and give none).
    assert len(rows) - 1 >= meta["metrics"]["int8"]["n"] >= 0.9 * (len(rows) - 1)
    assert all(r.endswith(",0.102,cell") for r in rows[1:])
    assert b.ood is not None and b.ood["means"].shape[0] == 8
    assert meta["versions"]["tensorflow"]


def test_int8_runs_in_litert_and_agrees_with_float(tiny_run, tiny_bundle):
    import keras

    from device.analysis.preprocess import normalize
    from training.data import load_records
    from training.evaluate import records_from_manifest

    b = load_bundle(tiny_bundle)
    clf = Classifier(b, threads=1)
    assert clf.runtime == "ai-edge-litert"
    test = [r for s, r in records_from_manifest(tiny_run) if s == "test"]
    x, y = load_records(test, b.preprocessing, b.labels)
    probs, emb = clf.raw(x)
    assert probs.shape == (len(x), 8) and emb is not None
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    float_probs = keras.models.load_model(tiny_run / "model.keras").predict(normalize(x, b.preprocessing), verbose=0)
    agreement = float((probs.argmax(1) == float_probs.argmax(1)).mean())
    # what the bundle recorded is what we measure again now
    assert agreement == pytest.approx(b.metadata["parity"]["top1_agreement"])
    bal = np.mean([(probs.argmax(1)[y == c] == c).mean() for c in range(8)])
    assert bal == pytest.approx(b.metadata["metrics"]["int8"]["balanced_accuracy"])


def test_parity_floor_refuses_a_bundle(tiny_run, tmp_path):
    from convert.build import ParityError, convert_run

    with pytest.raises(ParityError, match="agrees with the float model on only"):
        convert_run(tiny_run, out=tmp_path / "x.lkb", representative_count=16, parity_floor=1.01, log=lambda *_: None)
    assert not (tmp_path / "x.lkb").exists()


@pytest.mark.parametrize("variant", ["float16", "dynamic"])
def test_float_input_variants(tiny_run, tmp_path, variant):
    from convert.build import convert_run

    out = convert_run(tiny_run, out=tmp_path / f"{variant}.lkb", variant=variant, representative_count=16,
                      parity_floor=0.95, log=lambda *_: None)
    b = load_bundle(out)
    assert b.metadata["input"]["dtype"] == "float32" and b.metadata["input"]["quantization"] == variant
    assert b.metadata["parity"]["top1_agreement"] >= 0.95
    assert Classifier(b).raw(np.zeros((2, 32, 32, 3), np.uint8))[0].shape == (2, 8)


def _rewrite(bundle_path, tmp_path, change):
    with zipfile.ZipFile(bundle_path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    change(files)
    out = tmp_path / "bad.lkb"
    out.write_bytes(pack(files))
    return out


def test_truncated_bundle_is_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "trunc.lkb"
    bad.write_bytes(tiny_bundle.read_bytes()[: tiny_bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        load_bundle(bad)


def test_corrupt_model_is_refused_by_checksum(tiny_bundle, tmp_path):
    def flip(files):
        m = bytearray(files["model.tflite"])
        m[len(m) // 2] ^= 0xFF
        files["model.tflite"] = bytes(m)

    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(_rewrite(tiny_bundle, tmp_path, flip))


def test_corrupt_archive_member_is_refused(tiny_bundle, tmp_path):
    data = bytearray(tiny_bundle.read_bytes())
    with zipfile.ZipFile(tiny_bundle) as zf:
        info = zf.getinfo("model.tflite")
    data[info.header_offset + 200] ^= 0xFF  # inside the stored member's bytes
    bad = tmp_path / "flip.lkb"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bad)


def test_wrong_shape_and_label_count_are_refused(tiny_bundle, tmp_path):
    def wrong_size(files):
        meta = json.loads(files["metadata.json"])
        meta["preprocessing"]["input_size"] = meta["input"]["size"] = 64  # consistent metadata, wrong model
        files["metadata.json"] = json.dumps(meta).encode()

    with pytest.raises(BundleError, match="input shape .* does not match"):
        Classifier(load_bundle(_rewrite(tiny_bundle, tmp_path, wrong_size)))

    def fewer_labels(files):
        meta = json.loads(files["metadata.json"])
        meta["labels"] = meta["labels"][:5]
        files["metadata.json"] = json.dumps(meta).encode()

    # ood.npz's class means (8 rows) already disagree with 5 labels; without it the interpreter check would
    with pytest.raises(BundleError, match="8 classes but the bundle names 5 labels|one row per label"):
        Classifier(load_bundle(_rewrite(tiny_bundle, tmp_path, fewer_labels)))


def test_not_a_bundle_and_missing_members(tmp_path, tiny_bundle):
    junk = tmp_path / "junk.lkb"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(BundleError, match="not a Leukoscope model bundle"):
        load_bundle(junk)
    with pytest.raises(BundleError, match="lacks metadata.json"):
        load_bundle(_rewrite(tiny_bundle, tmp_path, lambda f: f.pop("metadata.json")))
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere.lkb")


def test_classify_command_prints_json_per_image(tiny_bundle):
    imgs = sorted((PBC / "lymphocyte").glob("*.jpg"))[:2]
    out = subprocess.run([sys.executable, "-m", "device.cli", "classify", "--bundle", str(tiny_bundle), "--json",
                          *map(str, imgs)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"] for r in rows] == list(map(str, imgs))
    for r in rows:
        assert {"label", "category", "probabilities"} <= set(r)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_model_info_names_the_file_and_refuses_junk(tiny_bundle, tmp_path):
    out = subprocess.run([sys.executable, "-m", "device.cli", "model", "info", "--bundle", str(tiny_bundle), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["path"] == str(tiny_bundle) and info["task"] == "differential"
    junk = tmp_path / "junk.lkb"
    junk.write_bytes(b"\0" * 100)
    out = subprocess.run([sys.executable, "-m", "device.cli", "model", "info", "--bundle", str(junk)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a Leukoscope model bundle" in out.stderr
