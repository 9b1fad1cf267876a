"""Synthetic-layout, real-pixel field data for tests: real PBC cells pasted at a smaller
scale onto real BCCD backgrounds whose own white cell has been painted out."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from testkit.bccd import BCCD_ROOT, load_boxes

PBC_UM = 0.102  # PBC's pixel size (training/datasets.py)
BCCD_UM = 0.0845


def background(name: str, um_per_px: float) -> np.ndarray:
    """A BCCD field without its white cells, resampled to ``um_per_px``."""
    from device.imageio import read_image

    img = read_image(BCCD_ROOT / "JPEGImages" / f"{name}.jpg")
    mask = np.zeros(img.shape[:2], np.uint8)
    for x1, y1, x2, y2 in load_boxes(BCCD_ROOT / "Annotations" / f"{name}.xml"):
        cv2.rectangle(mask, (x1 - 10, y1 - 10), (x2 + 10, y2 + 10), 255, -1)
    img = cv2.inpaint(img, mask, 7, cv2.INPAINT_TELEA)
    f = BCCD_UM / um_per_px
    return cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)


def cell_disc(pbc_image: np.ndarray, um_per_px: float, radius_um: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """The central cell of a PBC image as a disc at ``um_per_px``, with a soft alpha mask."""
    h, w = pbc_image.shape[:2]
    r = int(radius_um / PBC_UM)
    cy, cx = h // 2, w // 2
    patch = pbc_image[cy - r:cy + r, cx - r:cx + r]
    side = max(8, round(2 * r * PBC_UM / um_per_px))
    patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[:side, :side]
    d = np.hypot(yy - side / 2, xx - side / 2) / (side / 2)
    alpha = np.clip((1.0 - d) / 0.25, 0, 1)[..., None]
    return patch, alpha


def paste(field: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    h, w = patch.shape[:2]
    region = field[y:y + h, x:x + w].astype(np.float32)
    field[y:y + h, x:x + w] = (alpha * patch + (1 - alpha) * region).astype(np.uint8)


def make_taleqani(root: Path, classes: dict[str, Path], per_class: int, um_per_px: float = 0.17,
                  cells_per_field: int = 2, seed: int = 0) -> Path:
    """``root/Original/<class>/*.jpg`` fields, each with ``cells_per_field`` real cells from
    the PBC folder given for its class, at ``um_per_px``."""
    from device.imageio import read_image

    rng = np.random.default_rng(seed)
    names = sorted(p.stem for p in (BCCD_ROOT / "Annotations").glob("*.xml"))
    for cls, folder in classes.items():
        cells = sorted(folder.glob("*.jpg"))
        out = root / "Original" / cls
        out.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            field = background(names[int(rng.integers(len(names)))], um_per_px)
            fh, fw = field.shape[:2]
            for k in range(cells_per_field):
                patch, alpha = cell_disc(read_image(cells[int(rng.integers(len(cells)))]), um_per_px)
                s = patch.shape[0]
                band = (fw - s) // cells_per_field
                x = int(k * band + rng.integers(0, max(1, band - s // 2)))
                y = int(rng.integers(0, fh - s))
                paste(field, patch, alpha, min(x, fw - s), y)
            cv2.imwrite(str(out / f"WBC-{cls}-{i:03d}.jpg"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    return root
