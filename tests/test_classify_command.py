"""``leukoscope classify`` takes the device's path: the same central cell, framing, window and words as
``analyze``, for single-cell images of several labs (real bundle, real LiteRT, in process)."""
from __future__ import annotations

import json

import pytest

from device.analysis.cells import FoundCell, central_cell
from device.model.analyzer import AnalyzedCell, cell_json
from device.cli import main
from device.model import vocabulary
from device.model.bundle import default_bundle_path
from device.model.classifier import CellPrediction
from testkit import AML, JIANGXI, JIANGXI_UM_PER_PX, MLL, PBC, REPO

SOURCES = {  # images, stated pixel size
    "pbc": ([sorted((PBC / c).glob("*.jpg"))[3] for c in ("lymphocyte", "neutrophil", "monocyte", "eosinophil")], 0.102),
    "mll": ([sorted((MLL / c).glob("*.jpg"))[5] for c in ("BLA", "LYT", "MON")], 0.088),
    "aml": ([sorted((AML / c).glob("*.png"))[0] for c in ("MYO", "LYT", "NGS")], 0.075),
    "jiangxi": ([JIANGXI / "images" / f"{n:03d}.bmp" for n in (1, 15, 30, 100)], JIANGXI_UM_PER_PX),
}


def _run(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("given_scale", [True, False])
def test_classify_and_analyze_agree_on_every_cell(source, given_scale, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    images, um = SOURCES[source]
    paths = [str(p) for p in images]
    scale = ["--um-per-px", str(um)] if given_scale else []
    bundle = ["--bundle", str(default_bundle_path())]
    analysed = _run(capsys, "analyze", "--json", "--skip-qc", *bundle, *scale, *paths)
    classified = _run(capsys, "classify", "--json", *bundle, *scale, *paths)
    assert [r["path"] for r in classified] == paths
    found = 0
    for a, c in zip(analysed, classified):
        assert c["scale"] == a["scale"] and c["model"] == a["model"]
        boxes = [FoundCell(tuple(x["box"]), tuple(x["box"]), 0, 0.0) for x in a["cells"]]
        central = central_cell(boxes, (a["height"], a["width"]))
        if central is None:
            assert c["label"] is None and "no white cell" in c["note"]
            continue
        found += 1
        want = next(x for x in a["cells"] if tuple(x["box"]) == central.box)
        assert {k: c[k] for k in want} == want  # box, label, category, probability, flag, probabilities
        if c["flag"]:
            assert c["label"] == c["category"] == vocabulary.UNCERTAIN
    assert found >= len(paths) - 1


def test_a_flagged_cell_is_uncertain_never_its_raw_category():
    p = CellPrediction("blast", "malignant", 0.41, {"blast": 0.41, "lymphocyte": 0.39}, "low-confidence", None)
    out = cell_json(AnalyzedCell(FoundCell((1, 2, 30, 40), (5, 6, 20, 30), 100, 60.0), None, p))
    assert out["label"] == out["category"] == vocabulary.UNCERTAIN and out["predicted"] == "blast"
    assert out["box"] == [1, 2, 30, 40] and out["flag"] == "low-confidence"


def test_every_model_command_uses_the_model_of_the_data_folder(capsys, monkeypatch, tmp_path):
    """model info, classify, analyze and model test take the bundle the device uses (the data folder's installed
    model), not the shipped default; --bundle names another; a bad --bundle is refused, never replaced."""
    from device.model.bundle import load_bundle
    from device.model.installed import install_builtin

    data = tmp_path / "data"
    install_builtin("differential", data)  # what Settings' switch does
    differential = load_bundle(data / "models" / "current.lkb")
    image = str(SOURCES["pbc"][0][0])
    for where in (["--data-dir", str(data)], []):  # given, then the configured one (STATE_DIRECTORY)
        monkeypatch.setenv("STATE_DIRECTORY", str(data if not where else tmp_path / "elsewhere"))
        capsys.readouterr()
        assert main(["model", "info", "--json", *where]) == 0
        info = json.loads(capsys.readouterr().out)  # indented JSON: one object over many lines
        assert (info["name"], info["path"]) == ("pbc-differential", str(data / "models" / "current.lkb"))
        assert _run(capsys, "classify", "--json", *where, image)[0]["model"] == differential.name
        assert _run(capsys, "analyze", "--json", "--skip-qc", *where, image)[0]["model"] == differential.name
        capsys.readouterr()
        assert main(["model", "test", "--json", "--limit", "1", *where]) == 0
        recorded = json.loads(capsys.readouterr().out)["recorded_balanced_accuracy"]
        assert recorded == differential.metadata["metrics"]["int8"]["balanced_accuracy"]
    other = _run(capsys, "classify", "--json", "--bundle", str(default_bundle_path()), image)[0]
    assert other["model"] == load_bundle(default_bundle_path()).name != differential.name
    junk = tmp_path / "junk.lkb"
    junk.write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert main(["classify", "--json", "--bundle", str(junk), image]) == 2
    assert "not a Leukoscope model bundle" in capsys.readouterr().err
