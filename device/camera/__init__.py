"""Cameras: one interface (base.py), one module per back-end (picamera2, OpenCV/V4L2, replay of a
folder), chosen by name here; a back-end is imported only when chosen."""
from __future__ import annotations

from device.camera.base import Camera


def make_camera(backend: str, **options) -> Camera:
    if backend == "replay":
        from device.camera.replay import ReplayCamera

        return ReplayCamera(options.get("folder"), loop=options.get("loop", True))
    if backend == "opencv":
        from device.camera.opencv import OpenCVCamera

        return OpenCVCamera(options.get("device", 0), options.get("width", 1920), options.get("height", 1080))
    if backend == "picamera2":
        from device.camera.picam import Picamera2Camera

        return Picamera2Camera(options.get("still_size"), tuple(options.get("preview_size", (640, 480))),
                               timeout=options.get("timeout", 5.0))
    raise ValueError(f"unknown camera back-end {backend!r}; choose replay, opencv or picamera2")
