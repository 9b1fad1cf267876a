"""Load records into arrays through the device's own field path.

Every image reaches the model as it would on the box: the device's finder locates
its white cells (``device.analysis.pipeline.locate``, at the image's physical scale), each
cell is cut from the image with the bundle's physical framing (``cell_views``) and
prepared by ``prepare_cell``. A single-cell image gives its central cell; a field
image (one label for the whole field) gives one crop per white cell found, labelled
with the image's class. Images in which no cell is found are counted, never dropped
silently; nor are images that cannot be read (a truncated JPEG in a public set): each is counted
with its reason, and the run goes on.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from device.analysis.cells import central_cell
from device.imageio import DecoderBusy, ImageError, read_image
from device.analysis.pipeline import FieldSettings, cell_views, locate
from device.analysis.preprocess import Preprocessing, prepare_cell
from training.datasets import Record


@dataclass
class CellSet:
    x: np.ndarray  # uint8 crops, N x S x S x 3
    y: np.ndarray  # class index per crop
    image: np.ndarray  # index into ``records`` per crop
    records: list[Record]
    no_cell: list[Record] = field(default_factory=list)  # images in which the finder found no cell
    unreadable: list[tuple[Record, str]] = field(default_factory=list)  # images that could not be read, and why

    def summary(self) -> dict:
        return {"images": len(self.records), "crops": int(len(self.y)), "images_without_cell": len(self.no_cell),
                "examples_without_cell": [r.relpath for r in self.no_cell[:10]],
                "images_unreadable": len(self.unreadable),
                "examples_unreadable": [f"{r.relpath}: {why}" for r, why in self.unreadable[:10]]}


def record_views(img: np.ndarray, record: Record, pp: Preprocessing,
                 settings: FieldSettings | None = None) -> list[np.ndarray]:
    """The classifier's views (not yet prepared) of one dataset image, as the device cuts them."""
    s = settings or FieldSettings()
    if record.kind == "cell" and s.cells.skip_edge_cells:
        # A single-cell image is framed on its cell: its border is not a field's edge, and a large cell
        # touching it is still the whole cell.
        s = replace(s, cells=replace(s.cells, skip_edge_cells=False))
    if not pp.crop_um:
        raise ValueError("training needs physical framing: set preprocessing.crop_um (micrometres)")
    loc = locate(img, s, um_per_px=record.um_per_px, skip_qc=True)
    cells = loc.cells
    if record.kind == "cell":
        c = central_cell(cells, img.shape)
        cells = [c] if c is not None else []
    return cell_views(img, cells, loc.scale.um_per_px, pp)


def load_cells(records: list[Record], pp: Preprocessing, class_names: list[str], threads: int = 0,
               settings: FieldSettings | None = None) -> CellSet:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not part of the task ({class_names})")

    def one(rec: Record) -> list[np.ndarray] | str:
        """The record's prepared crops, or why its image cannot be read."""
        for _ in range(20):
            try:
                img = read_image(rec.path)
                break
            except DecoderBusy:  # the decode slots are shared: wait for one, never count it as damaged
                continue
            except ImageError as exc:
                return str(exc)
        else:
            return "the decoder stayed busy"
        return [prepare_cell(v, pp) for v in record_views(img, rec, pp, settings)]

    workers = threads or os.cpu_count() or 1
    xs, ys, owner, missing, unreadable = [], [], [], [], []
    with ThreadPoolExecutor(workers) as pool:
        for i, (rec, crops) in enumerate(zip(records, pool.map(one, records))):
            if isinstance(crops, str):
                unreadable.append((rec, crops))
                continue
            if not crops:
                missing.append(rec)
            xs += crops
            ys += [index[rec.label]] * len(crops)
            owner += [i] * len(crops)
    s = pp.input_size
    x = np.stack(xs) if xs else np.zeros((0, s, s, 3), np.uint8)
    return CellSet(x, np.array(ys, np.int64), np.array(owner, np.int64), list(records), missing, unreadable)


def load_records(records: list[Record], pp: Preprocessing, class_names: list[str],
                 threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    cs = load_cells(records, pp, class_names, threads)
    return cs.x, cs.y
