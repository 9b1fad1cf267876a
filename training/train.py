"""``leukoscope train``: data -> split -> model -> run folder with the evaluation report."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from device.model import vocabulary
from training import splits
from training.config import Recipe
from training.datasets import Dataset, Record, read_source


@dataclass
class PreparedData:
    datasets: list[Dataset]
    records: list[Record]  # after de-duplication
    split: splits.Split
    dedup: splits.Deduplicated
    class_names: list[str]

    def part(self, name: str) -> list[Record]:
        return self.split.records(self.records, name)


def library_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("numpy", "tensorflow", "keras", "cv2", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is simply not recorded
            pass
    return out


def prepare_data(recipe: Recipe) -> PreparedData:
    class_names = list(vocabulary.task_labels(recipe.task))
    datasets = [read_source(s.kind, s.path, **s.options) for s in recipe.data.sources]
    # Each source's labels as the task counts them (e.g. a promyelocyte is an "ig" for the screen).
    records = [replace(r, label=vocabulary.task_label(recipe.task, r.label)) for d in datasets for r in d.records
               if vocabulary.task_label(recipe.task, r.label)]
    if not records:
        raise ValueError(f"no images with labels of task {recipe.task!r} in the given sources")
    dedup = splits.deduplicate(records)
    split = splits.make_split(dedup.records, recipe.data.split, recipe.seed)
    kept = dedup.records
    if recipe.data.max_per_class:
        # Cap each class within each split, seeded, after the split (so the cap cannot leak).
        rng = np.random.default_rng(recipe.seed)
        capped = []
        for part in splits.SPLITS:
            for name in class_names:
                members = [r for r in split.records(kept, part) if r.label == name]
                if len(members) > recipe.data.max_per_class:
                    idx = rng.choice(len(members), recipe.data.max_per_class, replace=False)
                    members = [members[i] for i in sorted(idx)]
                capped.extend(members)
        kept = sorted(capped, key=lambda r: (r.dataset, r.relpath))
        split.counts = {p: {n: sum(1 for r in kept if split.assignment[r.path] == p and r.label == n)
                            for n in class_names} for p in splits.SPLITS}
    return PreparedData(datasets, kept, split, dedup, class_names)


def source_summaries(data: PreparedData) -> list[dict]:
    return [{"name": d.info.name, "root": str(d.root), "licence": d.info.licence, "citation": d.info.citation,
             "subject_ids": d.info.subject_ids, "kind": d.info.kind, "um_per_px": d.info.um_per_px,
             "um_per_px_source": d.info.um_per_px_source, "about": d.info.about} for d in data.datasets]


def new_run_dir(out_root: Path, recipe: Recipe) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = out_root / f"{recipe.name or recipe.task}-{stamp}"
    run_dir, i = base, 1
    while run_dir.exists():
        i += 1
        run_dir = base.with_name(f"{base.name}-{i}")
    run_dir.mkdir(parents=True)
    return run_dir


def with_stain_reference(records: list[Record], pp, seed: int, n: int = 400):
    """Measure the stain reference on a seeded sample of the training split only."""
    from dataclasses import replace

    from device.analysis.preprocess import stain_reference
    from training.data import load_cells

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(records), min(n, len(records)), replace=False)
    plain = replace(pp, stain_reference=None)
    sample = [records[i] for i in sorted(idx)]
    crops = load_cells(sample, plain, sorted({r.label for r in sample})).x
    return replace(pp, stain_reference=stain_reference(crops, pp))


def configure_tensorflow(seed: int, threads: int) -> None:
    import keras
    import tensorflow as tf

    threads = threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        pass  # already initialised in this process (tests run several trainings)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(recipe: Recipe, out_root: str | Path = "runs", config_text: str | None = None,
          log=print) -> Path:
    import keras
    import tensorflow as tf

    from training.augment import augment_image
    from training.data import load_cells
    from training.metrics import per_image
    from training.models import build_model
    from training.report import build_report, plot_curves, write_report
    from device.analysis.preprocess import normalize

    t_start = time.monotonic()
    configure_tensorflow(recipe.seed, recipe.train.threads)
    data = prepare_data(recipe)
    run_dir = new_run_dir(Path(out_root), recipe)
    splits.write_manifest(run_dir, data.records, data.split, data.dedup, source_summaries(data))
    (run_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    if config_text is not None:
        (run_dir / "config.toml").write_text(config_text)
    log(f"run folder: {run_dir}")
    log(f"split by {data.split.unit}: " + ", ".join(
        f"{p} {sum(data.split.counts[p].values())}" for p in splits.SPLITS)
        + f"; {data.dedup.duplicates_removed} duplicate files removed")

    pp = recipe.preprocessing
    names = data.class_names
    if recipe.data.stain_normalize:
        pp = with_stain_reference(data.part("train"), pp, recipe.seed)
        recipe.preprocessing = pp
        (run_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        log(f"stain reference (Lab mean, std): {pp.stain_reference}")
    # Every image through the device's own field path (finder, physical framing, preparation).
    sets = {p: load_cells(data.part(p), pp, names) for p in splits.SPLITS}
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = ((sets[p].x, sets[p].y) for p in splits.SPLITS)
    cells_summary = {p: sets[p].summary() for p in splits.SPLITS}
    if not len(y_tr):
        raise ValueError(f"the cell finder found no white cell in any of the {len(sets['train'].records)} training "
                         "images: check the sources' pixel size (um_per_px) and that they show stained white cells")
    log(f"images loaded in {time.monotonic() - t_start:.0f} s: " + "; ".join(
        f"{p} {c['images']} images -> {c['crops']} cells, {c['images_without_cell']} without a cell"
        for p, c in cells_summary.items()))

    n_classes = len(names)
    source_of = np.array([sets["train"].records[i].dataset for i in sets["train"].image])
    w_tr = example_weights(y_tr, source_of, names, recipe.train)
    log("mean example weight per class and source: " + "; ".join(
        f"{names[c]}/{src} {w_tr[(y_tr == c) & (source_of == src)].mean():.2f} (n={int(((y_tr == c) & (source_of == src)).sum())})"
        for c in range(n_classes) for src in sorted(set(source_of)) if ((y_tr == c) & (source_of == src)).any()))
    scale, offset = pp.scale_offset
    aug = recipe.augment
    bs = recipe.train.batch_size
    if aug.stain_variants:
        from training.stain import load_stain_variants

        t0 = time.monotonic()
        variants = load_stain_variants(sets["train"].records, pp, aug.stain_variants, aug.stain_strength,
                                       recipe.seed)
        if len(variants) != len(x_tr):
            raise RuntimeError(f"stain variants: {len(variants)} cells for {len(x_tr)} training cells")
        x_tr = np.concatenate([x_tr[:, None], variants], axis=1)  # (cells, 1 + variants, S, S, 3)
        del variants
        log(f"{aug.stain_variants} restained copies of every training cell in {time.monotonic() - t0:.0f} s")

    from device.analysis.preprocess import WINDOW_FILL, window_mask

    window = window_mask(pp.input_size, pp) if pp.crop_um else None

    def train_map(seed, item):
        x, y, w = item
        if aug.stain_variants:  # one of the cell's looks, the lab's own or a restained one
            pick = tf.random.stateless_uniform((), tf.stack([seed[1], seed[0]]), 0, aug.stain_variants + 1,
                                               dtype=tf.int32)
            x = x[pick]
        x = augment_image(x, aug, seed, window, float(WINDOW_FILL))
        if pp.grey:  # colour jitter must not bring back the colour the device removes
            x = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        return x, y, w

    def to_model(x, y, w):
        x = tf.cast(x, tf.float32) * scale + offset
        return x, tf.one_hot(y, n_classes), w

    ds_train = (tf.data.Dataset.from_tensor_slices((x_tr, y_tr, w_tr.astype(np.float32)))
                .shuffle(len(y_tr), seed=recipe.seed, reshuffle_each_iteration=True))
    seeds = tf.data.Dataset.random(seed=recipe.seed).batch(2)
    ds_train = (tf.data.Dataset.zip((seeds, ds_train)).map(train_map, num_parallel_calls=tf.data.AUTOTUNE,
                                                           deterministic=True)
                .batch(bs).map(to_model).prefetch(tf.data.AUTOTUNE))

    m = recipe.model
    model = build_model(m.name, pp.input_size, n_classes, dropout=m.dropout, width=m.width,
                        weights=m.weights, bn_momentum=m.bn_momentum, freeze_bn=m.freeze_bn)
    steps = int(np.ceil(len(y_tr) / bs))
    log(f"model {m.name}: {model.count_params():,} parameters, input {pp.input_size}px, {n_classes} classes")

    def compile_for(epochs: int, warmup_epochs: int, lr: float):
        total = steps * max(epochs, 1)
        warm = min(steps * warmup_epochs, max(total - 1, 0))
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr * (0.1 if warm else 1.0), decay_steps=max(total - warm, 1),
            warmup_target=lr if warm else None, warmup_steps=warm, alpha=0.01)
        model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=recipe.train.weight_decay),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.train.label_smoothing),
                      metrics=["accuracy"])

    x_va_in = normalize(x_va, pp)
    tracker = _BestOnValidation(x_va_in, y_va, n_classes, recipe.train.patience,
                                recipe.train.time_limit_minutes * 60.0, t_start, log)
    head = min(recipe.train.head_epochs, recipe.train.epochs)
    histories = []
    if head:
        # A new head on a pretrained backbone: train the head alone first, so its first large
        # gradients do not wreck the pretrained features.
        model.get_layer("backbone").trainable = False
        compile_for(head, 0, recipe.train.learning_rate)
        histories.append(model.fit(ds_train, epochs=head, callbacks=[tracker], verbose=0).history)
        model.get_layer("backbone").trainable = True
        if m.freeze_bn:  # trainable=True above re-enabled them
            for layer in model.get_layer("backbone").layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    rest = recipe.train.epochs - head
    if rest > 0 and not tracker.stopped:
        compile_for(rest, recipe.train.warmup_epochs, recipe.train.learning_rate * (0.5 if head else 1.0))
        histories.append(model.fit(ds_train, epochs=rest, callbacks=[tracker], verbose=0).history)
    history = {k: [float(v) for h in histories for v in h.get(k, [])] for k in ("loss", "accuracy")}
    history["val_balanced_accuracy"] = tracker.scores
    history["val_loss"] = tracker.losses
    history["best_epoch"] = tracker.best_epoch + 1
    if tracker.best_weights is not None:
        model.set_weights(tracker.best_weights)
    model.save(run_dir / "model.keras")
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    plot_curves(run_dir / "curves.png", history)

    val_probs = model.predict(x_va_in, batch_size=128, verbose=0)
    test_probs = model.predict(normalize(x_te, pp), batch_size=128, verbose=0)
    report = build_report(names, test_probs, y_te, val_probs, y_va, recipe.evaluate)
    report.update({
        "split": "test", "task": recipe.task, "model": m.name, "unit": data.split.unit,
        "epochs_run": len(tracker.scores), "best_epoch": tracker.best_epoch + 1,
        "train_seconds": round(time.monotonic() - t_start, 1), "versions": library_versions(),
        "unit_of_figures": "cell (each crop the device's finder cut from the test images)",
        "cells": cells_summary,
    })
    if any(r.kind == "field" for r in sets["test"].records):
        labels_of = np.array([names.index(r.label) for r in sets["test"].records], np.int64)
        report["per_image"] = per_image(test_probs.argmax(1), sets["test"].image, labels_of, len(names))
        log(f"per field (majority of its cells): accuracy {report['per_image']['accuracy']:.4f}, "
            f"{report['per_image']['images_without_cell']} fields without a cell")
    write_report(run_dir, report, names, test_probs, y_te)
    np.savez_compressed(run_dir / "test_predictions.npz", probs=test_probs, y=y_te)
    log(f"test balanced accuracy {report['balanced_accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} "
        f"({report['n']} images); report in {run_dir / 'report.json'}")
    return run_dir


def example_weights(y: np.ndarray, source: np.ndarray, names: list[str], cfg) -> np.ndarray:
    """Each example's loss weight, mean 1: classes weigh alike (``cfg.class_weights``), with
    ``balance = "source"`` each source weighs alike within a class, and ``cfg.cost`` multiplies a
    class's weight (a blast called lymphocyte, or a lymphocyte called blast, should cost most)."""
    unknown = sorted(set(cfg.cost) - set(names))
    if unknown:
        raise ValueError(f"[train] cost names {unknown}, not labels of the task ({names})")
    if cfg.balance not in ("class", "source"):
        raise ValueError(f"[train] balance must be 'class' or 'source', not {cfg.balance!r}")
    w = np.ones(len(y), np.float64)
    present = [c for c in range(len(names)) if (y == c).any()]
    for c in present:
        in_c = y == c
        if cfg.balance == "source":
            srcs = sorted(set(source[in_c]))
            for src in srcs:
                both = in_c & (source == src)
                w[both] = 1.0 / (len(srcs) * both.sum())
        else:
            w[in_c] = 1.0 / in_c.sum()
        if not cfg.class_weights:
            w[in_c] *= in_c.sum()
        w[in_c] *= float(cfg.cost.get(names[c], 1.0))
    return w * len(y) / w.sum()


class _BestOnValidation:
    """Keras callback: validation balanced accuracy each epoch, keep the best
    weights, optional patience and wall-clock limit."""

    def __new__(cls, *args, **kwargs):
        import keras

        class Impl(keras.callbacks.Callback):
            def __init__(self, x_val, y_val, n_classes, patience, time_limit, t_start, log):
                super().__init__()
                self.x_val, self.y_val, self.n = x_val, y_val, n_classes
                self.patience, self.time_limit, self.t_start, self.log = patience, time_limit, t_start, log
                self.scores, self.losses = [], []
                self.best, self.best_epoch, self.best_weights = -1.0, -1, None
                self.stopped = False

            def on_epoch_end(self, epoch, logs=None):
                epoch = len(self.scores)  # counted across the head-only and whole-network fits
                probs = self.model.predict(self.x_val, batch_size=128, verbose=0)
                pred = probs.argmax(1)
                recalls = [float((pred[self.y_val == c] == c).mean()) for c in range(self.n) if (self.y_val == c).any()]
                score = float(np.mean(recalls))
                eps = 1e-7
                loss = float(-np.mean(np.log(probs[np.arange(len(self.y_val)), self.y_val] + eps)))
                self.scores.append(score)
                self.losses.append(loss)
                if score > self.best:
                    self.best, self.best_epoch = score, epoch
                    self.best_weights = self.model.get_weights()
                elapsed = time.monotonic() - self.t_start
                self.log(f"epoch {epoch + 1}: loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
                         f"val_loss {loss:.4f} val_bal_acc {score:.4f} [{elapsed:.0f} s]")
                if self.patience and epoch - self.best_epoch >= self.patience:
                    self.model.stop_training = self.stopped = True
                if self.time_limit and elapsed >= self.time_limit:
                    self.log("time limit reached: stopping")
                    self.model.stop_training = self.stopped = True

        return Impl(*args, **kwargs)
