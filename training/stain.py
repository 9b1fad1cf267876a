"""Other labs' stain looks, made before the device's normalisation.

A clinic's smear differs from the training labs' in stain (May-Grunwald-Giemsa, Wright, Giemsa,
Leishman, rapid Field's-type stains with a yellow-brown background), in how long it was stained
(faded, over-stained) and in its camera (white balance, gamma). ``restain`` draws one such look in
optical-density space: each stain's strength and hue (its absorption vector turned a little), a
tinted background, then the camera's channel gains and gamma. Training shows the model restained
copies of every cell *through the device's own pre-processing* (``prepare_cell``: resize, Reinhard
normalisation, the round window), so it learns what normalisation leaves of another lab's look,
not the raw look the device never shows it.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from device.analysis.preprocess import Preprocessing, prepare_cell
from device.imageio import read_image

# Romanowsky stains as two absorbers (Ruifrok & Johnston's haematoxylin/eosin vectors stand in for the
# azure-methylene blue and eosin of the Romanowsky family), plus a residual third.
_RGB_FROM_STAIN = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
_RGB_FROM_STAIN /= np.linalg.norm(_RGB_FROM_STAIN, axis=1, keepdims=True)
# Background tints in optical density (absorbed blue = yellow; green = pink; red = blue-grey).
_TINTS = np.array([[0.02, 0.08, 0.35], [0.02, 0.15, 0.04], [0.12, 0.05, 0.02], [0.06, 0.06, 0.06]], np.float64)


def restain(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """An RGB uint8 image in another stain look (same size and type)."""
    s = float(strength)
    od = -np.log((img.astype(np.float64) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ np.linalg.inv(_RGB_FROM_STAIN)
    # Stain strength: faded (0.55x) to over-stained (1.6x), each stain on its own.
    conc[:, :2] *= np.exp(rng.uniform(-0.6, 0.47, 2) * s)
    # Stain hue: each absorption vector turned by ~0.2 rad on average (Wright vs Giemsa vs Leishman).
    vectors = _RGB_FROM_STAIN.copy()
    vectors[:2] += rng.normal(0.0, 0.18 * s, (2, 3))
    vectors = np.abs(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    od = conc @ vectors
    # Background tint (rapid stains: yellow-brown), strongest on the light background.
    if rng.random() < 0.6:
        tint = _TINTS[rng.integers(len(_TINTS))] * rng.uniform(0.2, 1.3) * s
        od += tint
    out = 256.0 * np.exp(-od) - 1.0
    # Camera: white balance and gamma.
    out = np.clip(out.reshape(img.shape), 0.0, 255.0) / 255.0
    out = out * np.exp(rng.normal(0.0, 0.06 * s, 3))
    out = np.clip(out, 0.0, 1.0) ** np.exp(rng.uniform(-0.25, 0.25) * s)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def load_stain_variants(records, pp: Preprocessing, variants: int, strength: float, seed: int,
                        threads: int = 0) -> np.ndarray:
    """(cells, variants, S, S, 3) uint8: restained copies of every cell ``training.data.load_cells``
    cuts from ``records`` (same views, same order), each prepared as the device prepares a cell."""
    from training.data import record_views

    def one(i: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, i])
        try:
            views = record_views(read_image(records[i].path), records[i], pp)
        except Exception:  # noqa: BLE001 - an unreadable image gives no cell, as in load_cells
            return []
        return [np.stack([prepare_cell(restain(v, rng, strength), pp) for _ in range(variants)]) for v in views]

    s = pp.input_size
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        crops = [c for cs in pool.map(one, range(len(records))) for c in cs]
    return np.stack(crops) if crops else np.zeros((0, variants, s, s, 3), np.uint8)
