"""Cameras: one interface, three back-ends (picamera2, OpenCV/V4L2, replay of a folder).

A back-end raises ``CameraError`` when its device is gone; ``SupervisedCamera``
closes it, reports the status, and reopens it with back-off, so a camera that
is unplugged and plugged back in never takes the rest of the process down.
"""
from __future__ import annotations

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


class Picamera2Camera:
    """The Raspberry Pi camera: a full-resolution still stream plus a low-resolution preview stream.

    picamera2 comes from apt (python3-picamera2) and is imported only here, only when used.
    """

    def __init__(self, still_size: tuple[int, int] | None = None, preview_size: tuple[int, int] = (640, 480)):
        self.still_size, self.preview_size = still_size, preview_size
        self.name = "picamera2"
        self._cam = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2)") from None
        try:
            cam = Picamera2()
            main = {"format": "RGB888"}
            if self.still_size:
                main["size"] = tuple(self.still_size)
            # One configuration with both streams avoids the ~0.5 s mode switch per capture.
            config = cam.create_still_configuration(main=main, lores={"size": tuple(self.preview_size)},
                                                    display=None, buffer_count=2)
            cam.configure(config)
            cam.start()
        except Exception as exc:  # noqa: BLE001 - libcamera raises many kinds; all mean "not usable now"
            raise CameraError(f"Pi camera not available ({exc})") from None
        self._cam = cam

    def capture(self) -> Frame:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            request = self._cam.capture_request()
            try:
                arr = request.make_array("main")
                meta = request.get_metadata()
            finally:
                request.release()
        except Exception as exc:  # noqa: BLE001
            raise CameraError(f"Pi camera capture failed ({exc})") from None
        # picamera2's "RGB888" is stored B, G, R in memory.
        rgb = np.ascontiguousarray(arr[..., :3][..., ::-1])
        keep = {k: meta[k] for k in ("ExposureTime", "AnalogueGain", "ColourGains", "Lux", "FocusFoM") if k in meta}
        return Frame(rgb, _now(), self.name, keep)

    def preview(self) -> np.ndarray:
        if self._cam is None:
            raise CameraError("Pi camera is not open")
        try:
            yuv = self._cam.capture_array("lores")
        except Exception as exc:  # noqa: BLE001
            raise CameraError(f"Pi camera preview failed ({exc})") from None
        h = self.preview_size[1]
        return cv2.cvtColor(yuv[: h * 3 // 2], cv2.COLOR_YUV420p2RGB)

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # noqa: BLE001 - closing a camera that has gone away must not raise
                pass
            self._cam = None


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
        except CameraError as exc:
            self._failed(exc)
            raise
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
            finally:
                self._open = False

    def _call(self, fn):
        with self._lock:
            self._ensure_open()
            try:
                return fn()
            except CameraError as exc:
                self._failed(exc)
                raise

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
                self.camera.close()
                self._open = False
            self.status = "closed"


def make_camera(backend: str, **options) -> Camera:
    if backend == "replay":
        return ReplayCamera(options.get("folder"), loop=options.get("loop", True))
    if backend == "opencv":
        return OpenCVCamera(options.get("device", 0), options.get("width", 1920), options.get("height", 1080))
    if backend == "picamera2":
        return Picamera2Camera(options.get("still_size"), tuple(options.get("preview_size", (640, 480))))
    raise ValueError(f"unknown camera back-end {backend!r}; choose replay, opencv or picamera2")
