"""``leukoscope convert RUN_DIR``: a trained run -> a validated model bundle."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from device.model import vocabulary
from device.model.bundle import Bundle, load_bundle, pack
from device.model.metadata import FORMAT, parse
from device.model.classifier import Classifier
from device.analysis.preprocess import normalize
from training.config import recipe_from_dict
from training.evaluate import records_from_manifest
from training.report import build_report

PARITY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "ece")


class ParityError(RuntimeError):
    pass


def representative_records(records, count: int, seed: int):
    """Stratified draw from the training split: each class in proportion, at least one each."""
    by_label = defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    rng = np.random.default_rng(seed)
    total = len(records)
    chosen = []
    for label in sorted(by_label):
        members = by_label[label]
        k = min(len(members), max(1, round(count * len(members) / total)))
        chosen += [members[i] for i in sorted(rng.choice(len(members), k, replace=False))]
    return chosen


def _summary(report: dict) -> dict:
    return {k: report.get(k) for k in ("n", *PARITY_KEYS)} | {
        "per_class_sensitivity": {k: v["sensitivity"] for k, v in report["per_class"].items()},
        **({"malignant": report["malignant"]} if "malignant" in report else {}),
    }


def _ood_stats(train_emb: np.ndarray, train_y: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    means = np.stack([train_emb[train_y == c].mean(0) if (train_y == c).any() else np.zeros(train_emb.shape[1])
                      for c in range(n_classes)])
    centred = train_emb - means[train_y]
    cov = centred.T @ centred / max(len(centred) - 1, 1)
    # shrink towards the diagonal so a few hundred cells give a stable inverse
    shrink = 0.1
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-4 * np.eye(len(cov))
    return {"means": means.astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32)}


MODEL_CARD = """# {name} {version}

**A screening aid, not a diagnosis.** Every result must be confirmed by a qualified person looking
at the smear.

- Task: `{task}` — labels: {labels}.
- Architecture: `{model}`, {quant} TFLite, input {size}x{size} RGB, {bytes:,} bytes.
- Trained on: {trained_on}{backbone}
- Test split ({n} cells cut by the device's own finder from {images} images listed in `test_files.csv`):
  balanced accuracy {bal:.4f}, macro F1 {f1:.4f}
  ({quant}); float model {fbal:.4f} / {ff1:.4f}; int8-float top-1 agreement {agree:.4f}.
- Cells whose top probability is below {review:.3f}, or whose features lie far from every trained
  class (unfamiliar), are shown as *uncertain* and left for review, never forced into a class.

## Intended use
Pre-classification of white cells in peripheral-blood smears on the Leukoscope appliance, to be
confirmed by a technologist. Not for use as the sole basis of any clinical decision.

## What it was and was not validated on
{validation}
"""


def convert_run(run_dir: str | Path, out: str | Path | None = None, variant: str = "int8",
                representative_count: int = 300, parity_floor: float = 0.99, name: str | None = None,
                version: str | None = None, threads: int = 2, blast_specificity: float | None = None,
                log=print) -> Path:
    import keras

    from convert.quantize import to_tflite, with_embedding
    from training.data import load_records
    from training.train import library_versions

    run_dir = Path(run_dir)
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    if blast_specificity is not None:
        if not 0.0 <= blast_specificity < 1.0:
            raise ValueError("blast_specificity must be within [0, 1)")
        recipe.evaluate.blast_specificity = blast_specificity
    summary = json.loads((run_dir / "split_summary.json").read_text())
    names = list(vocabulary.task_labels(recipe.task))
    pp = recipe.preprocessing
    pairs = records_from_manifest(run_dir)
    part = {s: [r for sp, r in pairs if sp == s] for s in ("train", "val", "test")}

    rep = representative_records(part["train"], representative_count, recipe.seed)
    x_rep, _ = load_records(rep, pp, names)
    log(f"representative set: {len(rep)} training images, stratified")

    model = keras.models.load_model(run_dir / "model.keras")
    two = with_embedding(model)
    tflite = to_tflite(two, variant, normalize(x_rep, pp))
    log(f"{variant} model: {len(tflite):,} bytes")

    x_tr, y_tr = load_records(part["train"], pp, names)
    x_va, y_va = load_records(part["val"], pp, names)
    x_te, y_te = load_records(part["test"], pp, names)

    input_dtype = "int8" if variant == "int8" else "float32"
    labels_meta = [{"name": n, "category": vocabulary.category_of(n), "display": vocabulary.label(n).display} for n in names]
    meta = {
        "format": FORMAT, "name": name or recipe.name or recipe.task,
        "version": version or datetime.now(timezone.utc).strftime("%Y.%m.%d"),
        "task": recipe.task, "labels": labels_meta,
        "input": {"size": pp.input_size, "dtype": input_dtype, "quantization": variant,
                  "color_order": pp.color_order, "normalization": pp.normalization},
        "preprocessing": pp.to_dict(),
        "sha256": {"model.tflite": hashlib.sha256(tflite).hexdigest()},
    }
    # A provisional bundle, so the device's own classifier produces every int8 figure below.
    probe = Classifier(Bundle(None, meta, tflite, None, {}), threads=threads)
    outputs = {"probabilities": {"name": probe._prob["name"]}}
    if probe._embed is None:
        emb_out = [o for o in probe._interp.get_output_details() if o["name"] != probe._prob["name"]]
        if emb_out:
            outputs["embedding"] = {"name": emb_out[0]["name"]}
    meta["outputs"] = outputs
    probe = Classifier(Bundle(None, meta, tflite, None, {}), threads=threads)
    q_scale, q_zp = probe._in["quantization"]
    meta["input"].update({"scale": float(q_scale), "zero_point": int(q_zp)})

    def run_q(x):
        probs, embs = [], []
        for i in range(0, len(x), 64):
            p, e = probe.raw(x[i : i + 64])
            probs.append(p)
            embs.append(e)
        return np.concatenate(probs), (np.concatenate(embs) if embs[0] is not None else None)

    q_te, _ = run_q(x_te)
    q_va, e_va = run_q(x_va)
    f_te = model.predict(normalize(x_te, pp), batch_size=128, verbose=0)
    f_va = model.predict(normalize(x_va, pp), batch_size=128, verbose=0)
    rep_q = build_report(names, q_te, y_te, q_va, y_va, recipe.evaluate)
    rep_f = build_report(names, f_te, y_te, f_va, y_va, recipe.evaluate)
    agreement = float((q_te.argmax(1) == f_te.argmax(1)).mean())
    parity = {"top1_agreement": agreement, "floor": parity_floor, "n": int(len(y_te)),
              "delta": {k: (None if rep_q.get(k) is None or rep_f.get(k) is None else rep_q[k] - rep_f[k])
                        for k in PARITY_KEYS}}
    log(f"parity on {len(y_te)} test cells: top-1 agreement {agreement:.4f}; balanced accuracy "
        f"float {rep_f['balanced_accuracy']:.4f} -> {variant} {rep_q['balanced_accuracy']:.4f}")
    if agreement < parity_floor:
        raise ParityError(f"{variant} model agrees with the float model on only {agreement:.4f} of test images "
                          f"(floor {parity_floor}); not writing a bundle")

    thresholds = {"review": rep_q["review"]["threshold"]}
    if "malignant" in rep_q:
        thresholds["malignant"] = rep_q["malignant"]["validation"]["threshold"]
        thresholds["malignant_review"] = rep_q["malignant"]["review_threshold"]
    files = {}
    if "embedding" in outputs:
        _, e_tr = run_q(x_tr)
        ood = _ood_stats(e_tr, y_tr, len(names))
        # Calibrated per class on validation: a cell is "unfamiliar" when it lies further from the mean of the
        # class it is called than 99.5 % of that class's validation cells (classes with few validation cells
        # take the pooled figure), so review goes to cells unusual for their class.
        called = q_va.argmax(1)  # as the device scores it: against the class the cell is called
        d_va = np.einsum("nd,de,ne->n", e_va - ood["means"][called], ood["precision"], e_va - ood["means"][called])
        pooled = float(np.quantile(d_va, 0.995))
        ood["class_threshold"] = np.array([float(np.quantile(d_va[called == c], 0.995)) if (called == c).sum() >= 30
                                           else pooled for c in range(len(names))], np.float32)
        thresholds["ood"] = 1.0
        meta["ood_calibration"] = "per-class"
        buf = io.BytesIO()
        np.savez(buf, **ood)
        files["ood.npz"] = buf.getvalue()
        # the reference cells site calibration is checked against (device.calibration): validation cells
        from convert.reference import reference_member
        from device.model.bundle import REFERENCE_MEMBER

        files[REFERENCE_MEMBER], meta["reference"] = reference_member(
            e_va, y_va, q_va, names, [vocabulary.category_of(n) for n in names], "validation split, int8", thin=True)
    meta["thresholds"] = thresholds
    meta["thresholds_note"] = ("review: lowest top-probability at which validation accuracy on kept cells reaches "
                               f"{recipe.evaluate.review_accuracy}; ood: 1 = each class's 99.5th percentile of validation distances to its mean; "
                               "malignant: blast operating point, chosen on validation for the target sensitivity (a cell at or "
                               "above it counts as a blast); malignant_review: blast probability from which a cell "
                               "below the operating point goes to review")
    meta["datasets"] = [{"name": s["name"], "licence": s.get("licence"), "citation": s.get("citation"),
                         "split_unit": summary["unit"]} for s in summary["sources"]]
    meta["split"] = {"unit": summary["unit"], "seed": summary["seed"], "counts": summary["counts"],
                     "duplicates_removed": summary["duplicates_removed"], "test_files": "test_files.csv"}
    meta["metrics"] = {"float": _summary(rep_f), variant: _summary(rep_q)}
    meta["parity"] = parity
    meta["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["versions"] = library_versions()
    meta["model"] = recipe.model.name
    test_csv = io.StringIO()
    w = csv.writer(test_csv)
    # With each image's pixel size and kind, so `leukoscope model test` cuts the same cells.
    w.writerow(("dataset", "relpath", "label", "sha256", "um_per_px", "kind"))
    sha = {row["relpath"]: row["sha256"] for row in _manifest_rows(run_dir)}
    for r in part["test"]:
        w.writerow((r.dataset, r.relpath, r.label, sha[r.relpath], r.um_per_px or "", r.kind))
    files["test_files.csv"] = test_csv.getvalue().encode()
    card = MODEL_CARD.format(
        name=meta["name"], version=meta["version"], task=recipe.task, labels=", ".join(names), model=recipe.model.name,
        quant=variant, size=pp.input_size, bytes=len(tflite),
        trained_on=trained_on_line([(d["name"], d["licence"]) for d in meta["datasets"]], summary["unit"]),
        n=rep_q["n"], images=len(part["test"]), bal=rep_q["balanced_accuracy"], f1=rep_q["macro_f1"], fbal=rep_f["balanced_accuracy"],
        ff1=rep_f["macro_f1"], agree=agreement, review=thresholds["review"], validation=validation_text(recipe.task),
        backbone=_backbone_text(recipe.model))
    meta["model_card"] = card
    meta.update(card_fields(recipe.task, summary["sources"], summary["unit"], rep_q))
    files["MODEL_CARD.md"] = card.encode()
    files["model.tflite"] = tflite
    parse(meta)  # the device's schema (device.model.metadata): refused here, before anything is written
    files["metadata.json"] = json.dumps(meta, indent=2).encode()
    out = Path(out) if out else run_dir / f"{meta['name']}-{variant}.lkb"
    out.parent.mkdir(parents=True, exist_ok=True)
    from device.imageio import write_atomic

    write_atomic(out, pack(files))
    load_bundle(out)  # round-trip: what we wrote must load and validate
    log(f"bundle written: {out} ({out.stat().st_size:,} bytes)")
    return out


# ---- the card's prose (written into MODEL_CARD.md and, typed, into the metadata by card_fields) ----------------
def trained_on_line(datasets: list[tuple[str, str | None]], unit: str | None) -> str:
    """The card's "Trained on" line: each dataset with its licence, and how the split was cut (an unknown licence
    or split is left unsaid, never written as "None")."""
    names = "; ".join(f"{name} ({licence})" if licence else name for name, licence in datasets)
    if not unit:
        return names + "."
    note = "" if unit == "subject" else " (the data has no subject ids, so cells of one donor may be on both sides)"
    return names + f". Split by {unit}{note}."


SCREEN_NOT_VALIDATED = (
    "lymphoblasts (ALL) in peripheral blood from a lab it was not trained on; children's samples; bone marrow "
    "from other labs; smears photographed through the appliance's own camera and microscope; stains other than "
    "May-Grunwald-Giemsa; lymphoma cells, myelodysplasia and other atypical cells")


def validation_text(task: str) -> str:
    """The card's "What it was and was not validated on" section, per task."""
    if task == "differential":
        return ("Validated only on held-out images of the same dataset (normal cells from healthy donors, one lab, "
                "one CellaVision scanner, image-level split). It has never seen a leukaemic blast: it is **not a "
                "validated leukaemia screen**. Blasts and other unfamiliar cells should be caught by the uncertainty "
                "and unfamiliar-cell checks and left for review, but that is a safety net, not a detector. Not "
                "validated on other stains, microscopes or cameras, on bone marrow, or on field crops from the "
                "appliance's own camera.")
    if task == "screen":
        return ("Trained on normal blood cells from two labs and on bone-marrow blasts from one lab (see Trained on). "
                "Its figures on labs it never saw are in `cross_lab` (python -m bench.cross_lab). Never validated "
                "on: " + SCREEN_NOT_VALIDATED + ".")
    return ("Validated only on the held-out split recorded in test_files.csv. Not validated across laboratories, "
            "stains, microscopes or cameras.")


def _manifest_rows(run_dir: Path):
    from training.splits import read_manifest

    return read_manifest(run_dir / "split_manifest.csv")


def card_fields(task: str, sources: list[dict], unit: str, rep: dict) -> dict:
    """What the result page and the PDF show beside the blast fraction (the bundle's own words):
    what the model was trained on, where it was never validated, and its operating point's figures."""
    from training.datasets import about_of

    split = "split by subject" if unit == "subject" else "split by image (no patient ids: a patient's cells can be on both sides)"
    parts = [f"{s['name']} ({s.get('about') or about_of(s['name']) or 'no description'})" for s in sources]
    out = {"trained_on": "; ".join(parts) + f"; {split}"}
    mal = rep.get("malignant")
    # every bundle says, typed, what it was never validated on: the device shows these words, never its own prose
    out["not_validated_on"] = (SCREEN_NOT_VALIDATED if task == "screen"
                               else " ".join(validation_text(task).replace("**", "").split()))
    if task == "screen" and mal:
        v, t = mal["validation"], mal["test"]

        def pct(x):
            return "-" if x is None else f"{100 * x:.1f} %"

        if mal.get("blast_specificity"):
            rule = (f"a cell counts as a blast when its blast probability is at least {v['threshold']:.3f}, where "
                    f"{pct(mal['blast_specificity'])} of validation normal cells stay below; from "
                    f"{mal['review_threshold']:.3f} (chosen on validation for {pct(mal['target_sensitivity'])} "
                    f"sensitivity) up to it, a cell goes to review as a possible blast")
        else:
            rule = (f"a cell counts as a blast when its blast probability is at least {v['threshold']:.3f}, chosen on "
                    f"validation for {pct(mal['target_sensitivity'])} sensitivity")
        out["operating_point"] = (
            f"{rule}; held-out test cells of both training labs "
            f"pooled (normal blood cells are easy; the bone-marrow figure alone is lower, see below): "
            f"sensitivity {pct(t['sensitivity'])} ({t['tp']} of {t['tp'] + t['fn']} blasts), specificity "
            f"{pct(t['specificity'])} ({t['tn']} of {t['tn'] + t['fp']} other cells)")
    return out


def _backbone_text(model) -> str:
    """The provenance line the shared ImageNet weights ask to be kept with anything derived from them."""
    if not model.weights:
        return ""
    return (f"\n- Backbone initialised from ImageNet {model.name} weights, Apache-2.0 "
            f"(`{Path(model.weights).name}`, rebuilt from the TensorFlow authors' int8 model).")
