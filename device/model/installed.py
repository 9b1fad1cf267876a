"""Which model bundle the appliance uses, and installing a new one safely.

Installed bundles live in ``data_dir/models``: ``current.lkb`` and
``previous.lkb``. A new bundle is validated (archive, checksum, tensors) before
it replaces the current one by an atomic rename; the old one is kept for rollback.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from device.model.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from device.model.classifier import Classifier, ood_scores
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


def trial_crops(bundle: Bundle, n: int = 6) -> np.ndarray:
    """Cell-sized crops for a trial run: the bundle's own ``samples.npz`` when it carries one, else
    crops of the bundled blood-smear fields, prepared with the bundle's own pre-processing."""
    from importlib import resources

    from device.imageio import read_image
    from device.analysis.preprocess import prepare_cell

    s = bundle.preprocessing.input_size
    if "samples.npz" in bundle.files:
        from device.model.bundle import read_npz

        crops = read_npz(bundle.files["samples.npz"], "samples.npz").get("crops")
        if crops is None:
            raise BundleError("samples.npz is damaged (it holds no 'crops')")
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8 or not len(crops):
            raise BundleError(f"samples.npz crops have shape {crops.shape} {crops.dtype}; expected (n, {s}, {s}, 3) uint8")
        return crops[:64]
    folder = resources.files("device").joinpath("assets/fields")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name)[:n]:
        field = read_image(Path(str(entry)))
        h, w = field.shape[:2]
        side = min(h, w) // 3
        out.append(prepare_cell(field[h // 2 - side // 2:h // 2 + side // 2, w // 2 - side // 2:w // 2 + side // 2],
                                bundle.preprocessing))
    return np.stack(out)


def validated(bundle: Bundle, threads: int = 1) -> Classifier:
    """The one rule for upload, ``model install`` and start-up: a real interpreter loads the model,
    its tensors match the metadata, and a trial run on real crops gives finite probabilities for
    every label (and, with an unfamiliar-cell check, embeddings of the width ood.npz expects)."""
    clf = Classifier(bundle, threads=threads)
    crops = trial_crops(bundle)
    try:
        probs, emb = clf.raw(crops)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise BundleError(f"{bundle.name}: the trial run on sample crops failed ({exc})") from None
    if probs.shape != (len(crops), len(bundle.labels)) or not np.isfinite(probs).all():
        raise BundleError(f"{bundle.name}: the trial run gave probabilities of shape {probs.shape} or non-finite values")
    if bundle.ood is not None and bundle.thresholds.get("ood") is not None:
        if emb is None or emb.shape[-1] != bundle.ood["means"].shape[1]:
            width = None if emb is None else emb.shape[-1]
            raise BundleError(f"{bundle.name}: the model's embedding width {width} does not match ood.npz "
                              f"({bundle.ood['means'].shape[1]})")
        if not np.isfinite(ood_scores(emb, bundle.ood, probs.argmax(1))).all():
            raise BundleError(f"{bundle.name}: the unfamiliar-cell check gives non-finite distances")
    try:
        preds = clf.classify(crops[:2])  # the whole path a capture takes: thresholds, flags
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as exc:
        raise BundleError(f"{bundle.name}: the trial run on sample crops failed ({exc})") from None
    if len(preds) != min(2, len(crops)):
        raise BundleError(f"{bundle.name}: the trial run classified {len(preds)} of {min(2, len(crops))} crops")
    return clf


def load_validated(path: Path | None = None, data: bytes | None = None, threads: int = 1) -> tuple[Bundle, Classifier]:
    bundle = load_bundle(path, data)
    return bundle, validated(bundle, threads)


def load_active(configured: str, data_dir: Path, threads: int = 1) -> tuple[Bundle, Classifier, list[str]]:
    """The first bundle that loads and passes every check; problems with the others are returned."""
    problems = []
    for path in candidates(configured, data_dir):
        if not path.exists() and path != Path(configured).expanduser():
            continue
        try:
            bundle, clf = load_validated(path, threads=threads)
            return bundle, clf, problems
        except BundleError as exc:
            problems.append(str(exc))
            log.error("model bundle refused: %s", exc)
    raise BundleError("no usable model bundle: " + "; ".join(problems))


def install(data: bytes, data_dir: Path, threads: int = 1) -> Bundle:
    """Validate, then make it current; the old current becomes previous."""
    bundle, _ = load_validated(data=data, threads=threads)  # the same rule as at start-up
    d = models_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    current = d / "current.lkb"
    if current.exists():
        write_atomic(d / "previous.lkb", current.read_bytes())
    write_atomic(current, data)
    return load_bundle(current)


def builtin(data_dir: Path) -> list[tuple[str, Bundle]]:
    """The bundles shipped with the appliance (stem, bundle), for the Settings page's switch."""
    from device.model.bundle import builtin_bundle_paths

    out = []
    for stem, path in builtin_bundle_paths().items():
        try:
            out.append((stem, load_bundle(path)))
        except BundleError:
            continue  # a damaged shipped file is reported by `leukoscope model check`, not here
    return out


def bundle_of_sample(data_dir: Path, used: list[dict], in_use: Bundle) -> Bundle | None:
    """The bundle whose model classified most of a sample's fields (``records.models_of``), found among the
    bundle in use, the installed ones and the shipped ones, so that the result page and the PDF state the
    limits of the model that produced the result. The bundle in use when no field was captured; None when
    that model is no longer on the appliance."""
    if not used:
        return in_use
    sha = max(used, key=lambda u: u["fields"])["sha256"]
    if not sha:
        return None  # not recorded: never show another model's limits in its place
    if sha == in_use.sha256:
        return in_use
    from device.model.bundle import builtin_bundle_paths

    d = models_dir(data_dir)
    for path in (d / "current.lkb", d / "previous.lkb", *builtin_bundle_paths().values()):
        try:
            b = load_bundle(path) if path.is_file() else None
        except BundleError:
            continue
        if b is not None and b.sha256 == sha:
            return b
    return None


def install_builtin(stem: str, data_dir: Path, threads: int = 1) -> Bundle:
    """Make a shipped bundle current, through the same checks as an upload (the old current is kept)."""
    from device.model.bundle import builtin_bundle_paths

    path = builtin_bundle_paths().get(stem)
    if path is None:
        raise BundleError(f"no shipped model named {stem!r}")
    return install(path.read_bytes(), data_dir, threads)


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
