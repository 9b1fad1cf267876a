from __future__ import annotations

import shutil
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from device.camera.base import CameraError
from device.camera.picam import Picamera2Camera, detect_picamera2, lores_to_rgb
from device.camera.replay import ReplayCamera, bundled_samples_dir
from device.camera.supervised import SupervisedCamera


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
    from device.camera import make_camera
    from device.camera.picam import Picamera2Camera

    with pytest.raises(ValueError, match="unknown camera back-end"):
        make_camera("webcam9000")
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 present")
    except ImportError:
        with pytest.raises(CameraError, match="apt install python3-picamera2"):
            Picamera2Camera().open()


# -- a picamera2 as unkind as the real one ---------------------------------------
#
# What the real library does, from its sources, and the fake does too:
# - Picamera2() claims the camera at construction ("Device or resource busy" if it is held) and
#   keeps the claim until close(): an instance that is dropped without close() still holds it;
# - with no camera attached, Picamera2() fails with IndexError and global_camera_info() is [];
# - capture_request()/capture_array() with wait=None block until a frame comes, so a stalled
#   sensor blocks forever; with wait=T they raise TimeoutError and the job stays queued until
#   cancel_all_and_flush();
# - the lores YUV420 array is (h*3/2, stride): Y rows of `stride` bytes, U and V rows of stride/2;
# - the main stream defaults to the sensor's full size.


def _align(n, a=64):
    return (n + a - 1) // a * a


class _FakeRequest:
    def __init__(self, cam):
        self.cam = cam

    def make_array(self, stream):
        assert stream == "main"
        return self.cam.main_bgr()

    def get_metadata(self):
        return {"ExposureTime": 10000, "AnalogueGain": 1.5, "SensorTemperature": 40}

    def release(self):
        self.cam.released += 1


class FakePicamera2:
    """The part of picamera2's API that Picamera2Camera uses, with the real one's failure modes."""

    ATTACHED = [{"Model": "imx296", "Location": 2, "Rotation": 0, "Id": "/base/fake", "Num": 0}]
    cameras = ATTACHED
    sensor = (1456, 1088)
    claimed = False  # the camera system-wide: one holder at a time
    instances: list = []
    fail_configure = 0  # how many configure() calls fail
    stall = threading.Event()  # set: the sensor delivers nothing
    unstall = threading.Event()  # set by a test to end every hang it caused

    @classmethod
    def reset(cls):
        cls.cameras = [dict(c) for c in cls.ATTACHED]
        cls.claimed, cls.instances, cls.fail_configure = False, [], 0
        cls.stall, cls.unstall = threading.Event(), threading.Event()

    @staticmethod
    def global_camera_info():
        return [dict(c) for c in FakePicamera2.cameras]

    def __init__(self):
        if not FakePicamera2.cameras:
            raise IndexError("list index out of range")
        if FakePicamera2.claimed:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        FakePicamera2.claimed = True
        self.closed = False
        self.released = 0
        self.started = False
        self.config = None
        self.flushed = 0
        self.camera_properties = {"Model": FakePicamera2.cameras[0]["Model"], "PixelArraySize": self.sensor}
        FakePicamera2.instances.append(self)

    def create_still_configuration(self, main=None, lores=None, display="main", buffer_count=1):
        main = dict(main or {})
        main.setdefault("size", FakePicamera2.sensor)
        return {"main": main, "lores": dict(lores) if lores else None, "display": display}

    def configure(self, config):
        assert not self.closed
        if FakePicamera2.fail_configure:
            FakePicamera2.fail_configure -= 1
            raise RuntimeError("Failed to configure camera")
        self.config = config

    def camera_configuration(self):
        return self.config

    def start(self):
        assert self.config is not None, "start() before configure()"
        self.started = True

    def _wait_frame(self, wait):
        if FakePicamera2.stall.is_set():
            # like the real one: wait=None waits for ever (here: until the test ends the stall)
            if not FakePicamera2.unstall.wait(wait) or FakePicamera2.stall.is_set():
                raise TimeoutError()

    def main_bgr(self):
        w, h = self.config["main"]["size"]
        bgr = np.zeros((h, w, 3), np.uint8)
        bgr[..., 2] = 200  # a red field, stored B, G, R like picamera2's "RGB888"
        return bgr

    def capture_request(self, wait=None, flush=None):
        assert self.started and not self.closed
        self._wait_frame(wait)
        return _FakeRequest(self)

    def capture_array(self, name="main", wait=None):
        assert name == "lores" and self.started and not self.closed
        self._wait_frame(wait)
        w, h = self.config["lores"]["size"]
        return strided_yuv420(lores_rgb(w, h), _align(w))

    def cancel_all_and_flush(self):
        self.flushed += 1

    def stop(self):
        self.started = False

    def close(self):
        if not self.closed:
            self.closed = True
            FakePicamera2.claimed = False


def lores_rgb(w, h):
    """A test card: horizontal red ramp, vertical green ramp, constant blue."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.linspace(20, 235, w, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(20, 235, h, dtype=np.uint8)[:, None]
    rgb[..., 2] = 90
    return rgb


def strided_yuv420(rgb, stride):
    """Lay out an RGB image as picamera2 returns a YUV420 lores stream: (h*3/2, stride), padding = 255."""
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    y, u, v = i420[: h * w], i420[h * w: h * w * 5 // 4], i420[h * w * 5 // 4:]
    out = np.full(h * stride * 3 // 2, 255, np.uint8)
    out[: h * stride].reshape(h, stride)[:, :w] = y.reshape(h, w)
    cs = stride // 2
    out[h * stride: h * stride + h // 2 * cs].reshape(h // 2, cs)[:, : w // 2] = u.reshape(h // 2, w // 2)
    out[h * stride + h // 2 * cs:].reshape(h // 2, cs)[:, : w // 2] = v.reshape(h // 2, w // 2)
    return out.reshape(h * 3 // 2, stride)


@pytest.fixture
def fake_picamera2(monkeypatch):
    import types

    FakePicamera2.reset()
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    yield FakePicamera2
    FakePicamera2.unstall.set()  # release any thread a failing test left hanging


def wait_until_captures(sup, timeout=5.0):
    t0 = time.monotonic()
    while True:
        try:
            return sup.capture()
        except CameraError:
            assert time.monotonic() - t0 < timeout, f"camera did not come back within {timeout} s: {sup.state()}"
            time.sleep(0.05)


def test_picamera2_backend_through_its_api(fake_picamera2):
    cam = Picamera2Camera(preview_size=(320, 240))
    sup = SupervisedCamera(cam, min_backoff=0.05)
    frame = sup.capture()
    assert frame.image.shape == (1088, 1456, 3)  # no still_size: the sensor's full size
    assert tuple(frame.image[0, 0]) == (200, 0, 0)  # channels put back in RGB order
    assert frame.metadata == {"ExposureTime": 10000, "AnalogueGain": 1.5}
    assert frame.source == "picamera2:imx296" and sup.state()["name"] == "picamera2:imx296"
    assert fake_picamera2.instances[-1].released == 1
    assert fake_picamera2.instances[-1].config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert sup.preview().shape == (240, 320, 3)
    sup.close()
    assert not fake_picamera2.claimed  # closed means released for the next process


def test_picamera2_still_size_is_passed(fake_picamera2):
    cam = Picamera2Camera(still_size=(800, 600))
    cam.open()
    try:
        assert cam.capture().image.shape == (600, 800, 3)
    finally:
        cam.close()


@pytest.mark.parametrize("w,h", [(320, 240), (300, 200), (642, 482)])
def test_lores_stride_padding_is_undone(w, h):
    rgb = lores_rgb(w, h)
    stride = _align(w)
    yuv = strided_yuv420(rgb, stride)
    assert yuv.shape == (h * 3 // 2, stride)
    out = lores_to_rgb(yuv, w, h)
    assert out.shape == (h, w, 3)
    # chroma subsampling costs a few levels; a mis-strided plane costs tens
    err = np.abs(out.astype(int) - rgb.astype(int))
    assert err.mean() < 3 and np.percentile(err, 99) < 12, (err.mean(), err.max())


def test_preview_with_a_width_off_the_stride(fake_picamera2):
    cam = Picamera2Camera(preview_size=(300, 200))
    cam.open()
    try:
        out = cam.preview()
        assert out.shape == (200, 300, 3)
        assert np.abs(out.astype(int) - lores_rgb(300, 200).astype(int)).mean() < 3
    finally:
        cam.close()


def test_picamera2_import_raising_valueerror_is_camera_unavailable(tmp_path, monkeypatch):
    """apt's simplejpeg under a numpy of the other major raises ValueError while picamera2 imports."""
    pkg = tmp_path / "picamera2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise ValueError("numpy.dtype size changed, may indicate binary incompatibility. '
        'Expected 96 from C header, got 88 from PyObject")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    sup = SupervisedCamera(Picamera2Camera(), min_backoff=0.05)
    for _ in range(2):
        with pytest.raises(CameraError, match="ValueError: numpy.dtype size changed.*numpy must match"):
            sup.capture()
        time.sleep(0.06)
    state = sup.state()
    assert state["status"] == "disconnected" and "numpy.dtype size changed" in state["error"]
    assert detect_picamera2() == []


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ModuleNotFoundError
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        Picamera2Camera().open()


def test_no_camera_attached(fake_picamera2):
    fake_picamera2.cameras = []
    with pytest.raises(CameraError, match="no Pi camera detected"):
        Picamera2Camera().open()
    assert detect_picamera2() == []


def test_busy_at_construction_then_free(fake_picamera2):
    other = fake_picamera2()  # another process holds the camera
    sup = SupervisedCamera(Picamera2Camera(), min_backoff=0.05, max_backoff=0.1)
    with pytest.raises(CameraError, match="Device or resource busy"):
        sup.capture()
    assert sup.state()["status"] == "disconnected"
    other.close()
    assert wait_until_captures(sup).image.shape == (1088, 1456, 3)
    assert sup.state()["status"] == "ok"


def test_camera_returns_after_a_failed_configure(fake_picamera2):
    """A failed configure must close the instance, or it keeps the camera claimed for ever."""
    fake_picamera2.fail_configure = 2
    sup = SupervisedCamera(Picamera2Camera(), min_backoff=0.05, max_backoff=0.1)
    for _ in range(2):
        with pytest.raises(CameraError, match="could not be started.*Failed to configure"):
            sup.capture()
        time.sleep(0.06)
    assert not fake_picamera2.claimed
    assert all(c.closed for c in fake_picamera2.instances)
    assert wait_until_captures(sup).image.size
    assert len(fake_picamera2.instances) == 3


def test_capture_that_never_returns_times_out_then_recovers(fake_picamera2):
    cam = Picamera2Camera(timeout=0.3)
    sup = SupervisedCamera(cam, min_backoff=0.05, max_backoff=0.1)
    assert sup.capture().image.size
    fake_picamera2.stall.set()
    outcome = {}

    def attempt():
        try:
            sup.capture()
            outcome["result"] = "frame"
        except CameraError as exc:
            outcome["result"] = str(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the capture hung: no timeout was passed to picamera2"
    assert 0.25 < time.monotonic() - t0 < 3
    assert "timed out" in outcome["result"]
    first = fake_picamera2.instances[0]
    assert first.flushed == 1 and first.closed  # the queued request dropped, the camera released
    with pytest.raises(CameraError, match="timed out"):  # reopened, but the sensor still says nothing
        time.sleep(0.06)
        sup.preview()
    fake_picamera2.stall.clear()  # the sensor comes back: no process restart needed
    assert wait_until_captures(sup).image.size
    assert sup.state()["status"] == "ok" and sup.state()["failures"] >= 2


def test_any_surprise_from_a_backend_is_camera_unavailable():
    class Weird:
        name = "weird"

        def open(self):
            pass

        def capture(self):
            raise ZeroDivisionError("driver bug")

        def preview(self):
            raise KeyError("lores")

        def close(self):
            raise OSError("already gone")

    sup = SupervisedCamera(Weird(), min_backoff=0.01)
    with pytest.raises(CameraError, match="ZeroDivisionError: driver bug"):
        sup.capture()
    assert sup.state()["status"] == "disconnected"
    time.sleep(0.02)
    with pytest.raises(CameraError, match="KeyError"):
        sup.preview()


def _broken_picamera2(tmp_path, monkeypatch):
    pkg = tmp_path / "broken" / "picamera2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")\n')
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)


def test_unusable_picamera2_is_reported_on_the_page_and_in_health(page_app, admin, monkeypatch):
    """The service keeps running with the reason in /health and on the page; no dead capture thread."""
    base, app, rt, tmp_path = page_app
    _broken_picamera2(tmp_path, monkeypatch)
    rt.loop.replace_camera(SupervisedCamera(Picamera2Camera(), min_backoff=0.05, max_backoff=0.2))
    t0 = time.monotonic()
    while True:
        health = base.session().get(base + "/health")
        body = health.json()
        if body["camera_error"]:
            break
        assert time.monotonic() - t0 < 10, body
        time.sleep(0.1)
    assert health.status_code == 200 and body["ok"] is True  # the worker is alive
    assert body["camera"] == "disconnected" and body["camera_name"] == "picamera2"
    assert "numpy.dtype size changed" in body["camera_error"]
    page = admin.get(base + "/").text
    assert "numpy.dtype size changed" in page and 'id="camera-name">picamera2<' in page
    time.sleep(0.5)  # several reopen attempts later, still alive
    assert rt.loop.alive() and base.session().get(base + "/health").json()["ok"] is True


def test_close_that_hangs_is_abandoned_after_the_timeout(fake_picamera2, monkeypatch):
    """A stalled sensor can make stop() hang; closing must not take the worker thread with it."""
    cam = Picamera2Camera(timeout=0.3)
    cam.open()
    monkeypatch.setattr(fake_picamera2.instances[-1], "stop", lambda: fake_picamera2.unstall.wait(30))
    t0 = time.monotonic()
    cam.close()
    assert time.monotonic() - t0 < 2 and cam._cam is None
