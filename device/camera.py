"""Cameras: one interface, three back-ends (picamera2, OpenCV/V4L2, replay of a folder).

A back-end raises ``CameraError`` when its device is gone; ``SupervisedCamera``
closes it, reports the status, and reopens it with back-off, so a camera that
is unplugged and plugged back in never takes the rest of the process down.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from device.imageio import IMAGE_SUFFIXES, ImageError, read_image

PREVIEW_WIDTH = 640
log = logging.getLogger("leukoscope.camera")


class CameraError(RuntimeError):
    """The camera cannot deliver a frame; the message is for the operator."""


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    captured_at: str
    source: str
    metadata: dict = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _shrink(rgb: np.ndarray, width: int = PREVIEW_WIDTH) -> np.ndarray:
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    return cv2.resize(rgb, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


class Camera(Protocol):
    name: str

    def open(self) -> None: ...
    def capture(self) -> Frame: ...  # full-resolution still
    def preview(self) -> np.ndarray: ...  # low-resolution RGB for the live view
    def close(self) -> None: ...


def bundled_samples_dir() -> Path:
    return Path(str(resources.files("device").joinpath("assets/fields")))


class ReplayCamera:
    """Replays the images of a folder in name order, looping: the demo and the tests.

    The folder disappearing (renamed, unmounted) behaves like an unplugged camera.
    """

    def __init__(self, folder: str | Path | None = None, loop: bool = True):
        self.folder = Path(folder) if folder else bundled_samples_dir()
        self.loop = loop
        self.name = f"replay:{self.folder.name}"
        self._files: list[Path] = []
        self._i = 0
        self._last: np.ndarray | None = None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"replay folder {self.folder} is not available")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise CameraError(f"replay folder {self.folder} holds no images")

    def _next(self) -> tuple[Path, np.ndarray]:
        if not self.folder.is_dir():
            raise CameraError(f"replay folder {self.folder} disappeared")
        if self._i >= len(self._files):
            if not self.loop:
                raise CameraError("replay finished: no more images")
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        try:
            return path, read_image(path)
        except ImageError as exc:
            raise CameraError(f"replay image unreadable: {exc}") from None

    def capture(self) -> Frame:
        path, img = self._next()
        self._last = img
        return Frame(img, _now(), self.name, {"file": path.name})

    def preview(self) -> np.ndarray:
        if not self.folder.is_dir():
            raise CameraError(f"replay folder {self.folder} disappeared")
        if self._last is None:
            # show what the next capture will be, without advancing
            path = self._files[self._i % len(self._files)]
            try:
                self._last = read_image(path)
            except ImageError as exc:
                raise CameraError(f"replay image unreadable: {exc}") from None
        return _shrink(self._last)

    def close(self) -> None:
        self._last = None


class OpenCVCamera:
    """A USB camera through OpenCV (V4L2 on Linux)."""

    def __init__(self, device: int | str = 0, width: int = 1920, height: int = 1080):
        self.device, self.width, self.height = device, width, height
        self.name = f"opencv:{device}"
        self._cap = None

    def open(self) -> None:
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2) if isinstance(self.device, int) else cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"USB camera {self.device} not found or busy")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._cap = cap

    def _read(self) -> np.ndarray:
        if self._cap is None:
            raise CameraError("USB camera is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraError(f"USB camera {self.device} stopped delivering frames (unplugged?)")
        return np.ascontiguousarray(bgr[..., ::-1])

    def capture(self) -> Frame:
        img = self._read()
        return Frame(img, _now(), self.name, {"width": img.shape[1], "height": img.shape[0]})

    def preview(self) -> np.ndarray:
        return _shrink(self._read())

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_picamera2():
    """picamera2's class, or CameraError saying why not.

    Importing it can fail with anything, not only ImportError: an apt C extension it pulls in
    (simplejpeg) built against another numpy major raises ValueError or ImportError from inside.
    """
    try:
        from picamera2 import Picamera2
    except ModuleNotFoundError as exc:
        if exc.name == "picamera2":
            raise CameraError("picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2)") from None
        raise CameraError(f"picamera2 cannot be imported ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - e.g. "numpy.dtype size changed": the venv's numpy does not match apt's
        raise CameraError(f"picamera2 cannot be imported ({_reason(exc)}); the venv's numpy must match "
                          "the major version of apt's python3-numpy (re-run systemd/install.sh)") from None
    return Picamera2


def picamera2_cameras() -> tuple[list[str], str | None]:
    """The sensor models libcamera lists (e.g. ["imx477"]) and, when there are none, why."""
    try:
        Picamera2 = _import_picamera2()
        models = [str(c.get("Model", "unknown")) for c in Picamera2.global_camera_info()]
    except Exception as exc:  # noqa: BLE001 - detection must never stop an install or a start
        return [], str(exc) if isinstance(exc, CameraError) else _reason(exc)
    return models, None if models else "libcamera lists no camera (check the ribbon cable, then reboot)"


def detect_picamera2() -> list[str]:
    """The Pi camera sensors attached; [] when none or picamera2 is unusable."""
    return picamera2_cameras()[0]


def _close_bounded(cam, timeout: float) -> bool:
    """stop() and close() a Picamera2, each even if the other raises, without waiting forever.

    picamera2 keeps every instance (and its claim on the camera) alive until close(), so a failed
    configure or start must close too, or every reopen fails as "busy". A sensor that has stalled
    can make stop() hang: then the instance is abandoned to a daemon thread after ``timeout``.
    """
    def shut():
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception:  # noqa: BLE001 - closing a camera that has gone away must not raise
                pass

    t = threading.Thread(target=shut, name="picamera2-close", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        log.error("the Pi camera did not close within %g s; it may stay claimed until the service restarts", timeout)
        return False
    return True


def lores_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """picamera2's YUV420 lores array, shape (h*3/2, stride) with padding, to RGB (h, w, 3).

    The Y rows are ``stride`` bytes, the U and V rows ``stride/2``: cropping the 2-D array to
    ``width`` would mix chroma rows whenever width != stride.
    """
    stride = yuv.shape[1]
    flat = np.ascontiguousarray(yuv).reshape(-1)
    ch, cw, cs = height // 2, width // 2, stride // 2
    y = flat[: height * stride].reshape(height, stride)[:, :width]
    u_at = height * stride
    u = flat[u_at: u_at + ch * cs].reshape(ch, cs)[:, :cw]
    v_at = u_at + ch * cs
    v = flat[v_at: v_at + ch * cs].reshape(ch, cs)[:, :cw]
    i420 = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)


class Picamera2Camera:
    """The Raspberry Pi camera: a full-resolution still stream plus a low-resolution preview stream.

    picamera2 comes from apt (python3-picamera2) and is imported only here, only when used. Every
    failure, from the import to a capture that never returns, becomes a CameraError, so
    SupervisedCamera closes the camera and tries again later instead of the process dying.
    """

    def __init__(self, still_size: tuple[int, int] | None = None, preview_size: tuple[int, int] = (640, 480),
                 timeout: float = 5.0):
        self.still_size, self.preview_size = still_size, preview_size
        self.timeout = timeout  # seconds one capture may take before the sensor counts as stalled
        self.name = "picamera2"
        self._cam = None
        self._lores_size = tuple(preview_size)

    def open(self) -> None:
        Picamera2 = _import_picamera2()
        try:
            found = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001
            raise CameraError(f"Pi camera not available ({_reason(exc)})") from None
        if not found:
            raise CameraError("no Pi camera detected (check the ribbon cable, then reboot)")
        try:
            cam = Picamera2()  # claims the camera: "Device or resource busy" if another process holds it
        except Exception as exc:  # noqa: BLE001 - libcamera raises many kinds; all mean "not usable now"
            raise CameraError(f"Pi camera not available ({_reason(exc)})") from None
        try:
            main = {"format": "RGB888"}
            if self.still_size:
                main["size"] = tuple(self.still_size)
            # One configuration with both streams avoids the ~0.5 s mode switch per capture.
            config = cam.create_still_configuration(main=main, lores={"size": tuple(self.preview_size),
                                                                      "format": "YUV420"},
                                                    display=None, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as exc:  # noqa: BLE001
            _close_bounded(cam, self.timeout)
            raise CameraError(f"Pi camera could not be started ({_reason(exc)})") from None
        self._cam = cam
        try:  # libcamera may have adjusted the lores size to what the hardware can do
            self._lores_size = tuple(cam.camera_configuration()["lores"]["size"])
        except Exception:  # noqa: BLE001
            self._lores_size = tuple(self.preview_size)
        try:
            model = cam.camera_properties.get("Model")
        except Exception:  # noqa: BLE001
            model = None
        self.name = f"picamera2:{model}" if model else "picamera2"

    def _stalled(self, what: str, exc: Exception) -> CameraError:
        if isinstance(exc, TimeoutError):
            try:
                self._cam.cancel_all_and_flush()  # drop the pending request so the next one starts clean
            except Exception:  # noqa: BLE001
                pass
            return CameraError(f"Pi camera {what} timed out: no frame within {self.timeout:g} s")
        return CameraError(f"Pi camera {what} failed ({_reason(exc)})")

    def capture(self) -> Frame:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            request = self._cam.capture_request(wait=self.timeout)
            try:
                arr = request.make_array("main")
                meta = request.get_metadata()
            finally:
                request.release()
        except Exception as exc:  # noqa: BLE001
            raise self._stalled("capture", exc) from None
        # picamera2's "RGB888" is stored B, G, R in memory.
        rgb = np.ascontiguousarray(arr[..., :3][..., ::-1])
        keep = {k: meta[k] for k in ("ExposureTime", "AnalogueGain", "ColourGains", "Lux", "FocusFoM") if k in meta}
        return Frame(rgb, _now(), self.name, keep)

    def preview(self) -> np.ndarray:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            yuv = self._cam.capture_array("lores", wait=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise self._stalled("preview", exc) from None
        w, h = self._lores_size
        try:
            return lores_to_rgb(yuv, w, h)
        except Exception as exc:  # noqa: BLE001 - a buffer of an unexpected layout
            raise CameraError(f"Pi camera preview has an unexpected layout {getattr(yuv, 'shape', '?')} "
                              f"for {w}x{h} ({_reason(exc)})") from None

    def close(self) -> None:
        if self._cam is not None:
            cam, self._cam = self._cam, None
            _close_bounded(cam, self.timeout)


class SupervisedCamera:
    """Owns one back-end: serialises access, reopens it after failures with back-off."""

    def __init__(self, camera: Camera, min_backoff: float = 0.25, max_backoff: float = 2.0):
        self.camera = camera
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._lock = threading.Lock()
        self._open = False
        self._backoff = min_backoff
        self._next_try = 0.0
        self.status = "starting"
        self.error: str | None = None
        self.failures = 0

    def _ensure_open(self) -> None:
        if self._open:
            return
        now = time.monotonic()
        if now < self._next_try:
            raise CameraError(self.error or "camera not available")
        try:
            self.camera.open()
        except Exception as exc:  # noqa: BLE001 - whatever a back-end raises, the camera is just unavailable
            err = exc if isinstance(exc, CameraError) else CameraError(f"camera not available ({_reason(exc)})")
            self._failed(err)
            raise err from None
        self._open = True
        self._backoff = self.min_backoff
        self.status, self.error = "ok", None

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.status, self.error = "disconnected", str(exc)
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self.max_backoff, self._backoff * 2)
        if self._open:
            try:
                self.camera.close()
            except Exception:  # noqa: BLE001 - it is being dropped anyway
                pass
            finally:
                self._open = False

    def _call(self, fn):
        with self._lock:
            self._ensure_open()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - never let a back-end's surprise kill the worker thread
                err = exc if isinstance(exc, CameraError) else CameraError(f"camera failed ({_reason(exc)})")
                self._failed(err)
                raise err from None

    def capture(self) -> Frame:
        return self._call(lambda: self.camera.capture())

    def preview(self) -> np.ndarray:
        return self._call(lambda: self.camera.preview())

    def poll(self) -> None:
        """Try to reopen a lost camera (called by the worker while idle)."""
        with self._lock:
            if not self._open:
                try:
                    self._ensure_open()
                except CameraError:
                    pass

    def state(self) -> dict:
        return {"name": self.camera.name, "status": self.status, "error": self.error, "failures": self.failures}

    def close(self) -> None:
        with self._lock:
            if self._open:
                try:
                    self.camera.close()
                except Exception:  # noqa: BLE001 - a camera that has gone away cannot be closed twice
                    pass
                self._open = False
            self.status = "closed"


def make_camera(backend: str, **options) -> Camera:
    if backend == "replay":
        return ReplayCamera(options.get("folder"), loop=options.get("loop", True))
    if backend == "opencv":
        return OpenCVCamera(options.get("device", 0), options.get("width", 1920), options.get("height", 1080))
    if backend == "picamera2":
        return Picamera2Camera(options.get("still_size"), tuple(options.get("preview_size", (640, 480))),
                               timeout=options.get("timeout", 5.0))
    raise ValueError(f"unknown camera back-end {backend!r}; choose replay, opencv or picamera2")
