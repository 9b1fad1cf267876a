"""Issue 22's review: names that were still written in a second place (the data folders in testkit, the camera
back-ends in `leukoscope cameras`) now come from their one source."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import testkit
from device.camera import base
from training.recorded import FOLDERS, SHARED_DATA

REPO = Path(__file__).resolve().parent.parent


def test_testkit_finds_the_datasets_through_the_one_data_root_map():
    assert testkit.MLL == (SHARED_DATA / FOLDERS["bone-marrow-mll"]).resolve()
    assert testkit.AML == (SHARED_DATA / FOLDERS["aml-cytomorphology-lmu"]).resolve()
    assert testkit.PBC == (SHARED_DATA / "pbc-normal-wbc").resolve() and testkit.PBC.is_dir() and testkit.MLL.is_dir()
    assert "-subset" not in (REPO / "testkit" / "__init__.py").read_text()


def test_leukoscope_cameras_lists_what_each_registered_back_end_detects(capsys, monkeypatch):
    import device.camera as camera
    from device.cli import main

    real = camera.backends()
    assert {n for n, b in real.items() if b.detect} == {"picamera2", "opencv"}
    fake = base.Backend("lamp-cam", dataclasses.make_dataclass("LampOptions", []), lambda o: None, rank=5,
                        detect=lambda: ["one lamp camera on /dev/lamp0"])
    monkeypatch.setattr(camera, "backends", lambda: {**real, "lamp-cam": fake})
    capsys.readouterr()
    assert main(["cameras"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "lamp-cam   one lamp camera on /dev/lamp0"  # the highest rank first
    assert [line.split()[0] for line in lines[1:]][:1] == ["picamera2"] and lines[-1].startswith("opencv     ")
    src = (REPO / "device" / "cli.py").read_text()
    cameras = src[src.index("def _cameras("):src.index("\ndef ", src.index("def _cameras(") + 1)]
    assert '"opencv' not in cameras and "picamera2  " not in cameras and "/dev" not in cameras


def test_bundle_metadata_is_read_through_its_typed_schema_only():
    """device/ and bench/ read a bundle's metadata through ``bundle.meta`` (device/model/metadata.py); the raw
    dict is used only to write a copy of the bundle whole (``dict(b.metadata)``)."""
    import re

    found = []
    for path in [*(REPO / "device").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\b(?!f\b)\w+\.metadata(\[|\.get\()", code) or re.search(r"=\s*\w+\.metadata\s*$", code):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, found
    pages = [p.name for p in (REPO / "device" / "web" / "templates").glob("*.html") if ".metadata." in p.read_text()]
    assert not pages, pages


def test_model_info_and_the_thresholds_come_from_the_typed_metadata(capsys, tmp_path):
    import json
    import zipfile

    from device.cli import main
    from device.model.bundle import load_bundle, pack, summary

    src = REPO / "device/assets/models/default.lkb"
    shipped = load_bundle(src)
    assert shipped.thresholds == shipped.metadata["thresholds"]
    info = summary(shipped)
    assert {k: info[k] for k in ("labels", "input", "datasets", "metrics", "parity", "sha256")} == \
        {k: shipped.metadata[k] for k in ("labels", "input", "datasets", "metrics", "parity", "sha256")}
    assert json.dumps(info["metrics"]) == json.dumps(shipped.metadata["metrics"])  # in the order written
    with zipfile.ZipFile(src) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(files["metadata.json"])
    meta["datasets"].insert(0, {"licence": "no name"})  # malformed: left out, so model info does not trip on it
    files["metadata.json"] = json.dumps(meta).encode()
    odd = tmp_path / "odd.lkb"
    odd.write_bytes(pack(files))
    capsys.readouterr()
    assert main(["model", "info", "--bundle", str(odd)]) == 0
    out = capsys.readouterr().out
    assert "data:     pbc-normal-wbc (CC BY 4.0), split by image" in out and "no name" not in out
    assert "note:     metadata.json: 'datasets' must be a list of objects with a 'name'; datasets.0 was left out" in out
