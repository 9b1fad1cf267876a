"""A bundle's metadata, read by the device: the typed schema refuses in the operator's words what the model needs
to run, leaves out (with a note) what only describes it, and `leukoscope model test` runs on every shipped bundle.
No TensorFlow: these run on the shipped bundles, in the quick loop too."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from device.model.bundle import BundleError, load_bundle, pack
from testkit import REPO


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
    if where in ("trained_on", "not_validated_on", "model_card", "datasets", "cross_lab"):
        assert getattr(b.meta, where) is None  # left out, not shown in another shape
    shown = " ".join(f"{title} {text}" for title, text, _ in rows)
    assert "['pbc', 'mll']" not in shown and "some text" not in shown and "other stains" not in shown


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


@pytest.mark.parametrize("where, change", [d for d in DESCRIPTIVE_DAMAGE if d[0] in ("trained_on", "cross_lab", "parity")],
                         ids=["trained_on", "cross_lab", "parity"])
def test_a_box_keeps_its_installed_model_over_a_malformed_description(where, change, tmp_path):
    """The device's own lookup at start-up takes the installed bundle, not the shipped default, when only its
    description is malformed."""
    from device.model.installed import load_active, models_dir

    d = models_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "current.lkb").write_bytes(_changed(DEFAULT, lambda m: (change(m), m.update(version="9.9-site"))))
    bundle, _clf, problems = load_active("", tmp_path)
    assert problems == [] and bundle.meta.version == "9.9-site" and bundle.meta.notes
