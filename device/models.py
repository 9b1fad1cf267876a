"""Which model bundle the appliance uses, and installing a new one safely.

Installed bundles live in ``data_dir/models``: ``current.lkb`` and
``previous.lkb``. A new bundle is validated (archive, checksum, tensors) before
it replaces the current one by an atomic rename; the old one is kept for rollback.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from device.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from device.classifier import Classifier
from device.imageio import write_atomic

log = logging.getLogger("leukoscope.models")


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def candidates(configured: str, data_dir: Path) -> list[Path]:
    out = []
    if configured:
        out.append(Path(configured).expanduser())
    d = models_dir(data_dir)
    out += [d / "current.lkb", d / "previous.lkb", default_bundle_path()]
    return out


def load_active(configured: str, data_dir: Path, threads: int = 1) -> tuple[Bundle, Classifier, list[str]]:
    """The first bundle that loads and passes every check; problems with the others are returned."""
    problems = []
    for path in candidates(configured, data_dir):
        if not path.exists() and path != Path(configured).expanduser():
            continue
        try:
            bundle = load_bundle(path)
            return bundle, Classifier(bundle, threads=threads), problems
        except BundleError as exc:
            problems.append(str(exc))
            log.error("model bundle refused: %s", exc)
    raise BundleError("no usable model bundle: " + "; ".join(problems))


def install(data: bytes, data_dir: Path, threads: int = 1) -> Bundle:
    """Validate, then make it current; the old current becomes previous."""
    bundle = load_bundle(data=data)
    Classifier(bundle, threads=threads)  # tensors, shapes and labels checked by a real interpreter
    d = models_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    current = d / "current.lkb"
    if current.exists():
        write_atomic(d / "previous.lkb", current.read_bytes())
    write_atomic(current, data)
    return load_bundle(current)


def rollback(data_dir: Path) -> Bundle:
    d = models_dir(data_dir)
    previous, current = d / "previous.lkb", d / "current.lkb"
    if not previous.exists():
        raise BundleError("there is no previous model to roll back to")
    bundle = load_bundle(previous)
    if current.exists():
        tmp = d / "rolled-back.lkb"
        os.replace(current, tmp)
        os.replace(previous, current)
        os.replace(tmp, previous)
    else:
        os.replace(previous, current)
    return bundle
