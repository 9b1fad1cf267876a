"""The camera interface: the frame, the error and the protocol every back-end follows.

A back-end raises ``CameraError`` when its device is gone; ``SupervisedCamera`` (supervised.py)
closes it, reports the status, and reopens it with back-off, so a camera that is unplugged and
plugged back in never takes the rest of the process down. One back-end per module beside this one,
each declaring itself with a module-level ``BACKEND = Backend(...)`` (device/camera/__init__.py finds them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

import cv2
import numpy as np

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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Camera(Protocol):
    name: str

    def open(self) -> None: ...
    def capture(self) -> Frame: ...  # full-resolution still
    def preview(self) -> np.ndarray: ...  # low-resolution RGB for the live view
    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    """A camera back-end's declaration (Frigate's detector plugins): its name, the one ``[camera] backend``
    takes; its own settings, a dataclass of ``setting()`` fields (device/schema.py) whose keys sit in the
    ``[camera]`` table; how to open a camera from them; and, optionally, what this box must offer for them
    (``check``, raising device.schema.ConfigError naming the key: e.g. a replay folder that holds images)."""
    name: str
    options: type
    make: Callable[[Any], Camera]
    rank: int  # its place in the lists (the page's choice, the defaults file); the default back-end is 0
    check: Callable[[Any], None] | None = None
    # what ``leukoscope cameras`` says this machine offers the back-end: one line each (none: it lists nothing)
    detect: Callable[[], list[str]] | None = None
