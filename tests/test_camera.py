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


class _FakeRequest:
    def __init__(self, cam):
        self.cam = cam

    def make_array(self, stream):
        assert stream == "main"
        return self.cam.bgr

    def get_metadata(self):
        return {"ExposureTime": 10000, "AnalogueGain": 1.5, "SensorTemperature": 40}

    def release(self):
        self.cam.released += 1


class FakePicamera2:
    """The part of picamera2's API that Picamera2Camera uses; the Pi camera is absent here."""

    instances = []
    fail_capture = False

    def __init__(self):
        import numpy as np

        rgb = np.zeros((480, 640, 3), np.uint8)
        rgb[..., 0] = 200  # a red field, stored B, G, R like picamera2's "RGB888"
        self.bgr = rgb[..., ::-1].copy()
        self.released = 0
        self.started = False
        FakePicamera2.instances.append(self)

    def create_still_configuration(self, main, lores, display, buffer_count):
        return {"main": main, "lores": lores}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def capture_request(self):
        if FakePicamera2.fail_capture:
            raise RuntimeError("Device or resource busy")
        return _FakeRequest(self)

    def capture_array(self, stream):
        import numpy as np

        assert stream == "lores"
        h, w = self.config["lores"]["size"][1], self.config["lores"]["size"][0]
        return np.full((h * 3 // 2, w), 128, np.uint8)  # YUV420 grey

    def stop(self):
        self.started = False

    def close(self):
        pass


def test_picamera2_backend_through_its_api(monkeypatch):
    import sys
    import types

    from device.camera import Picamera2Camera

    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    cam = Picamera2Camera(preview_size=(320, 240))
    sup = SupervisedCamera(cam, min_backoff=0.05)
    frame = sup.capture()
    assert frame.image.shape == (480, 640, 3)
    assert tuple(frame.image[0, 0]) == (200, 0, 0)  # channels put back in RGB order
    assert frame.metadata == {"ExposureTime": 10000, "AnalogueGain": 1.5}
    assert FakePicamera2.instances[-1].released == 1
    assert FakePicamera2.instances[-1].config["lores"]["size"] == (320, 240)
    prev = sup.preview()
    assert prev.shape == (240, 320, 3)
    FakePicamera2.fail_capture = True  # "busy" after a crash elsewhere
    try:
        with pytest.raises(CameraError, match="busy"):
            sup.capture()
        assert sup.state()["status"] == "disconnected"
    finally:
        FakePicamera2.fail_capture = False
    time.sleep(0.1)
    assert sup.capture().image.shape == (480, 640, 3)  # reopened with a fresh Picamera2
    assert len(FakePicamera2.instances) >= 2
