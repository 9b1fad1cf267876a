"""Real conversion of a real (tiny) trained model, loaded by the real LiteRT interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

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


def _main_json(capsys, *argv):
    from device.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_model_test_runs_on_every_shipped_bundle_with_no_options(capsys, monkeypatch, tmp_path):
    """`leukoscope model test` finds every recorded test file through the one data-root map (the marrow rows in
    their -subset folder) with no --data-root, and reproduces the figure recorded in the bundle."""
    from device.model.bundle import builtin_bundle_paths, default_bundle_path

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))  # an empty data folder: the device uses the default
    r = _main_json(capsys, "model", "test", "--json")  # no options at all: the whole default bundle
    default = load_bundle(default_bundle_path())
    assert r["files_with_other_content"] == [] and r["n"] >= 0.95 * len(default.files["test_files.csv"].splitlines())
    assert r["balanced_accuracy"] == pytest.approx(r["recorded_balanced_accuracy"], abs=0.003)
    others = [p for p in builtin_bundle_paths().values() if p != default_bundle_path()]
    others += sorted((REPO / "bench" / "reference").glob("*.lkb"))
    assert len(others) >= 2
    for path in others:
        b = load_bundle(path)
        # every row is found and checked before the first 3 images of each label are classified
        r = _main_json(capsys, "model", "test", "--json", "--bundle", str(path), "--limit", "3")
        assert r["files_with_other_content"] == [], path
        assert 0 < r["n"] <= 3 * len(b.labels) + 3, path
        assert r["recorded_balanced_accuracy"] == b.metadata["metrics"][b.metadata["input"]["quantization"]][
            "balanced_accuracy"]


def test_every_recorded_row_resolves_through_the_one_map():
    from device.model.bundle import builtin_bundle_paths
    from training.recorded import SHARED_DATA, data_root, recorded_files

    assert data_root("bone-marrow-mll") == SHARED_DATA / "bone-marrow-mll-subset"
    assert data_root("bone-marrow-mll", {"bone-marrow-mll": "/elsewhere"}) == Path("/elsewhere")
    for path in [*builtin_bundle_paths().values(), *(REPO / "bench" / "reference").glob("*.lkb")]:
        rows = recorded_files(load_bundle(path))
        assert rows and [f.problem() for f in rows] == [None] * len(rows), path
        assert {f.record.dataset for f in rows} <= {"pbc-normal-wbc", "bone-marrow-mll"}


def test_model_test_names_the_option_for_a_missing_file(capsys, tmp_path):
    from device.cli import main

    capsys.readouterr()
    code = main(["model", "test", "--bundle", str(REPO / "device/assets/models/default.lkb"),
                 "--data-root", f"bone-marrow-mll={tmp_path}"])
    assert code == 2 and "pass --data-root bone-marrow-mll=PATH" in capsys.readouterr().err


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _changed(path, change) -> bytes:
    files = _members(path)
    meta = json.loads(files["metadata.json"])
    change(meta)
    files["metadata.json"] = json.dumps(meta).encode()
    return pack(files)


DEFAULT = REPO / "device/assets/models/default.lkb"


@pytest.mark.parametrize("change, says", [
    (lambda m: m.pop("task"), r"^bundle: metadata.json lacks 'task'$"),
    (lambda m: m.update(format="leukoscope-bundle/0"), r"^bundle: unsupported bundle format 'leukoscope-bundle/0' \(this"),
    (lambda m: m.update(name=" "), r"^bundle: metadata.json: 'name' must be a non-empty text of at most 100 characters$"),
    (lambda m: m.update(labels=[]), r"^bundle: the bundle names no labels$"),
    (lambda m: m["labels"].append(dict(m["labels"][0])), r"metadata.json: label 'basophil' appears twice$"),
    (lambda m: m["input"].update(size=True), r"'input.size' must be a whole number from 8 to 1024$"),
    (lambda m: m["input"].update(dtype="int4"), r"'input.dtype' 'int4' is not int8, uint8, float32 or float16$"),
    (lambda m: m["thresholds"].update(ood=5.0), r"threshold 'ood' of a per-class calibration is a ratio near 1$"),
    (lambda m: m["preprocessing"].update(input_size=64), r"pre-processing input size 64 differs from input.size 128$"),
    (lambda m: m["preprocessing"].update(zoom=2), r"^bundle: pre-processing settings are invalid \(unknown pre-processing"),
    (lambda m: m.update(outputs={"probabilities": {}}), r"'outputs' must map each output to an object with a 'name'$"),
    (lambda m: m["input"].pop("dtype"), r"'input.dtype' None is not int8, uint8, float32 or float16$"),
    (lambda m: m["thresholds"].update(review="x"), r"metadata.json: threshold 'review' must be a number, not 'x'$"),
    (lambda m: m.update(sha256=[]), r"'sha256' must map 'model.tflite' to a 64-digit hex checksum$"),
    (lambda m: m["labels"].__setitem__(0, {"category": "normal"}), r"each label must be an object with a 'name'$"),
    # (the parts that only describe the model are left out, not refused: see the end of this file)
])
def test_the_metadata_schema_refuses_in_the_operators_words(change, says):
    with pytest.raises(BundleError, match=says):
        load_bundle(data=_changed(DEFAULT, change))


def test_the_schema_passes_unknown_keys_through_and_types_the_figures():
    b = load_bundle(data=_changed(DEFAULT, lambda m: m.update(from_a_newer_converter={"x": [1, 2]})))
    assert b.metadata["from_a_newer_converter"] == {"x": [1, 2]}  # kept whole: a copy writes it back unchanged
    shipped = load_bundle(DEFAULT)
    assert b.metadata == {**shipped.metadata, "from_a_newer_converter": {"x": [1, 2]}}
    m = shipped.meta
    assert (m.cross_lab.plain.review_per_100, m.cross_lab.plain.blast_per_1000) == (82, 4)
    assert m.test_metrics.balanced_accuracy == shipped.metadata["metrics"]["int8"]["balanced_accuracy"]
    assert m.thresholds.malignant == shipped.thresholds["malignant"] and m.preprocessing == shipped.preprocessing


# ---- what only describes the model: left out with a note, never a refused bundle ---------------------------------

DESCRIPTIVE_DAMAGE = [
    ("cross_lab.plain", lambda m: m["cross_lab"]["plain"].update(review_per_100="many")),
    ("cross_lab", lambda m: m.update(cross_lab="some text")),
    ("parity", lambda m: m.update(parity={})),
    ("trained_on", lambda m: m.update(trained_on=["pbc", "mll"])),
    ("not_validated_on", lambda m: m.update(not_validated_on={"stains": "other stains"})),
    ("metrics.note", lambda m: m["metrics"].update(note="text")),
    ("metrics.int8", lambda m: m["metrics"]["int8"].update(n="many")),
    ("datasets.0", lambda m: m["datasets"].__setitem__(0, {"licence": "x"})),
    ("datasets", lambda m: m.update(datasets="pbc")),
    ("split", lambda m: m.update(split="image")),
    ("model_card", lambda m: m.update(model_card=3)),
    ("created_at", lambda m: m.update(created_at=20261206)),
    ("model", lambda m: m.update(model=1)),
    ("ood_calibration", lambda m: m.update(ood_calibration=1)),
    ("labels.0.display", lambda m: m["labels"][0].update(display=5)),
    ("input.quantization", lambda m: m["input"].update(quantization=8)),
    ("input.scale", lambda m: m["input"].update(scale="x")),
]


@pytest.mark.parametrize("where, change", DESCRIPTIVE_DAMAGE, ids=[w for w, _ in DESCRIPTIVE_DAMAGE])
def test_a_malformed_descriptive_part_is_left_out_and_the_bundle_loads(where, change, caplog):
    """A bundle that loaded before the schema existed still loads when a part that only describes the model (its
    card, datasets, figures, dates) is malformed: the part is left out, a warning names it, `model info` shows it,
    and the result page still renders (the device must not fall back to another model over a description)."""
    from flask import Flask
    from flask_babel import Babel

    from device.model.bundle import summary
    from device.web.words import limits_lead, model_limits

    with caplog.at_level("WARNING", logger="leukoscope.model"):
        b = load_bundle(data=_changed(DEFAULT, change))
    assert b.name == load_bundle(DEFAULT).name and b.labels == load_bundle(DEFAULT).labels
    assert len(b.meta.notes) == 1 and f"{where} was left out" in b.meta.notes[0], b.meta.notes
    top = where.split(".")[0]
    assert f"'{top}" in b.meta.notes[0] or "label's 'display'" in b.meta.notes[0]
    assert any(f"{where} was left out" in r.getMessage() for r in caplog.records)
    assert summary(b)["notes"] == b.meta.notes
    for note in b.meta.notes:  # an operator's sentence, never the validator's wording
        assert "should be" not in note and "valid string" not in note and "Input" not in note
    app = Flask(__name__)
    Babel(app)
    with app.test_request_context("/"):
        rows = model_limits(b)
        limits_lead(b)
    assert [title for title, _, _ in rows][:1] == ["Trained on"]


def test_only_the_malformed_entry_is_left_out():
    b = load_bundle(data=_changed(DEFAULT, lambda m: m["metrics"].update(note="text")))
    shipped = load_bundle(DEFAULT)
    assert b.meta.test_metrics == shipped.meta.test_metrics  # the int8 figures stay
    assert b.metadata == {**shipped.metadata, "metrics": {**shipped.metadata["metrics"], "note": "text"}}  # kept whole
    b = load_bundle(data=_changed(DEFAULT, lambda m: m["cross_lab"]["plain"].update(review_per_100=82.5)))
    assert b.meta.cross_lab.plain is None and b.meta.cross_lab.text == shipped.meta.cross_lab.text


@pytest.mark.parametrize("change", [
    lambda m: m["input"].update(size="128"), lambda m: m["labels"][0].update(category="weird"),
    lambda m: m.update(outputs=[]), lambda m: m["thresholds"].update(review=True), lambda m: m.update(name=5),
    lambda m: m["sha256"].update({"model.tflite": "abc"}), lambda m: m.update(preprocessing=[]),
])
def test_what_the_model_needs_is_still_refused_in_operator_words(change):
    with pytest.raises(BundleError) as err:
        load_bundle(data=_changed(DEFAULT, change))
    assert "should be" not in str(err.value) and "valid" not in str(err.value).replace("invalid", "")


def test_an_unforeseen_error_names_the_field_not_the_validators_words():
    """A check without its own sentence (none is expected today) still reads as an operator's sentence."""
    from device.model.metadata import _refusal

    err = {"type": "string_type", "loc": ("outputs", "probabilities", "name"), "msg": "Input should be a valid string"}
    assert str(_refusal(err)) == "metadata.json: 'outputs.probabilities.name' has a value this device cannot use"


def _limits(bundle):
    from flask import Flask
    from flask_babel import Babel

    from device.web.words import model_limits

    app = Flask(__name__)
    Babel(app)
    with app.test_request_context("/"):
        return {title: text for title, text, _ in model_limits(bundle)}


def test_an_untyped_bundle_is_described_by_its_own_card_never_by_todays_prose():
    """The 8-class bundle carries no typed 'trained_on' or 'not_validated_on' (written before they were typed): the
    page shows its own card's words, so an edited card shows its edits; with no card, the rows are left out."""
    path = REPO / "device/assets/models/differential.lkb"
    shown = _limits(load_bundle(path))
    assert shown["Trained on"] == ("pbc-normal-wbc (CC BY 4.0). Split by image (the data has no subject ids, so cells "
                                   "of one donor may be on both sides).")
    assert shown["Never validated on"].startswith("Validated only on held-out images of the same dataset")
    assert "it is not a validated leukaemia screen" in shown["Never validated on"]
    assert shown["Measured"] == "balanced accuracy 0.974, macro F1 0.972 on 816 held-out cells"

    files = _members(path)
    meta = json.loads(files["metadata.json"])
    meta["model_card"] = ("# pbc-differential\n\n- Trained on: OUR OWN 2025 CLINIC SET\n\n## What it was validated on\n"
                          "Three clinics, held-out images.\n")
    files["metadata.json"] = json.dumps(meta).encode()
    edited = _limits(load_bundle(data=pack(files)))
    assert edited["Trained on"] == "OUR OWN 2025 CLINIC SET"
    assert edited["Never validated on"] == "Three clinics, held-out images."

    meta["model_card"] = "# pbc-differential\n"
    files["metadata.json"], files["MODEL_CARD.md"] = json.dumps(meta).encode(), b""
    bare = _limits(load_bundle(data=pack(files)))
    assert "Never validated on" not in bare  # never today's prose in the bundle's name
    assert bare["Trained on"] == "pbc-normal-wbc"  # its own datasets' names, as before the schema


def test_convert_writes_both_limits_rows_for_every_task_and_never_none():
    from convert.build import card_fields, trained_on_line

    sources = [{"name": "pbc-normal-wbc", "licence": None}]
    for task in ("differential", "screen", "other"):
        out = card_fields(task, sources, "image", {"n": 10})
        assert out["trained_on"].startswith("pbc-normal-wbc") and out["not_validated_on"], task
        assert "**" not in out["not_validated_on"] and "None" not in out["trained_on"]
    assert trained_on_line([("pbc-normal-wbc", None)], None) == "pbc-normal-wbc."
    assert trained_on_line([("a", "CC BY 4.0"), ("b", None)], "subject") == "a (CC BY 4.0); b. Split by subject."
