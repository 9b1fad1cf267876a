"""Decoding and writing images safely.

Every image that enters the appliance (camera file, upload, dataset file)
comes through ``decode_image``: it accepts only the formats a microscope camera
writes (JPEG, PNG, TIFF, BMP), decided from the file's first bytes before any
decoder runs; it checks the size from the header before decoding, so a
decompression bomb is refused without allocating it; at most ``DECODE_SLOTS``
decodes run at once, so parallel uploads cannot multiply the memory; and it
turns every mode (grey, RGBA, palette, 16-bit) into 8-bit RGB.
"""
from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# A 12 MP Pi HQ camera still is 4056x3040; 50 MP leaves room for larger sensors.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 50_000_000
# A field to analyse: the HQ camera's 12.3 MP with room to spare. Analysis time grows with the
# pixel count, and one field must not hold the capture loop for minutes.
MAX_FIELD_PIXELS = 16_000_000
# Fields are analysed (and stored) at most this large: 1920x1080 passes unchanged. The cell finder
# measures in fractions of the field, so a smaller copy finds the same cells; its closing kernel
# grows with the field, which made one 16 MP field take 30 s instead of under one.
ANALYSIS_MAX_PIXELS = 2_100_000
MIN_SIDE = 8
# What one decode of a MAX_FIELD_PIXELS image costs at its peak (Pillow's 4 bytes a pixel, the RGB
# array, the fitted copy): concurrent decodes are sized so together they use at most a quarter of the
# memory available at start, and never more than there are cores.
DECODE_PEAK_BYTES = 160 * 1024 * 1024


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def decode_slots(mem_available: int | None = None, cores: int | None = None) -> int:
    mem = _mem_available() if mem_available is None else mem_available
    return max(1, min(cores or os.cpu_count() or 1, 4, mem // 4 // DECODE_PEAK_BYTES))


DECODE_SLOTS = decode_slots()
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)
# Uploads in flight (decode and analysis): beyond these an upload is answered 503 at once instead
# of holding a web-server thread, so /health and the operator's pages keep their threads.
_uploads = threading.BoundedSemaphore(DECODE_SLOTS)
RETRY_AFTER_S = 5


@contextmanager
def upload_slot(name: str = "image", wait: float = 0.5):
    """One of the ``DECODE_SLOTS`` upload slots for the duration of the block, or DecoderBusy."""
    if not _uploads.acquire(timeout=wait):
        raise DecoderBusy(f"{name}: the appliance is busy with other uploads; try again in "
                          f"{RETRY_AFTER_S} seconds")
    try:
        yield
    finally:
        _uploads.release()
        give_back_memory()


def give_back_memory() -> None:
    """Return freed heap to the system (glibc keeps large freed blocks in its arenas otherwise)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")

# Decided from content, never from the name: each format's signature and Pillow's name for it.
SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"),
              (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


class ImageError(ValueError):
    """An image that cannot be used; the message is meant for the operator."""


class DecoderBusy(ImageError):
    """Too many images are being decoded at once; try again in a moment."""


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def fitted_size(w: int, h: int, max_pixels: int) -> tuple[int, int]:
    if w * h <= max_pixels:
        return w, h
    scale = (max_pixels / (w * h)) ** 0.5
    return max(1, int(w * scale)), max(1, int(h * scale))


def fit_pixels(rgb: np.ndarray, max_pixels: int = ANALYSIS_MAX_PIXELS) -> np.ndarray:
    """A copy scaled down (area average, aspect kept) to at most ``max_pixels``; small images as they are."""
    h, w = rgb.shape[:2]
    size = fitted_size(w, h, max_pixels)
    if size == (w, h):
        return rgb
    return np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX)))


def decode_image(data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS, wait: float = 30.0,
                 fit: int | None = None, gate: bool = True) -> np.ndarray:
    """Decode bytes to an RGB uint8 array of shape (H, W, 3), or raise ImageError. ``fit``: scale down to
    at most that many pixels; a JPEG is then decoded at reduced scale (less memory, less time).
    ``gate=False``: the camera's own frame (one at a time, on the capture thread), never queued behind uploads."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"{name}: not an image file this appliance accepts (JPEG, PNG, TIFF or BMP expected)")
    if gate and not _decoding.acquire(timeout=wait):
        raise DecoderBusy(f"{name}: the appliance is busy decoding other images; try again in "
                          f"{RETRY_AFTER_S} seconds")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is larger than the {max_pixels:,}-pixel limit "
                                 "for an image here")
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{name}: {w}x{h} pixels is too small to hold a blood-smear image")
            if fit and w * h > fit and fmt == "JPEG":
                img.draft("RGB", fitted_size(w, h, fit))  # DCT scaling: never smaller than asked
            img.load()
            if fit and img.width * img.height > fit and img.mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK"):
                # scale the decoded image before any full-size array is made: one full-size copy, not three
                img = _to_rgb_image(img).resize(fitted_size(img.width, img.height, fit), Image.Resampling.BOX)
            rgb = _to_rgb8(img, name)
            return fit_pixels(rgb, fit) if fit else rgb
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image dimensions are implausibly large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file (JPEG, PNG, BMP or TIFF expected)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageError(f"{name}: the image is damaged or truncated ({exc})") from None
    finally:
        if gate:
            _decoding.release()


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, gate: bool = True) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    return decode_image(data, name=path.name, max_pixels=max_pixels, gate=gate)


def _to_rgb_image(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_rgb8(img: Image.Image, name: str = "image") -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            raise ImageError(f"{name}: the image is unreadable (every pixel value is NaN or infinite)")
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        arr = np.where(finite, arr, lo)  # a few bad pixels read as the darkest value, without warnings
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
