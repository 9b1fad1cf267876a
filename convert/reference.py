"""The bundle's reference cells (``reference.npz``): a few hundred of its own held-out cells (every blast up to
a limit, and normal cells of every class), with their embeddings (float16), labels and the bundle's own
probabilities, computed through the device's path (finder, framing, int8 LiteRT). The box checks every site
calibration against them before it may be used. ``leukoscope model add-reference BUNDLE --out NEW``."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from device.imageio import write_atomic
from device.model.bundle import REFERENCE_MEMBER, Bundle, load_bundle, pack
from device.model.classifier import Classifier

MAX_BLASTS = 150
PER_LABEL = 40  # per (dataset, label) of the other classes


def reference_records(bundle: Bundle, roots: dict[str, str] | None = None, max_blasts: int = MAX_BLASTS,
                      per_label: int = PER_LABEL, seed: int = 0) -> list:
    """The bundle's recorded test files (checksums verified), thinned: blasts up to ``max_blasts``, other
    labels up to ``per_label`` per source."""
    from training.recorded import recorded_files

    if "test_files.csv" not in bundle.files:
        raise ValueError(f"{bundle.name} records no test files: its reference cells cannot be computed")
    cats = dict(zip(bundle.labels, bundle.categories))
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list] = {}
    for f in recorded_files(bundle, roots):
        r = f.record
        key = ("*", r.label) if cats.get(r.label) == "malignant" else (r.dataset, r.label)
        groups.setdefault(key, []).append(f)
    out = []
    for key in sorted(groups):
        group = groups[key]
        limit = max_blasts if key[0] == "*" else per_label
        for i in sorted(rng.choice(len(group), min(limit, len(group)), replace=False)):
            if group[i].problem() is None:  # missing or another content: never a reference cell
                out.append(group[i].record)
    return out


def embed(bundle: Bundle, records, threads: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, label indices, probabilities) of records through the device's path."""
    from training.data import load_cells

    cs = load_cells(records, bundle.preprocessing, list(bundle.labels))
    clf = Classifier(bundle, threads=threads)
    probs, embs = [], []
    for i in range(0, len(cs.x), 64):
        p, e = clf.raw(cs.x[i : i + 64])
        if e is None:
            raise ValueError(f"{bundle.name} has no embedding output: a reference set needs one")
        probs.append(p)
        embs.append(e)
    return np.concatenate(embs), cs.y.astype(np.int16), np.concatenate(probs)


def reference_member(emb: np.ndarray, y: np.ndarray, probs: np.ndarray, labels: list[str], categories: list[str],
                     source: str, thin: bool = False, seed: int = 0) -> tuple[bytes, dict]:
    """``reference.npz`` and its metadata entry. ``thin``: keep blasts up to MAX_BLASTS and other labels up to
    2 x PER_LABEL each (``convert`` passes the whole validation split)."""
    y = np.asarray(y)
    if thin:
        rng = np.random.default_rng(seed)
        keep = []
        for i, cat in enumerate(categories):
            idx = np.nonzero(y == i)[0]
            limit = MAX_BLASTS if cat == "malignant" else 2 * PER_LABEL
            keep += sorted(rng.choice(idx, min(limit, len(idx)), replace=False).tolist())
        keep = np.array(sorted(keep), int)
        emb, y, probs = emb[keep], y[keep], probs[keep]
    buf = io.BytesIO()
    np.savez_compressed(buf, embeddings=np.asarray(emb, np.float16), labels=y.astype(np.int16),
                        probabilities=np.asarray(probs, np.float16))
    counts = {n: int((y == i).sum()) for i, n in enumerate(labels) if (y == i).any()}
    return buf.getvalue(), {"cells": int(len(y)), "per_label": counts, "source": source, "bytes": len(buf.getvalue())}


def add_reference(src: str | Path, out: str | Path, roots: dict[str, str] | None = None, threads: int = 2) -> dict:
    """Write a copy of bundle ``src`` carrying its reference cells; returns what was added."""
    bundle = load_bundle(src)
    emb, y, probs = embed(bundle, reference_records(bundle, roots), threads)
    files = dict(bundle.files)
    meta = dict(bundle.metadata)
    files[REFERENCE_MEMBER], meta["reference"] = reference_member(emb, y, probs, bundle.labels, bundle.categories,
                                                                  "test_files.csv, device path")
    files["metadata.json"] = json.dumps(meta, indent=2).encode()
    write_atomic(Path(out), pack(files))
    load_bundle(out)  # what we wrote must load and validate
    return meta["reference"]
