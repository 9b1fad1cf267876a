"""Pre-processing shared by training and the device.

Training imports these functions, and the model bundle records the
``Preprocessing`` settings, so a cell crop reaches the network the same way
on the workstation and on the box.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

NORMALIZATIONS = {
    # name: (scale, offset) so that model_input = pixel * scale + offset
    "unit": (1.0 / 255.0, 0.0),
    "symmetric": (1.0 / 127.5, -1.0),
}


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 128
    color_order: str = "RGB"
    normalization: str = "unit"
    # Centre fraction of a training image kept before resizing (single-cell
    # datasets are centred on the cell with a margin of red cells around it).
    crop_fraction: float = 1.0
    # How to make a non-square image square: "pad" (reflect) or "crop" (centre).
    square: str = "pad"
    # Optional enhancement from a research prototype: 3x3 median, then x - 0.9 * Laplacian.
    enhance: bool = False
    # Optional Reinhard stain normalisation to a reference mean/std in Lab.
    stain_reference: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    # Field crops of older bundles: crop side = detected cell box side * cell_context.
    cell_context: float = 2.0
    # The physical side of every cell crop (micrometres), whatever the microscope: a
    # crop always shows the same area, so cell size is part of what the model sees.
    # 0 = older bundles (box side * cell_context).
    crop_um: float = 0.0
    # Diameter (micrometres) of the round window the model sees, centred in the crop; outside it
    # every pixel is one fixed colour. Every source is then framed alike: a dataset whose images
    # are smaller than the crop cannot show its padding, and the window's edge is the same for a
    # 40x bone-marrow scan and a 100x blood smear. 0 = the whole square (older bundles).
    window_um: float = 0.0
    # Grey levels only (the same grey in all three channels): morphology without the stain's colour style.
    grey: bool = False

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError("color_order must be RGB or BGR")
        if self.square not in ("pad", "crop"):
            raise ValueError("square must be 'pad' or 'crop'")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise ValueError("crop_fraction must be within [0.1, 1]")
        if not 8 <= self.input_size <= 1024:
            raise ValueError("input_size must be within [8, 1024]")
        if self.crop_um and not 5.0 <= self.crop_um <= 200.0:
            raise ValueError("crop_um must be 0 or within [5, 200] micrometres")
        if self.window_um and not (self.crop_um and 5.0 <= self.window_um <= self.crop_um * 1.5):
            raise ValueError("window_um needs crop_um and must be within [5, 1.5 x crop_um] micrometres")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stain_reference"] = [list(v) for v in self.stain_reference] if self.stain_reference else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown pre-processing settings: {sorted(unknown)}")
        d = dict(d)
        if d.get("stain_reference"):
            d["stain_reference"] = tuple(tuple(float(x) for x in v) for v in d["stain_reference"])
        return cls(**d)

    @property
    def scale_offset(self) -> tuple[float, float]:
        return NORMALIZATIONS[self.normalization]


def shrink_to(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``img`` resized to ``width`` x ``height``: area averaging when shrinking. From 3x and more,
    an integer-factor area step first (OpenCV's fast path; 2-3x cheaper on a 12-megapixel frame)."""
    ih, iw = img.shape[:2]
    if (iw, ih) == (width, height):
        return img
    if width > iw or height > ih:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    k = min(iw // width, ih // height)
    if k >= 3:
        img = cv2.resize(img[: ih // k * k, : iw // k * k], (iw // k, ih // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def to_square(img: np.ndarray, mode: str = "pad") -> np.ndarray:
    h, w = img.shape[:2]
    if h == w:
        return img
    if mode == "crop":
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        return img[y : y + s, x : x + s]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return cv2.copyMakeBorder(img, top, s - h - top, left, s - w - left, cv2.BORDER_REFLECT_101)


def center_fraction(img: np.ndarray, fraction: float) -> np.ndarray:
    if fraction >= 1.0:
        return img
    h, w = img.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[y : y + ch, x : x + cw]


def enhance(img: np.ndarray) -> np.ndarray:
    """3x3 median, then sharpen as image - 0.9 * Laplacian (Minia prototype)."""
    med = cv2.medianBlur(img, 3)
    lap = cv2.Laplacian(med.astype(np.float32), cv2.CV_32F, ksize=1)
    return np.clip(med.astype(np.float32) - 0.9 * lap, 0, 255).astype(np.uint8)


WINDOW_FILL = 240  # the colour outside the round window: plain light background


def window_mask(size: int, pp: Preprocessing) -> np.ndarray | None:
    """Boolean (size, size) mask of the round window, or None when the model sees the whole square."""
    if not pp.window_um:
        return None
    r = size * pp.window_um / pp.crop_um / 2.0
    c = (size - 1) / 2.0
    yy, xx = np.ogrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= r * r


def lab_stats(img: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab = (lab[mask] if mask is not None else lab.reshape(-1, 3)).astype(np.float64)
    return tuple(lab.mean(0)), tuple(lab.std(0) + 1e-6)


def stain_normalize(img: np.ndarray, reference, mask: np.ndarray | None = None) -> np.ndarray:
    """Reinhard: match each Lab channel's mean and spread (inside ``mask``) to the reference."""
    ref_mean, ref_std = (np.asarray(v, np.float64) for v in reference)
    mean, std = (np.asarray(v) for v in lab_stats(img, mask))
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float64)
    lab = (lab - mean) / std * ref_std + ref_mean
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def stain_reference(images, pp: Preprocessing | None = None
                    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean Lab statistics of prepared (resized, not yet normalised) crops, inside the round
    window if ``pp`` has one: the target of ``stain_normalize``."""
    images = list(images)
    mask = window_mask(images[0].shape[0], pp) if pp is not None and images else None
    stats = [lab_stats(img, mask) for img in images]
    mean = tuple(float(x) for x in np.mean([m for m, _ in stats], axis=0))
    std = tuple(float(x) for x in np.mean([sd for _, sd in stats], axis=0))
    return mean, std


def prepare_cell(img: np.ndarray, pp: Preprocessing, *, from_dataset: bool = False) -> np.ndarray:
    """An RGB uint8 cell image -> uint8 (S, S, 3) in the model's colour order.

    ``from_dataset`` applies ``crop_fraction`` (single-cell dataset images);
    field crops from the device are already framed by ``cell_context``.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got shape {img.shape} {img.dtype}")
    if from_dataset:
        img = center_fraction(img, pp.crop_fraction)
    img = to_square(img, pp.square)
    if pp.enhance:
        img = enhance(img)
    s = pp.input_size
    img = shrink_to(img, s, s)
    # After resizing: cheaper, and the reference is measured at exactly this stage.
    mask = window_mask(s, pp) if pp.crop_um else None
    if pp.stain_reference is not None:
        img = stain_normalize(img, pp.stain_reference, mask)
    if pp.grey:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if mask is not None:
        img = img.copy()
        img[~mask] = WINDOW_FILL
    if pp.color_order == "BGR":
        img = img[..., ::-1]
    return np.ascontiguousarray(img)


def normalize(batch: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 pixels -> float32 model input."""
    scale, offset = pp.scale_offset
    return batch.astype(np.float32) * np.float32(scale) + np.float32(offset)


def background_colour(field: np.ndarray) -> np.ndarray:
    """The field's median colour from at most ~16k pixels (cheap on a 12-megapixel frame)."""
    h, w = field.shape[:2]
    step = max(1, int(np.sqrt(h * w / 16384)))
    return np.median(field[::step, ::step].reshape(-1, field.shape[2]), axis=0).astype(field.dtype)


def crop_square(field: np.ndarray, box: tuple[int, int, int, int], side: float,
                max_side: int = 0) -> np.ndarray:
    """A square crop of ``side`` pixels centred on ``box`` (x1, y1, x2, y2); with
    ``max_side``, a larger crop comes out shrunk to ``max_side`` (only its pixels are read:
    a crop of a 12-megapixel frame is never copied at full size).

    Parts outside the field are filled with the field's median colour (plain
    background), so a cell near the edge is still centred in its crop and no
    mirrored copies of cells are invented.
    """
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(8, int(round(side)))
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    h, w = field.shape[:2]
    out_side = side if not max_side or side <= max_side else max_side
    f = out_side / side
    inside = left >= 0 and top >= 0 and left + side <= w and top + side <= h
    if inside:
        view = field[top : top + side, left : left + side]
        return view if f == 1 else shrink_to(view, out_side, out_side)
    out = np.empty((out_side, out_side, field.shape[2]), field.dtype)
    out[:] = background_colour(field)
    sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    if sx1 > sx0 and sy1 > sy0:
        ox0, oy0 = int(round((sx0 - left) * f)), int(round((sy0 - top) * f))
        ox1, oy1 = min(out_side, int(round((sx1 - left) * f))), min(out_side, int(round((sy1 - top) * f)))
        if ox1 > ox0 and oy1 > oy0:
            out[oy0:oy1, ox0:ox1] = shrink_to(field[sy0:sy1, sx0:sx1], ox1 - ox0, oy1 - oy0)
    return out


def crop_box(field: np.ndarray, box: tuple[int, int, int, int], context: float, max_side: int = 0) -> np.ndarray:
    """A square crop centred on ``box``, side = box side * context (older bundles)."""
    x1, y1, x2, y2 = box
    return crop_square(field, box, max(x2 - x1, y2 - y1) * context, max_side)
