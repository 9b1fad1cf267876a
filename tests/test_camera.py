from __future__ import annotations

import shutil
import time

import pytest

from device.camera import CameraError, ReplayCamera, SupervisedCamera, bundled_samples_dir


def test_replay_cycles_through_the_bundled_fields():
    cam = ReplayCamera()
    cam.open()
    names = [cam.capture().metadata["file"] for _ in range(len(cam._files) + 1)]
    assert names[0] == names[-1]  # looped
    frame = cam.capture()
    assert frame.image.ndim == 3 and frame.image.shape[2] == 3 and frame.image.dtype.name == "uint8"
    assert cam.preview().shape[1] <= 640


def test_camera_that_vanishes_and_returns(tmp_path):
    folder = tmp_path / "cam"
    shutil.copytree(bundled_samples_dir(), folder)
    sup = SupervisedCamera(ReplayCamera(folder), min_backoff=0.1, max_backoff=1.0)
    assert sup.capture().image.size
    assert sup.state()["status"] == "ok"
    folder.rename(tmp_path / "unplugged")
    with pytest.raises(CameraError, match="disappeared"):
        sup.capture()
    assert sup.state()["status"] == "disconnected"
    for _ in range(5):  # keeps failing cleanly while it is gone
        with pytest.raises(CameraError):
            sup.capture()
        time.sleep(0.1)
    (tmp_path / "unplugged").rename(folder)
    t0 = time.monotonic()
    while True:
        try:
            frame = sup.capture()
            break
        except CameraError:
            assert time.monotonic() - t0 < 5.0, "camera did not come back within 5 s"
            time.sleep(0.05)
    assert frame.image.size and sup.state()["status"] == "ok"
    assert sup.state()["failures"] >= 2


def test_unknown_backend_and_missing_picamera2():
    from device.camera import Picamera2Camera, make_camera

    with pytest.raises(ValueError, match="unknown camera back-end"):
        make_camera("webcam9000")
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 present")
    except ImportError:
        with pytest.raises(CameraError, match="apt install python3-picamera2"):
            Picamera2Camera().open()
