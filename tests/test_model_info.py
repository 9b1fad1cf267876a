"""`leukoscope model info` and `model test` on bundles that load but are not fit to run, and the one rule for which
config file a command reads (issue 22's review)."""
from __future__ import annotations

import json
import zipfile

import pytest

from device.model.bundle import pack
from testkit import REPO

DIFFERENTIAL = REPO / "device/assets/models/differential.lkb"


def _changed(path, change):
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(files["metadata.json"])
    change(meta, files)
    files["metadata.json"] = json.dumps(meta).encode()
    return pack(files)


def _run(capsys, *argv):
    from device.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_info_shows_a_bundle_that_fails_its_trial_run_then_the_refusal(capsys, tmp_path):
    bad = tmp_path / "float-says-the-card.lkb"  # loads (metadata and checksum fine), but the model's input is int8
    bad.write_bytes(_changed(DIFFERENTIAL, lambda m, f: m["input"].update(dtype="float32")))
    code, out, err = _run(capsys, "model", "info", "--bundle", str(bad))
    assert code == 2
    assert "model:    pbc-differential 1.2 (differential, int8" in out and "A screening aid" in out
    assert err.strip() == ("leukoscope model: float-says-the-card.lkb"
                           ": refused by the trial classification: model input type int8 does not match the "
                           "bundle's float32")
    code, out, err = _run(capsys, "model", "info", "--json", "--bundle", str(bad))
    assert code == 2 and json.loads(out)["name"] == "pbc-differential" and "float-says-the-card.lkb" in err
    code, out, err = _run(capsys, "model", "info", "--bundle", str(DIFFERENTIAL))
    assert code == 0 and err == "" and "refused" not in out


def test_model_info_prints_nothing_as_none_and_shows_what_was_left_out(capsys, tmp_path):
    def change(m, f):
        for d in m["datasets"]:
            d.pop("licence")
        m["metrics"]["int8"]["balanced_accuracy"] = None
        m["parity"] = {}

    odd = tmp_path / "odd.lkb"
    odd.write_bytes(_changed(DIFFERENTIAL, change))
    code, out, err = _run(capsys, "model", "info", "--bundle", str(odd))
    assert code == 0, err
    assert "data:     pbc-normal-wbc, split by image\n" in out and "None" not in out
    assert "test int8: balanced accuracy not recorded, macro F1 0.9720 (n=816)" in out
    assert "note:     metadata.json: 'parity' must be an object with 'top1_agreement'; parity was left out" in out


def test_every_command_reads_the_appliances_config_when_none_is_given(capsys, monkeypatch, tmp_path):
    """Without --config a command reads /etc/leukoscope/config.toml when it exists, as the installed serve does, so
    `model info` describes the model the appliance really uses."""
    import device.cli as cli

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "data"))
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", tmp_path / "absent.toml")
    assert cli.config_path(None) is None
    code, out, _ = _run(capsys, "model", "info", "--json")
    assert code == 0 and json.loads(out)["task"] == "screen"  # the shipped default
    system = tmp_path / "config.toml"
    system.write_text(f'[model]\nbundle = "{DIFFERENTIAL}"\n')
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", system)
    assert cli.config_path(None) == system and cli.config_path("x.toml") == "x.toml"
    code, out, _ = _run(capsys, "model", "info", "--json")
    assert code == 0 and json.loads(out)["task"] == "differential"
    given = tmp_path / "given.toml"
    given.write_text("[model]\nthreads = 1\n")
    code, out, _ = _run(capsys, "model", "info", "--json", "--config", str(given))
    assert code == 0 and json.loads(out)["task"] == "screen"  # --config wins


# ---- `leukoscope model test` on what it cannot test: one line each, never a traceback --------------------------

@pytest.mark.parametrize("limit", ["0", "-1", "two"])
def test_model_test_accepts_only_a_positive_limit(capsys, limit):
    from device.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["model", "test", "--bundle", str(DIFFERENTIAL), "--limit", limit])
    assert ex.value.code == 2 and "argument --limit:" in capsys.readouterr().err


def test_model_test_says_not_recorded_for_a_bundle_without_its_variants_figures(capsys, tmp_path):
    path = tmp_path / "nometrics.lkb"
    path.write_bytes(_changed(DIFFERENTIAL, lambda m, f: m.pop("metrics")))
    code, out, err = _run(capsys, "model", "test", "--bundle", str(path), "--limit", "1")
    assert code == 0, err
    assert out.startswith("8 cells from the recorded test images: balanced accuracy ")
    assert out.rstrip().endswith("(recorded in the bundle: not recorded)")


def test_model_test_refuses_in_one_line_when_nothing_is_left_to_classify(capsys, tmp_path):
    def changed_content(m, f):
        lines = f["test_files.csv"].decode().splitlines()
        head, rows = lines[0], lines[1:4]
        f["test_files.csv"] = "\n".join([head] + [r.replace(r.split(",")[3], "0" * 64) for r in rows]).encode()

    path = tmp_path / "changed.lkb"
    path.write_bytes(_changed(DIFFERENTIAL, changed_content))
    code, out, err = _run(capsys, "model", "test", "--bundle", str(path))
    assert code == 2 and out == ""
    assert err == ("leukoscope model: changed.lkb: none of its 3 recorded test files is left to classify (3 differ "
                   "from the record)\n")
    path = tmp_path / "notests.lkb"
    path.write_bytes(_changed(DIFFERENTIAL, lambda m, f: f.pop("test_files.csv")))
    code, out, err = _run(capsys, "model", "test", "--bundle", str(path))
    assert code == 2 and err == "leukoscope model: notests.lkb: the bundle records no test files, so there is nothing " \
                                "to test\n"


# ---- any value in a descriptive part: the bundle's metadata still parses, with an operator's note -----------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=8)
_RAW = json.loads(zipfile.ZipFile(REPO / "device/assets/models/default.lkb").read("metadata.json"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["datasets", "metrics", "parity", "cross_lab", "model_card", "split", "trained_on",
                            "created_at", "ood_calibration", "labels.0.display", "input.quantization", "input.scale",
                            "cross_lab.plain", "metrics.int8", "datasets.0", "not_validated_on", "model"]), value=_JSON)
def test_any_value_in_a_descriptive_part_parses_with_a_note(key, value):
    import copy

    from device.model.metadata import parse

    raw = copy.deepcopy(_RAW)
    *parents, last = [int(p) if p.isdigit() else p for p in key.split(".")]
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    meta = parse(raw)  # never refused over a description
    assert meta.name == "screen" and len(meta.labels) == len(_RAW["labels"])
    for note in meta.notes:
        assert note.startswith("metadata.json: ") and note.endswith(" was left out")
        assert "should be" not in note and "Input" not in note
