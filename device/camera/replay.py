"""The replay back-end: the images of a folder, in name order, as if from a camera."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from device.camera.base import Backend, CameraError, Frame, _now, _shrink
from device.imageio import IMAGE_SUFFIXES, ImageError, read_image
from device.schema import N_, ConfigError, setting


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
            return path, read_image(path, gate=False)  # the camera: never queued behind uploads
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
                self._last = read_image(path, gate=False)
            except ImageError as exc:
                raise CameraError(f"replay image unreadable: {exc}") from None
        return _shrink(self._last)

    def close(self) -> None:
        self._last = None


@dataclass(frozen=True)
class ReplayOptions:
    """The replay back-end's keys of ``[camera]``."""
    # a folder of field images ("" = the bundled BCCD samples)
    folder: str = setting("", max_length=1024, label=N_("Replay folder (replay camera)"))
    loop: bool = True


def check_folder(o: ReplayOptions) -> None:
    """A folder that is missing or holds no images would make every capture fail: refused when set."""
    if not o.folder:
        return
    folder = Path(o.folder)
    if not folder.is_dir():
        raise ConfigError(f"[camera] folder: {o.folder} is not a folder on this box", "camera", "folder",
                          N_("%(path)s is not a folder on this box"), {"path": o.folder})
    try:
        has_image = any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())
    except OSError:
        has_image = False
    if not has_image:
        raise ConfigError(f"[camera] folder: {o.folder} holds no images", "camera", "folder",
                          N_("%(path)s holds no images (.jpg, .png, .tif, .bmp)"), {"path": o.folder})


BACKEND = Backend("replay", ReplayOptions, lambda o: ReplayCamera(o.folder or None, loop=o.loop), rank=0,
                  check=check_folder)
