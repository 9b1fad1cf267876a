"""The blast screen's figures, on the device's own path (finder, framing, int8 LiteRT, the
operating-point rule, the per-sample flag rules), each with its counts and a 95 % Wilson interval.

- in_lab: the bone-marrow set's held-out test split (the bundle's ``test_files.csv``): blast vs every
  other class at the bundle's operating point, and ROC-AUC of the blast probability.
- unseen_lab: AML-LMU (never trained on): its 22 blasts (MYO, MOB) against its normal-blood classes
  (NGS, NGB, LYT, MON, EOS, BAS): strict sensitivity (called blast), screening sensitivity (called
  blast or sent to review), specificity (called a normal type, not flagged).
- other_lab_normals: with ``--loso-bundle`` (a bundle trained without PBC): PBC's normal cells
  called blast. Without it, the figure is reported as not measured.
- pbc_differential: PBC's held-out test split, balanced accuracy over its 8 classes.
- per_sample: samples of 100 held-out cells at 0, 2, 5, 20 and 50 % blasts (the bone-marrow test
  split, its blasts with its own other cells), counted by the device's rules: how often "refer";
  and 0 % samples of PBC's held-out normal cells.

    python -m bench.blast_screen [--bundle PATH] [--loso-bundle PATH] [--fast]

The unit of every figure is the image (one cell per single-cell image). An image in which the device
finds no cell stays in every denominator, as what the device did with it: not called blast, not sent to
review, not passed as normal, ranked lowest (``no_cell`` says how many); an image that cannot be read
is counted (``unreadable``) and left out. The bone-marrow set has no
patient ids: its split is by image, so cells of one patient can sit on both sides.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import result

AML_BLASTS = ("MYO", "MOB")
AML_NORMALS = ("NGS", "NGB", "LYT", "MON", "EOS", "BAS")
FRACTIONS = (0.0, 0.02, 0.05, 0.20, 0.50)
SAMPLE_CELLS = 100


@dataclass
class Called:
    """The device's decision for each cell of a set."""
    labels: list[str]  # the task label of each cell's image
    category: np.ndarray  # the model's category after the operating-point rule
    flagged: np.ndarray  # sent to review (any flag)
    blast_score: np.ndarray  # probability summed over malignant labels
    top: np.ndarray  # argmax label index
    preds: list  # CellPrediction, None where no cell was found
    image: np.ndarray  # index of each cell's record
    unreadable: int = 0  # images that could not be read (not in the figures)

    @property
    def found(self) -> np.ndarray:
        return np.array([p is not None for p in self.preds], bool)

    def no_cell(self, keep=None) -> dict:
        keep = np.ones(len(self.preds), bool) if keep is None else keep
        return share((~self.found)[keep].sum(), keep.sum())

    @property
    def called_blast(self) -> np.ndarray:
        return (self.category == "malignant") & ~self.flagged


def share(k: int, n: int) -> dict:
    from device.records.counts import wilson_interval

    lo, hi = wilson_interval(int(k), int(n))
    return {"k": int(k), "n": int(n), "value": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def cells(records, bundle, clf, task_labels) -> Called:
    """The device's call on each image's cell; an image without a cell found is one entry too."""
    from training.data import load_cells

    cs = load_cells(records, bundle.preprocessing, list(task_labels))
    preds = []
    for i in range(0, len(cs.x), 64):
        preds += clf.classify(cs.x[i : i + 64])
    mal = [i for i, c in enumerate(bundle.categories) if c == "malignant"]
    probs = np.array([[p.probabilities[n] for n in bundle.labels] for p in preds]).reshape(len(preds), -1)
    where = {id(r): i for i, r in enumerate(records)}
    missing = [where[id(r)] for r in cs.no_cell]
    k = len(missing)
    return Called([records[i].label for i in [*cs.image, *missing]],
                  np.array([p.category for p in preds] + ["none"] * k),
                  np.array([p.flag is not None for p in preds] + [False] * k, bool),
                  np.concatenate([probs[:, mal].sum(1) if mal else np.zeros(len(preds)), np.zeros(k)]),
                  np.concatenate([probs.argmax(1) if len(preds) else np.zeros(0, int), -np.ones(k, int)]).astype(int),
                  preds + [None] * k, np.array([*cs.image, *missing], np.int64), len(cs.unreadable))


def test_records(bundle, dataset: str, root: Path | None):
    """The bundle's recorded test images of ``dataset`` (in ``root`` when given)."""
    from training.recorded import recorded_files

    return [f.record for f in recorded_files(bundle, {dataset: str(root)} if root else None, dataset)]


def thin(records, per_label: int, seed: int):
    """At most ``per_label`` records of each label (seeded): the fast mode."""
    if not per_label:
        return records
    rng = np.random.default_rng(seed)
    out = []
    for lab in sorted({r.label for r in records}):
        group = [r for r in records if r.label == lab]
        idx = sorted(rng.choice(len(group), min(per_label, len(group)), replace=False))
        out += [group[i] for i in idx]
    return out


def in_lab(c: Called) -> dict:
    from training.metrics import roc_auc

    pos = np.array([lab == "blast" for lab in c.labels])
    called = c.called_blast
    return {"split": "bone-marrow-mll test (image-level split; no patient ids)",
            "sensitivity": share(called[pos].sum(), pos.sum()),
            "specificity": share((~called)[~pos].sum(), (~pos).sum()),
            "screening_sensitivity": share((called | c.flagged)[pos].sum(), pos.sum()),
            "roc_auc": None if pos.all() or not pos.any() else round(float(roc_auc(pos, c.blast_score)), 4),
            "no_cell": c.no_cell(), "unreadable": c.unreadable}


def unseen_lab(c: Called, codes: list[str]) -> dict:
    pos = np.array([code in AML_BLASTS for code in codes])
    called = c.called_blast
    normal_ok = (c.category == "normal") & ~c.flagged
    return {"set": "AML-LMU (never trained on; 22 blasts in all: a small set, read its intervals)",
            "strict_sensitivity": share(called[pos].sum(), pos.sum()),
            "screening_sensitivity": share((called | c.flagged)[pos].sum(), pos.sum()),
            "specificity": share(normal_ok[~pos].sum(), (~pos).sum()),
            "normals_called_blast": share(called[~pos].sum(), (~pos).sum()),
            "normals_flagged": share(c.flagged[~pos].sum(), (~pos).sum()),
            "normals_flag_reasons": dict(Counter(p.flag for p, q in zip(c.preds, pos) if not q and p and p.flag)),
            "blasts_called": dict(Counter((p.flag or p.label) if p else "no cell found" for p, q in zip(c.preds, pos) if q)),
            "no_cell": c.no_cell(), "blasts_no_cell": c.no_cell(pos), "unreadable": c.unreadable}


def pbc_differential(c: Called, bundle) -> dict:
    from training.datasets import PBC_CLASSES

    names = list(bundle.labels)
    y = np.array([names.index(lab) for lab in c.labels])
    recalls = {n: share((c.top[y == names.index(n)] == names.index(n)).sum(), (y == names.index(n)).sum())
               for n in PBC_CLASSES if (y == names.index(n)).any()}
    bal = float(np.mean([r["value"] for r in recalls.values()])) if recalls else None
    # the same with the device's rules: a cell counts as right only when shown with its own label, unflagged
    shown = np.array([names.index(p.label) if p is not None and p.flag is None else -1 for p in c.preds])
    dev = [float((shown[y == names.index(n)] == names.index(n)).mean()) for n in PBC_CLASSES if (y == names.index(n)).any()]
    return {"balanced_accuracy": None if bal is None else round(bal, 4),
            "balanced_accuracy_device_rules": round(float(np.mean(dev)), 4) if dev else None,
            "per_class_recall": recalls,
            "called_blast": share(c.called_blast.sum(), len(c.labels)), "cells": len(c.labels),
            "no_cell": c.no_cell(), "unreadable": c.unreadable}


def simulate(blasts: list, others: list, fractions, samples: int, rules, seed: int) -> list[dict]:
    """Samples of SAMPLE_CELLS cells drawn without replacement from held-out cells; each counted by
    the device's own ``summarize`` and flag rules."""
    from device.records.counts import summarize

    rng = np.random.default_rng(seed)
    rows = []
    for f in fractions:
        k = int(round(SAMPLE_CELLS * f))
        if k > len(blasts) or SAMPLE_CELLS - k > len(others):
            rows.append({"blast_fraction": f, "skipped": f"needs {k} blasts and {SAMPLE_CELLS - k} other cells"})
            continue
        refer = review = 0
        measured = []
        for _ in range(samples):
            drawn = [blasts[i] for i in rng.choice(len(blasts), k, replace=False)] + \
                    [others[i] for i in rng.choice(len(others), SAMPLE_CELLS - k, replace=False)]
            s = summarize(drawn, target=SAMPLE_CELLS, rules=rules)
            levels = {fl["level"] for fl in s.flags}
            refer += "refer" in levels
            review += "refer" in levels or "review" in levels
            measured.append(s.malignant_fraction)
        # the interval is the simulation's own error: samples are redrawn from the same ~400 held-out cells
        rows.append({"blast_fraction": f, "samples": samples, "refer": share(refer, samples),
                     "refer_or_review": share(review, samples),
                     "measured_blast_fraction_median": round(float(np.median(measured)), 4)})
    return rows


def counted(c: Called, keep) -> list:
    from device.records.counts import CountedCell

    # an image without a cell found adds nothing to a sample: the device counts the cells it finds
    return [CountedCell(p.label, p.category, p.flag) for p, lab in zip(c.preds, c.labels) if p and keep(lab)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="the screen bundle (default: the appliance's bundled default)")
    ap.add_argument("--loso-bundle", help="a bundle trained without PBC (leave-one-source-out on normal cells)")
    ap.add_argument("--fast", action="store_true", help="a few images per class, 40 samples per row (CI)")
    ap.add_argument("--samples", type=int, default=1000, help="simulated samples per blast fraction")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--card", metavar="OUT.lkb",
                    help="write a copy of the bundle whose model card carries these cross-lab figures (not with --fast)")
    args = ap.parse_args(argv)
    per_label = 20 if args.fast else 0
    samples = 40 if args.fast else args.samples

    from device.model import vocabulary
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from device.config import AppConfig
    from training.datasets import read_aml_lmu, read_pbc
    from training.recorded import data_root

    t0 = time.monotonic()
    bundle = load_bundle(args.bundle)
    if "malignant" not in bundle.categories:
        raise SystemExit(f"{bundle.name} has no blast class: not a screen bundle")
    trained_on = [d.name for d in bundle.meta.datasets or []]
    if any(n.startswith("aml") for n in trained_on):
        raise SystemExit(f"{bundle.name} was trained on {trained_on}: AML-LMU is the unseen-lab test, not training data")
    clf = Classifier(bundle, threads=args.threads)
    task = bundle.meta.task
    names = vocabulary.task_labels(task)
    out = {"bench": "blast_screen", "bundle": bundle.name, "version": bundle.meta.version,
           "sha256": bundle.sha256, "fast": args.fast, "unit": "image (one cell each)",
           "operating_point": bundle.thresholds.get("malignant"),
           "review_from": bundle.thresholds.get("malignant_review"),
           # the validation points the operating point was chosen from (the chosen one, the one that only just
           # reaches the target, and the next one down in threshold, which costs specificity)
           "validation_points": ((bundle.meta.test_metrics.malignant or {}).get("validation_points")
                                 if bundle.meta.test_metrics else None)}

    mll = thin(test_records(bundle, "bone-marrow-mll", None), per_label, args.seed)
    c_mll = cells(mll, bundle, clf, names)
    out["in_lab"] = in_lab(c_mll)

    aml = read_aml_lmu(data_root("aml-cytomorphology-lmu"))
    recs = [r for r in aml.records if r.relpath.split("/")[0] in AML_BLASTS + AML_NORMALS]
    recs = [r.__class__(**{**r.__dict__, "label": vocabulary.task_label(task, r.label)}) for r in recs]
    c_aml = cells(recs, bundle, clf, names)
    out["unseen_lab"] = unseen_lab(c_aml, [recs[i].relpath.split("/")[0] for i in c_aml.image])

    pbc = thin(test_records(bundle, "pbc-normal-wbc", None), per_label, args.seed)
    c_pbc = cells(pbc, bundle, clf, names)
    out["pbc_differential"] = pbc_differential(c_pbc, bundle)

    if args.loso_bundle:
        lb = load_bundle(args.loso_bundle)
        lclf = Classifier(lb, threads=args.threads)
        allp = [r for r in read_pbc(data_root("pbc-normal-wbc")).records
                if vocabulary.category_of(r.label) == "normal"]
        allp = thin(allp, per_label or 0, args.seed)
        c_lo = cells(allp, lb, lclf, vocabulary.task_labels(lb.meta.task))
        out["other_lab_normals"] = {
            "bundle": lb.name, "trained_on": [d.name for d in lb.meta.datasets or []],
            "set": "PBC normal leukocytes (never seen by this bundle)",
            "called_blast": share(c_lo.called_blast.sum(), len(c_lo.labels)),
            "flagged": share(c_lo.flagged.sum(), len(c_lo.labels)),
            "unfamiliar": share(sum(p is not None and p.flag == "unfamiliar" for p in c_lo.preds), len(c_lo.labels)),
            "no_cell": c_lo.no_cell(), "unreadable": c_lo.unreadable}
    else:
        out["other_lab_normals"] = {"not_measured": "give --loso-bundle (a bundle trained without PBC)"}

    rules = AppConfig().sample.flags
    mll_cells_blast = counted(c_mll, lambda lab: lab == "blast")
    mll_cells_other = counted(c_mll, lambda lab: lab != "blast")
    out["per_sample"] = simulate(mll_cells_blast, mll_cells_other, FRACTIONS if not args.fast else (0.0, 0.05),
                                 samples, rules, args.seed)
    pbc_normals = counted(c_pbc, lambda lab: vocabulary.category_of(lab) in ("normal", "atypical"))
    out["per_sample_pbc_normals"] = simulate([], pbc_normals, (0.0,), samples, rules, args.seed)
    out["refer_rule"] = [r.__dict__ for r in rules if r.level == "refer"]
    out["seconds"] = round(time.monotonic() - t0, 1)
    report(out)
    if args.card:
        if args.fast:
            raise SystemExit("--card needs the full figures: run without --fast")
        print(f"bundle with the cross-lab figures in its card: {write_card(args.bundle, out, Path(args.card))}")
    result(out)
    return 0


def _pct(s: dict) -> str:
    if not s.get("n"):
        return "not measured (no cells)"
    return (f"{100 * s['value']:.0f} % ({s['k']} of {s['n']}; 95 % interval {100 * s['ci95'][0]:.0f}-"
            f"{100 * s['ci95'][1]:.0f} %)")


def card_text(out: dict) -> str:
    """The cross-lab figures in plain words, for the result page and the PDF."""
    ul, ol = out["unseen_lab"], out["other_lab_normals"]
    text = (f"AML-LMU, peripheral blood from a Munich hospital it never trained on: blasts called blast "
            f"{_pct(ul['strict_sensitivity'])}; called blast or sent to review {_pct(ul['screening_sensitivity'])}; "
            f"normal cells called a normal type without review {_pct(ul['specificity'])}, called blast "
            f"{_pct(ul['normals_called_blast'])}. Only 22 blasts: the intervals are wide.")
    if "called_blast" in ol:
        text += (f" Normal blood cells of a lab left out of training (PBC, with a model trained without it) called "
                 f"blast: {_pct(ol['called_blast'])}.")
    return text


def operating_point_text(out: dict) -> str:
    """The operating point with its measured figures on the blasts' own lab, and what it does to whole samples."""
    il = out["in_lab"]
    rows = {r["blast_fraction"]: r for r in out["per_sample"] if "refer" in r}
    pbc0 = next((r for r in out["per_sample_pbc_normals"] if "refer" in r), None)
    text = (f"a cell counts as a blast when its blast probability is at least {out['operating_point']:.3f} (chosen on "
            f"validation for 97 % sensitivity). On held-out bone-marrow cells of the blasts' own lab: sensitivity "
            f"{_pct(il['sensitivity'])}, specificity {_pct(il['specificity'])}.")
    if 0.0 in rows and 0.05 in rows:
        text += (f" Simulated samples of 100 of those cells: without blasts referred {_pct(rows[0.0]['refer'])}; "
                 f"with 5 % blasts referred {_pct(rows[0.05]['refer'])}.")
    if pbc0:
        text += f" Samples of 100 normal blood cells (PBC) referred {_pct(pbc0['refer'])}."
    return text


def write_card(bundle_path, out: dict, dest: Path) -> Path:
    import json

    from device.model.bundle import default_bundle_path, load_bundle, pack
    from device.imageio import write_atomic

    src = Path(bundle_path) if bundle_path else default_bundle_path()
    b = load_bundle(src)
    meta = dict(b.metadata)
    text = card_text(out)
    meta["operating_point"] = operating_point_text(out)
    meta["cross_lab"] = {"text": text, "measured_by": "python -m bench.blast_screen",
                         "figures": {k: out[k] for k in ("in_lab", "unseen_lab", "other_lab_normals", "per_sample",
                                                         "per_sample_pbc_normals", "pbc_differential")}}
    card = meta.get("model_card") if isinstance(meta.get("model_card"), str) else ""
    marker = "\n## Across laboratories\n"
    card = (card.split(marker)[0].rstrip("\n") + "\n" + marker + "\n" + text + "\n\nBlast operating point: "
            + meta["operating_point"] + "\n")
    meta["model_card"] = card
    files = dict(b.files)
    files["MODEL_CARD.md"] = card.encode()
    files["metadata.json"] = json.dumps(meta, indent=2).encode()
    write_atomic(dest, pack(files))
    load_bundle(dest)  # what we wrote must load and validate
    return dest


def _fmt(s: dict | None) -> str:
    if not s or s.get("value") is None:
        return "-"
    return f"{s['value']:.3f} [{s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}] ({s['k']}/{s['n']})"


def report(out: dict) -> None:
    il, ul, pd = out["in_lab"], out["unseen_lab"], out["pbc_differential"]
    print(f"bundle {out['bundle']} {out['version']}; operating point {out['operating_point']}, review from "
          f"{out['review_from']}")
    for name, pt in (out.get("validation_points") or {}).items():
        if isinstance(pt, dict):
            print(f"  validation point {name:>9}: threshold {pt['threshold']:.4f} sensitivity {pt['sensitivity']:.4f} "
                  f"specificity {pt['specificity']:.4f} (tp {pt['tp']} fn {pt['fn']} tn {pt['tn']} fp {pt['fp']})")
    print(f"in-lab (marrow test split)  sensitivity {_fmt(il['sensitivity'])}  specificity {_fmt(il['specificity'])}  "
          f"ROC-AUC {il['roc_auc']}")
    print(f"unseen lab (AML-LMU)        strict sens {_fmt(ul['strict_sensitivity'])}  screening sens "
          f"{_fmt(ul['screening_sensitivity'])}  specificity {_fmt(ul['specificity'])}")
    ol = out["other_lab_normals"]
    print("other lab's normals (PBC, leave-PBC-out) called blast: "
          + (_fmt(ol["called_blast"]) if "called_blast" in ol else ol["not_measured"]))
    print(f"PBC 8-class balanced accuracy {pd['balanced_accuracy']} ({pd['cells']} cells)")
    for row in out["per_sample"] + out["per_sample_pbc_normals"]:
        if "refer" in row:
            print(f"  samples at {100 * row['blast_fraction']:>4.0f} % blasts: refer {_fmt(row['refer'])}")


if __name__ == "__main__":
    raise SystemExit(main())
