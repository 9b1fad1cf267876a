"""Load records into arrays through the shared device pre-processing."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from device.imageio import read_image
from device.preprocess import Preprocessing, prepare_cell
from training.datasets import Record


def load_images(paths: list[str], pp: Preprocessing, threads: int = 0) -> np.ndarray:
    """Decode and pre-process (uint8, N x S x S x 3). Decoding releases the GIL, so threads help."""
    def one(path: str) -> np.ndarray:
        return prepare_cell(read_image(path), pp, from_dataset=True)

    workers = threads or os.cpu_count() or 1
    out = np.empty((len(paths), pp.input_size, pp.input_size, 3), np.uint8)
    with ThreadPoolExecutor(workers) as pool:
        for i, arr in enumerate(pool.map(one, paths)):
            out[i] = arr
    return out


def load_records(records: list[Record], pp: Preprocessing, class_names: list[str],
                 threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not part of the task ({class_names})")
    x = load_images([r.path for r in records], pp, threads)
    y = np.array([index[r.label] for r in records], np.int64)
    return x, y
