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
