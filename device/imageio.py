"""Decoding and writing images safely.

Every image that enters the appliance (camera file, upload, dataset file)
comes through ``decode_image``: it checks the size from the header before
decoding, so a decompression bomb is refused without allocating it, and it
turns every mode (grey, RGBA, palette, 16-bit) into 8-bit RGB.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# A 12 MP Pi HQ camera still is 4056x3040; 50 MP leaves room for larger sensors.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 50_000_000
MIN_SIDE = 8


class ImageError(ValueError):
    """An image that cannot be used; the message is meant for the operator."""


def decode_image(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode bytes to an RGB uint8 array of shape (H, W, 3), or raise ImageError."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is larger than the {max_pixels:,}-pixel limit")
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{name}: {w}x{h} pixels is too small to hold a blood-smear image")
            img.load()
            return _to_rgb8(img)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image dimensions are implausibly large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (JPEG, PNG, BMP or TIFF expected)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the image is damaged or truncated ({exc})") from None


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    return decode_image(data, name=path.name, max_pixels=max_pixels)


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white, like a slide background, so transparent areas do not read as stain.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write a file so that a power cut leaves either the old file or the whole new one.

    Temporary file in the same directory, fsync, rename, then fsync the directory
    so the rename itself is durable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp creates 0600
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
