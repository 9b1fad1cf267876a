"""The OpenCV back-end: a USB camera (V4L2 on Linux)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.camera.base import Backend, CameraError, Frame, _now, _shrink
from device.schema import N_, setting


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


@dataclass(frozen=True)
class OpenCVOptions:
    """The USB back-end's keys of ``[camera]``."""
    device: int = setting(0, ge=0, le=63, label=N_("USB camera number (/dev/videoN)"))  # /dev/videoN
    width: int = setting(1920, ge=64, le=10000)
    height: int = setting(1080, ge=64, le=10000)


def _detect() -> list[str]:
    videos = sorted(str(p) for p in Path("/dev").glob("video*"))
    return [", ".join(videos) if videos else "no /dev/video* devices"]


BACKEND = Backend("opencv", OpenCVOptions, lambda o: OpenCVCamera(o.device, o.width, o.height), rank=1,
                  detect=_detect)
