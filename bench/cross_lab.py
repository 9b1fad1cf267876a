"""The any-lab protocol (issue 20): leave-one-lab-out figures of the blast screen, on the device's path.

Every labelled source in ../shared/data is a lab. The bone-marrow set is the only blast source, so it
always trains; its figures are the in-lab ones, on each bundle's own held-out test split. The other
labs are held out:

- ``aml-lmu``: AML-LMU, peripheral blood of AML patients and controls (never trained on): its 22
  blasts (MYO, MOB) and its normal-blood cells (NGS, NGB, LYT, MON, EOS, BAS).
- ``jiangxi``: 300 normal cells, rapid stain, Motic camera (test only).
- ``bccd``: BCCD's 364 fields; every white cell of its boxes is a normal cell (test only). Cells are
  found by the device's finder in the whole field; "no cell" counts annotated white cells not found.
- ``pbc``: PBC's normal cells, scored by bundles trained WITHOUT PBC (``--loso``).

For each model (a name and one bundle per seed) and each held-out lab, with counts and 95 % Wilson
intervals: blast ROC-AUC, strict sensitivity (called blast), screening sensitivity (called blast or
sent to review), normal cells passed as normal / sent to review / called blast / called another
category, images without a cell found; and per sample, the share of 0 / 5 / 20 % blast samples of 100
cells drawn (with replacement) from that lab that the device's flag rules refer. Seeds are summarised
as mean and worst. Beside the models, a prototype-style baseline (a plain CNN on the whole single-cell
image resized, no physical framing, no stain work, argmax decision, as the published student projects
did) is trained here per seed and scored on the same labs.

    python -m bench.cross_lab --model screen-3=B1,B2,B3 --loso screen-3=L1,L2,L3 \
        --model screen-2.0=bench/reference/screen-2.0.lkb --baseline-seeds 3 [--card OUT.lkb]
    python -m bench.cross_lab --fast          # the shipped bundle on a few images per lab (CI)

Ends with ``RESULT {json}``: ``labs`` holds the first model's first bundle per lab (``pbc``: its first
``--loso`` bundle) with the keys ``normal_called_blast``, ``normal_review``, ``blast_auc``,
``screen_sensitivity``, ``no_cell`` (fractions); ``models`` holds every model's per-seed figures with
their mean and worst.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import result
from bench.blast_screen import AML_BLASTS, AML_NORMALS, share, test_records, thin

NORMAL_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
FRACTIONS = (0.0, 0.05, 0.20)
SAMPLE_CELLS = 100
KEYS = ("normal_called_blast", "normal_review", "blast_auc", "screen_sensitivity", "no_cell")


@dataclass
class Scored:
    """The device's decisions for every cell of one lab."""
    truth: list[str]  # "blast" or the cell's normal type (task label)
    blast_score: np.ndarray  # probability summed over malignant labels
    called_blast: np.ndarray  # malignant and not flagged
    flagged: np.ndarray  # sent to review
    passed: np.ndarray  # a normal type, not flagged
    counted: list  # device.records.counts.CountedCell per cell, for the per-sample rules
    images: int
    no_cell: int  # images (or annotated cells, for fields) in which no cell was found


# ---- scoring: the device's path (bundles) -------------------------------------------------------------

def _decisions(preds, bundle_categories, labels_of_bundle):
    from device.records.counts import CountedCell

    mal = [i for i, c in enumerate(bundle_categories) if c == "malignant"]
    probs = np.array([[p.probabilities[n] for n in labels_of_bundle] for p in preds]).reshape(len(preds), -1)
    category = np.array([p.category for p in preds])
    flagged = np.array([p.flag is not None for p in preds], bool)
    return (probs[:, mal].sum(1) if mal and len(preds) else np.zeros(len(preds)),
            (category == "malignant") & ~flagged, flagged, (category == "normal") & ~flagged,
            [CountedCell(p.label, p.category, p.flag) for p in preds])


def score_records(bundle, clf, records) -> Scored:
    from device.model import vocabulary
    from training.data import load_cells

    names = list(vocabulary.task_labels(bundle.meta.task))
    cs = load_cells(records, bundle.preprocessing, names)
    preds = []
    for i in range(0, len(cs.x), 64):
        preds += clf.classify(cs.x[i:i + 64])
    score, blast, flagged, passed, counted = _decisions(preds, bundle.categories, bundle.labels)
    return Scored([records[i].label for i in cs.image], score, blast, flagged, passed, counted, len(records),
                  len(records) - len(set(cs.image.tolist())))


def score_bccd(bundle, clf, views) -> Scored:
    """Whole fields through the device's locate -> crops -> classify; a found cell counts when it
    matches an annotated white cell (IoU >= 0.3); annotated cells not found count as "no cell"."""
    from device.analysis.pipeline import FieldLocator, cell_views
    from testkit.bccd import iou

    locator = FieldLocator()
    skip_edges = locator.settings.cells.skip_edge_cells
    crops, missed, total = [], 0, 0
    for v in views:
        loc = locator.locate(v.image, skip_qc=True)
        keep = []
        h, w = v.image.shape[:2]
        for t in v.boxes:
            if skip_edges and (t[0] <= EDGE_PX or t[1] <= EDGE_PX or t[2] >= w - EDGE_PX or t[3] >= h - EDGE_PX):
                continue  # cut by the frame: the device leaves it for the next field, neither found nor missed
            total += 1
            best = max(loc.cells, key=lambda c: iou(c.box, t), default=None)
            if best is None or iou(best.box, t) < 0.3 or best in keep:
                missed += 1
            else:
                keep.append(best)
        crops += cell_views(v.image, keep, loc.scale.um_per_px, bundle.preprocessing) if keep else []
    from device.analysis.preprocess import prepare_cell

    x = [prepare_cell(c, bundle.preprocessing) for c in crops]
    preds = []
    for i in range(0, len(x), 64):
        preds += clf.classify(np.stack(x[i:i + 64]))
    score, blast, flagged, passed, counted = _decisions(preds, bundle.categories, bundle.labels)
    return Scored(["normal"] * len(preds), score, blast, flagged, passed, counted, total, missed)


# ---- the prototype-style baseline ---------------------------------------------------------------------

BASELINE_SIZE = 96


def _whole(path: str) -> np.ndarray | None:
    import cv2

    from device.imageio import read_image

    try:
        return cv2.resize(read_image(path), (BASELINE_SIZE, BASELINE_SIZE), interpolation=cv2.INTER_AREA)
    except Exception:  # noqa: BLE001 - an unreadable image has no cell, as on the device path
        return None


def train_baseline(records, names: list[str], seed: int, epochs: int, out: Path, log=print):
    """A plain CNN on whole single-cell images resized to 96 px (Thanh et al.'s prototype), softmax and argmax:
    how the published student projects worked. Float Keras; no framing, no stain work, no review band."""
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(seed)
    imgs = [_whole(r.path) for r in records]
    keep = [i for i, im in enumerate(imgs) if im is not None]
    x = np.stack([imgs[i] for i in keep]).astype(np.float32) / 255.0
    y = np.array([names.index(records[i].label) for i in keep])
    model = build_model("thanh-cnn", BASELINE_SIZE, len(names), dropout=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t0 = time.monotonic()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    log(f"baseline seed {seed}: {len(y)} images, {epochs} epochs in {time.monotonic() - t0:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model


def score_baseline(model, names: list[str], records) -> Scored:
    from device.model import vocabulary
    from device.records.counts import CountedCell

    imgs = [_whole(r.path) for r in records]
    keep = [i for i, im in enumerate(imgs) if im is not None]
    if not keep:
        return Scored([], np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0, bool), [], len(records),
                      len(records))
    probs = model.predict(np.stack([imgs[i] for i in keep]).astype(np.float32) / 255.0, verbose=0, batch_size=128)
    top = probs.argmax(1)
    b = names.index("blast")
    cats = np.array([vocabulary.category_of(names[t]) for t in top])
    counted = [CountedCell(names[t], c, None) for t, c in zip(top, cats)]
    return Scored([records[i].label for i in keep], probs[:, b], top == b, np.zeros(len(keep), bool),
                  cats == "normal", counted, len(records), len(records) - len(keep))


def score_baseline_bccd(model, names, views) -> Scored:
    """The prototype on fields: each annotated white cell's box, doubled, resized (its crop, no framing)."""
    from device.analysis.preprocess import crop_box

    crops = [crop_box(v.image, t, 2.0) for v in views for t in v.boxes]
    import cv2
    from device.model import vocabulary
    from device.records.counts import CountedCell

    x = np.stack([cv2.resize(c, (BASELINE_SIZE, BASELINE_SIZE)) for c in crops]).astype(np.float32) / 255.0
    probs = model.predict(x, verbose=0, batch_size=128)
    top = probs.argmax(1)
    cats = np.array([vocabulary.category_of(names[t]) for t in top])
    b = names.index("blast")
    return Scored(["normal"] * len(top), probs[:, b], top == b, np.zeros(len(top), bool), cats == "normal",
                  [CountedCell(names[t], c, None) for t, c in zip(top, cats)], len(crops), 0)


# ---- the labs -------------------------------------------------------------------------------------------

def lab_records(task: str, per_label: int, seed: int) -> dict:
    from device.model import vocabulary
    from training.datasets import read_aml_lmu, read_jiangxi, read_pbc
    from training.recorded import data_root

    def to_task(recs):
        return [replace(r, label=vocabulary.task_label(task, r.label)) for r in recs]

    aml = [r for r in read_aml_lmu(data_root("aml-cytomorphology-lmu")).records
           if r.relpath.split("/")[0] in AML_BLASTS + AML_NORMALS]
    jx = read_jiangxi(data_root("jiangxi-tecom-wbc")).records
    pbc = [r for r in read_pbc(data_root("pbc-normal-wbc")).records if r.label in NORMAL_TYPES]
    return {"aml-lmu": to_task(thin(aml, per_label, seed)), "jiangxi": to_task(thin(jx, per_label, seed)),
            "pbc": to_task(thin(pbc, per_label, seed))}


def bccd_views(limit: int):
    from testkit.bccd import views_for

    return [v for v in views_for(limit=limit) if v.boxes]


def auc(pos: np.ndarray, score: np.ndarray) -> float | None:
    from training.metrics import roc_auc

    if pos.all() or not pos.any():
        return None
    return round(float(roc_auc(pos, score)), 4)


def simulate(sc: Scored, samples: int, seed: int) -> dict:
    """Samples of 100 cells drawn with replacement from the lab's own cells at 0 / 5 / 20 % blasts,
    counted by the device's summary and flag rules: the share referred."""
    from device.config import AppConfig
    from device.records.counts import summarize

    rules = AppConfig().sample.flags
    rng = np.random.default_rng(seed)
    pos = np.array([t == "blast" for t in sc.truth], bool)
    blasts, normals = np.flatnonzero(pos), np.flatnonzero(~pos)
    out = {}
    for f in FRACTIONS:
        k = int(round(SAMPLE_CELLS * f))
        key = f"referred_{int(round(100 * f))}"
        if (k and not len(blasts)) or not len(normals):
            out[key] = None  # the lab has no blasts (or no normal cells) to draw
            continue
        refer = 0
        for _ in range(samples):
            idx = np.concatenate([rng.choice(blasts, k), rng.choice(normals, SAMPLE_CELLS - k)]).astype(int)
            s = summarize([sc.counted[i] for i in idx], target=SAMPLE_CELLS, rules=rules)
            refer += any(fl["level"] == "refer" for fl in s.flags)
        out[key] = share(refer, samples)
    return out


def lab_figures(sc: Scored, samples: int, seed: int) -> dict:
    pos = np.array([t == "blast" for t in sc.truth], bool)
    neg = ~pos
    n_neg = int(neg.sum())
    other = neg & ~sc.passed & ~sc.flagged & ~sc.called_blast
    fig = {"images": sc.images, "cells": len(sc.truth), "blasts": int(pos.sum()), "normal_cells": n_neg,
           "no_cell_found": share(sc.no_cell, sc.images),
           "normal_passed": share(int((sc.passed & neg).sum()), n_neg),
           "normal_review_n": share(int((sc.flagged & neg).sum()), n_neg),
           "normal_called_blast_n": share(int((sc.called_blast & neg).sum()), n_neg),
           "normal_other_category": share(int(other.sum()), n_neg),
           "strict_sensitivity": share(int((sc.called_blast & pos).sum()), int(pos.sum())) if pos.any() else None,
           "screening_sensitivity": (share(int(((sc.called_blast | sc.flagged) & pos).sum()), int(pos.sum()))
                                     if pos.any() else None)}
    fig.update(simulate(sc, samples, seed))
    # the flat keys a script reads (fractions)
    fig["normal_called_blast"] = fig["normal_called_blast_n"]["value"]
    fig["normal_review"] = fig["normal_review_n"]["value"]
    fig["blast_auc"] = auc(pos, sc.blast_score)
    fig["screen_sensitivity"] = fig["screening_sensitivity"]["value"] if fig["screening_sensitivity"] else None
    fig["no_cell"] = fig["no_cell_found"]["value"]
    return fig


def marrow_figures(sc: Scored) -> dict:
    pos = np.array([t == "blast" for t in sc.truth], bool)
    out = {"split": "bone-marrow-mll test split of each bundle (by image; the set has no patient ids)",
           "blast_sensitivity": share(int((sc.called_blast & pos).sum()), int(pos.sum())),
           "screening_sensitivity": share(int(((sc.called_blast | sc.flagged) & pos).sum()), int(pos.sum())),
           "blast_auc": auc(pos, sc.blast_score)}
    for t in ("lymphocyte", "monocyte", "neutrophil", "eosinophil", "ig"):
        m = np.array([x == t for x in sc.truth], bool)
        out[f"{t}_called_blast"] = share(int((sc.called_blast & m).sum()), int(m.sum()))
    out["marrow_lymphocyte_called_blast"] = out["lymphocyte_called_blast"]["value"]
    out["marrow_monocyte_called_blast"] = out["monocyte_called_blast"]["value"]
    return out


def lower_is_better(key: str) -> bool:
    return (key.startswith(("normal_review", "normal_called_blast", "normal_other", "no_cell"))
            or key.endswith("_called_blast") or key == "referred_0")


def seed_summary(per_seed: list[dict]) -> dict:
    """Mean and worst over seeds of every figure (worst: the highest where lower is better)."""
    out = {}
    for k, v in per_seed[0].items():
        if k in ("images", "cells", "blasts", "normal_cells", "split") or isinstance(v, (str, list)):
            continue
        vals = [s[k]["value"] if isinstance(s.get(k), dict) else s.get(k) for s in per_seed]
        vals = [float(x) for x in vals if x is not None]
        if vals:
            out[k] = {"mean": round(float(np.mean(vals)), 4),
                      "worst": round(max(vals) if lower_is_better(k) else min(vals), 4),
                      "seeds": [round(x, 4) for x in vals]}
    return out


# ---- running a model over every lab ---------------------------------------------------------------------

def run_bundle(path: str, labs: dict, views, marrow_per_label: int | None, samples: int, seed: int,
               threads: int, log) -> dict:
    """One bundle on every lab in ``labs`` (and BCCD's ``views``); with ``marrow_per_label`` not None, also its
    own marrow test split (0 = all of it)."""
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier

    b = load_bundle(path)
    if "malignant" not in b.categories:
        raise SystemExit(f"{path}: no blast class: not a screen bundle")
    trained = [d.name for d in b.meta.datasets or []]
    clf = Classifier(b, threads=threads)
    out = {"bundle": str(path), "name": b.name, "version": b.meta.version, "sha256": b.sha256,
           "trained_on": trained}
    t0 = time.monotonic()
    for lab, recs in labs.items():
        if any(n.startswith(SOURCE_OF_LAB[lab]) for n in trained):
            raise SystemExit(f"{path} was trained on {trained}: {lab} must be a held-out lab here")
        out[lab] = lab_figures(score_records(b, clf, recs), samples, seed)
    if views:
        out["bccd"] = lab_figures(score_bccd(b, clf, views), samples, seed)
    if marrow_per_label is not None:
        marrow = thin(test_records(b, "bone-marrow-mll", None), marrow_per_label, seed)
        out["marrow"] = marrow_figures(score_records(b, clf, marrow))
    log(f"  {Path(path).name}: scored in {time.monotonic() - t0:.0f} s")
    return out


EDGE_PX = 8  # an annotated cell this close to the frame's edge is cut by it (BCCD's boxes are drawn loose)
SOURCE_OF_LAB = {"aml-lmu": "aml", "jiangxi": "jiangxi", "pbc": "pbc"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=B1,B2,...",
                    help="a recipe's bundles, one per seed (trained with PBC); the first --model is the chosen one")
    ap.add_argument("--loso", action="append", default=[], metavar="NAME=L1,L2,...",
                    help="the same recipe's bundles trained without PBC (PBC is then a held-out lab)")
    ap.add_argument("--baseline-seeds", type=int, default=1, help="prototype-style baselines to train and score")
    ap.add_argument("--baseline-epochs", type=int, default=10)
    ap.add_argument("--baseline-dir", default="runs/cross-lab-baseline", help="trained baselines are kept here")
    ap.add_argument("--fast", action="store_true", help="a few images per lab and class, 40 samples (CI)")
    ap.add_argument("--samples", type=int, default=1000, help="simulated samples per blast fraction")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--card", metavar="OUT.lkb", help="write a copy of the first bundle with these figures in its card")
    ap.add_argument("--card-name", help="with --card: the bundle's name (default: unchanged)")
    ap.add_argument("--card-version", help="with --card: the bundle's version (default: unchanged)")
    args = ap.parse_args(argv)

    from device.model.bundle import default_bundle_path

    t0 = time.monotonic()
    per_label = 6 if args.fast else 0
    samples = 40 if args.fast else args.samples
    models = {}
    for spec in args.model or [f"shipped={default_bundle_path()}"]:
        name, _, paths = spec.partition("=")
        models[name] = {"full": [p for p in paths.split(",") if p], "loso": []}
    for spec in args.loso:
        name, _, paths = spec.partition("=")
        models.setdefault(name, {"full": [], "loso": []})["loso"] = [p for p in paths.split(",") if p]
    labs = lab_records("screen", per_label, args.seed)
    views = bccd_views(8 if args.fast else 0)
    out = {"bench": "cross_lab", "fast": args.fast, "samples_per_row": samples,
           "unit": "cell (one per single-cell image; every annotated white cell of a BCCD field)",
           "sampling": "samples of 100 cells drawn with replacement from the lab's own cells", "models": {}}

    def log(msg):
        print(msg, flush=True)

    unseen = {k: labs[k] for k in ("aml-lmu", "jiangxi")}
    for name, m in models.items():
        log(f"{name}:")
        runs = [run_bundle(p, unseen, views, per_label, samples, args.seed, args.threads, log) for p in m["full"]]
        loso = [run_bundle(p, {"pbc": labs["pbc"]}, None, None, samples, args.seed, args.threads, log)
                for p in m["loso"]]
        out["models"][name] = summarise(runs, loso)

    if args.baseline_seeds:
        log("prototype-style baseline:")
        out["models"]["prototype-baseline"] = baseline(args, labs, views, samples, per_label, log)

    first = next(iter(models))
    out["labs"] = chosen_labs(out["models"][first])
    out["chosen"] = first
    out["seconds"] = round(time.monotonic() - t0, 1)
    report(out)
    if args.card:
        if args.fast:
            raise SystemExit("--card needs the full figures: run without --fast")
        dest = write_card(models[first]["full"][0], out, Path(args.card), args.card_name, args.card_version)
        print(f"bundle with the cross-lab figures in its card: {dest}")
    result(out)
    return 0


def summarise(runs: list[dict], loso: list[dict]) -> dict:
    out = {"seeds": len(runs), "loso_seeds": len(loso), "bundles": [r["bundle"] for r in runs + loso], "labs": {}}
    for lab in ("aml-lmu", "jiangxi", "bccd", "marrow"):
        per = [r[lab] for r in runs if lab in r]
        if per:
            out["labs"][lab] = {"per_seed": per, "summary": seed_summary(per)}
    per = [r["pbc"] for r in loso if "pbc" in r]
    if per:
        out["labs"]["pbc"] = {"per_seed": per, "summary": seed_summary(per)}
    return out


def chosen_labs(model: dict) -> dict:
    """The first seed of the chosen model, per lab, with the keys a script reads."""
    out = {}
    for lab, d in model["labs"].items():
        first = d["per_seed"][0]
        if lab == "marrow":
            out[lab] = {k: first[k] for k in ("marrow_lymphocyte_called_blast", "marrow_monocyte_called_blast",
                                              "blast_auc")} | {"blast_sensitivity": first["blast_sensitivity"]["value"]}
            continue
        out[lab] = {k: first.get(k) for k in KEYS + ("referred_0", "referred_5", "referred_20")}
        for k in ("referred_0", "referred_5", "referred_20"):
            out[lab][k] = out[lab][k]["value"] if isinstance(out[lab][k], dict) else None
    return out


def baseline(args, labs, views, samples: int, per_label: int, log) -> dict:
    """Train (or reuse) the prototype-style CNN per seed, with and without PBC, and score it on every lab."""
    import keras

    from device.model import vocabulary
    from training.config import load_recipe
    from training.train import prepare_data

    names = list(vocabulary.task_labels("screen"))
    repo = Path(__file__).resolve().parent.parent
    runs, loso = [], []
    for i in range(args.baseline_seeds):
        seed = 1234 + i
        for without_pbc in (False, True):
            recipe = load_recipe(repo / "training" / "configs" / ("screen-no-pbc.toml" if without_pbc else "screen.toml"))
            recipe.seed = seed
            if per_label:
                recipe.data.max_per_class = per_label * 3
            data = prepare_data(recipe)
            path = Path(args.baseline_dir) / f"{'no-pbc' if without_pbc else 'full'}-seed{seed}{'-fast' if per_label else ''}.keras"
            if path.is_file():
                model = keras.models.load_model(path)
            else:
                model = train_baseline(data.part("train"), names, seed, 1 if per_label else args.baseline_epochs,
                                       path, log)
            fig = {"bundle": str(path)}
            if without_pbc:
                fig["pbc"] = lab_figures(score_baseline(model, names, labs["pbc"]), samples, args.seed)
                loso.append(fig)
                continue
            for lab in ("aml-lmu", "jiangxi"):
                fig[lab] = lab_figures(score_baseline(model, names, labs[lab]), samples, args.seed)
            if views:
                fig["bccd"] = lab_figures(score_baseline_bccd(model, names, views), samples, args.seed)
            marrow = [r for r in data.part("test") if r.dataset == "bone-marrow-mll"]
            fig["marrow"] = marrow_figures(score_baseline(model, names, marrow))
            runs.append(fig)
    return summarise(runs, loso)


# ---- the card ------------------------------------------------------------------------------------------

def plain_figures(labs: dict) -> dict | None:
    """The worst held-out lab's normal cells sent to review (per 100) and called blast (per 1,000): the typed
    figures the result page turns into its plain, translated sentence."""
    # the shipped bundle's own unseen labs (PBC is held out only by the recipe's leave-PBC-out bundles)
    held = {k: d for k, d in labs.items() if k not in ("marrow", "pbc") and d.get("normal_review") is not None}
    if not held:
        return None
    return {"review_per_100": round(100 * max(d["normal_review"] for d in held.values())),
            "blast_per_1000": round(1000 * max(d["normal_called_blast"] for d in held.values())),
            "labs": sorted(held)}


def plain_words(labs: dict) -> str:
    """The first sentence a clinic reads: what a lab the model never saw should expect."""
    p = plain_figures(labs)
    if p is None:
        return ""
    return (f"On a lab it never saw, about {p['review_per_100']} in 100 normal cells are sent to review and "
            f"{p['blast_per_1000']} in 1,000 are called blast (the worst of {', '.join(p['labs'])}).")


def write_card(bundle_path: str, out: dict, dest: Path, name: str | None = None, version: str | None = None) -> Path:
    from device.imageio import write_atomic
    from device.model.bundle import load_bundle, pack

    b = load_bundle(bundle_path)
    meta = dict(b.metadata)
    labs = out["labs"]
    lines = [plain_words(labs)]
    names = {"aml-lmu": "AML-LMU (peripheral blood, Munich hospital)", "jiangxi": "Jiangxi (rapid stain, Motic camera)",
             "bccd": "BCCD (smear photographs)", "pbc": "PBC (CellaVision, Barcelona; a model trained without it)"}
    from bench.blast_screen import _pct

    chosen = out["models"][out["chosen"]]["labs"]
    for lab in labs:
        if lab == "marrow" or lab not in chosen:
            continue
        d = chosen[lab]["per_seed"][0]  # the shipped bundle's (pbc: its recipe's first leave-PBC-out bundle)
        text = (f"{names.get(lab, lab)}: normal cells sent to review {_pct(d['normal_review_n'])}, called blast "
                f"{_pct(d['normal_called_blast_n'])}")
        if d.get("screening_sensitivity"):
            text += f", blasts caught (called blast or sent to review) {_pct(d['screening_sensitivity'])}"
        if d["no_cell_found"]["k"]:
            text += f", no cell found in {_pct(d['no_cell_found'])} of images"
        lines.append(text + ".")
    text = " ".join(lines[:1]) + " " + "; ".join(l.rstrip(".") for l in lines[1:]) + "."
    meta["cross_lab"] = {"text": text, "measured_by": "python -m bench.cross_lab", "labs": labs,
                         "plain": plain_figures(labs),
                         "models": {k: {lab: v["summary"] for lab, v in m["labs"].items()}
                                    for k, m in out["models"].items()}}
    card = meta.get("model_card") if isinstance(meta.get("model_card"), str) else ""
    if name or version:  # the model itself is unchanged (its checksum too): only what the card calls it
        first = card.split("\n", 1)
        meta["name"], meta["version"] = name or meta["name"], version or meta["version"]
        card = f"# {meta['name']} {meta['version']}\n" + (first[1] if len(first) > 1 else "")
    marker = "\n## Across laboratories\n"
    card = card.split(marker)[0].rstrip("\n") + "\n" + marker + "\n" + text + "\n"
    meta["model_card"] = card
    files = dict(b.files)
    files["MODEL_CARD.md"] = card.encode()
    files["metadata.json"] = json.dumps(meta, indent=2).encode()
    write_atomic(dest, pack(files))
    load_bundle(dest)
    return dest


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def report(out: dict) -> None:
    for name, m in out["models"].items():
        print(f"== {name}: {m['seeds']} seed(s), {m['loso_seeds']} without PBC")
        for lab, d in m["labs"].items():
            s = d["summary"]
            keys = (("marrow_lymphocyte_called_blast", "marrow_monocyte_called_blast", "blast_sensitivity", "blast_auc")
                    if lab == "marrow" else ("normal_called_blast", "normal_review", "blast_auc", "screen_sensitivity",
                                             "no_cell", "referred_0", "referred_5", "referred_20"))
            print(f"  {lab:8s} " + "  ".join(f"{k} {_f(s[k]['mean'])} (worst {_f(s[k]['worst'])})"
                                            for k in keys if k in s))


if __name__ == "__main__":
    raise SystemExit(main())
