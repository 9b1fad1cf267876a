"""One back-end behind a lock, reopened after failures with back-off."""
from __future__ import annotations

import threading
import time

import numpy as np

from device.camera.base import Camera, CameraError, Frame, _reason


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
