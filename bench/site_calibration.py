"""Site calibration, simulated on labs the bundle never saw.

For each lab (AML-LMU: peripheral blood from Munich, CellaVision, with blasts; Jiangxi: a rapid stain and a
Motic camera, normal cells only, at the pixel size the red-cell ruler measures on its images), every
cell goes once through the device's path (finder, framing, int8 LiteRT: embeddings and probabilities). Then,
per draw and per k in K: a clinic reviews k of the lab's cells drawn in its natural mix (each reviewed blast
as a qualified reviewer confirms it; 25 cells per sample), the box fits a calibration
(``device.calibration``) and the lab's other cells are the test:
- normal_called_blast, normal_review: the lab's normal cells called blast / sent to review;
- screen_sensitivity, strict_sensitivity: its blasts called blast or sent to review / called blast (null
  where the lab has no blasts);
- referred_0/5/20: samples of 100 test cells (drawn with replacement) at 0 / 5 / 20 % blasts referred by the
  refer rule on decided cells (after review: a reviewer decides each uncertain cell with its true class). With
  a calibration the site-aware rule (one-sided binomial test against the measured false-call rate); at k = 0,
  or when the calibration is refused, the bundle's rule (3 blasts in 100 decided cells).
A refused calibration (sensitivity guard) is counted per k; the box then keeps the bundle's decisions, and so
do the figures. Below MIN_CELLS the box refuses to calibrate; the fit is still measured there (``fitted``),
which is how MIN_CELLS was chosen. Intervals: 95 % Wilson on the pooled counts of all draws.

    python -m bench.site_calibration [--bundle PATH] [--fast] [--draws N]

Also without labels (``unlabelled_k100``): the "unfamiliar" statistics re-estimated from 100 unreviewed cells
of the lab, the bundle's calls taken as their classes; kept out of the product unless it pays here.

Ends with ``RESULT {"labs": {LAB: {"k": {"100": {...}}}}, "fit_seconds_2000": S, ...}``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the fit time is measured on one core
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench import result  # noqa: E402
from bench.blast_screen import share  # noqa: E402

KS = (0, 25, 50, 100, 200, 400)
PER_SAMPLE = 25  # reviewed cells per simulated sample (these labs have no patient ids)
REFER_FRACTIONS = (0.0, 0.05, 0.20)
MIN_TEST = 30  # a k that leaves fewer test cells is not measured
# No pixel size is stated (its README: measure it). The red-cell ruler (device.analysis.scale.estimate_scale) reads
# 182 of its 300 images (p10-p90 0.124-0.212, the images are only ~120 px across): their median, for the whole
# set, as training.datasets does for a source whose single images are too small to measure one by one. Measured
# per image instead, the finder misses the central cell in two images of three.
JIANGXI_UM_PER_PX = 0.158


def lab_records(name: str, task: str):
    from device.model import vocabulary
    from training.datasets import AML_CLASSES, Record, read_aml_lmu
    from training.recorded import data_root

    if name == "aml-lmu":
        recs = []
        for r in read_aml_lmu(data_root("aml-cytomorphology-lmu")).records:
            code = r.relpath.split("/")[0]
            lab = vocabulary.task_label(task, AML_CLASSES[code]) if AML_CLASSES.get(code) else None
            if lab:
                recs.append(Record(**{**r.__dict__, "label": lab}))
        return recs
    root = data_root("jiangxi-tecom-wbc")
    names = {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}
    recs = []
    for line in (root / "labels.csv").read_text().splitlines()[1:]:
        iid, cls = [v.strip() for v in line.split(",")[:2]]
        if cls in names:
            rel = f"images/{int(iid):03d}.bmp"
            recs.append(Record(str(root / rel), rel, vocabulary.task_label(task, names[cls]), None, "jiangxi-tecom-wbc",
                               JIANGXI_UM_PER_PX, "cell"))
    return recs


def embed_lab(bundle, records, threads: int):
    from convert.reference import embed

    emb, y, probs = embed(bundle, records, threads)
    return emb.astype(np.float16).astype(np.float32), y.astype(int), probs  # float16, as the box stores them


def _decide(bundle, cal, emb, probs):
    from device.calibration.fit import decisions

    if cal is None:
        return decisions(probs, emb, bundle.ood, bundle.thresholds, bundle.categories)
    p, ood, th = cal.adjust(probs, emb)
    return decisions(p, emb, ood, th, bundle.categories)


def _refer(top, flagged, y, cats, cal, fraction, samples, rng) -> int:
    """Samples of 100 test cells at ``fraction`` blasts; after review (uncertain cells decided by truth)."""
    from device.calibration.referral import excess

    cat = np.array(cats)
    blast_i, normal_i = np.nonzero(cat[y] == "malignant")[0], np.nonzero(cat[y] != "malignant")[0]
    nb = int(round(100 * fraction))
    if nb and not len(blast_i):
        return -1
    final = np.where(flagged, y, top)  # a flagged cell is decided by its reviewer; the rest keep the model's call
    referred = 0
    for _ in range(samples):
        idx = np.concatenate([rng.choice(blast_i, nb), rng.choice(normal_i, 100 - nb)]) if nb else \
            rng.choice(normal_i, 100)
        fc = cat[final[idx]]
        n = int(np.isin(fc, ("normal", "malignant", "atypical")).sum())
        b = int((fc == "malignant").sum())
        if cal is not None:
            referred += excess(b, n, cal.false_call_rate)["refer"]
        else:
            referred += n > 0 and b / n >= 0.03
    return referred


def simulate_lab(bundle, reference, emb, y, probs, ks, draws, samples, seed) -> dict:
    from device.calibration import CalibrationRefused, SiteCells, fit_calibration
    from device.calibration.fit import MIN_CELLS, MIN_SAMPLES

    cats = np.array(bundle.categories)
    has_blasts = bool((cats[y] == "malignant").any())
    out = {}
    for k in ks:
        if len(y) - k < MIN_TEST:
            out[str(k)] = {"skipped": f"the lab has {len(y)} cells: {k} reviewed leave fewer than {MIN_TEST} to test"}
            continue
        acc = {"ncb": [0, 0], "nrev": [0, 0], "screen": [0, 0], "strict": [0, 0]}
        refer = {f: [0, 0] for f in REFER_FRACTIONS}
        refused, reasons, fits, rates = 0, set(), [], []
        rng = np.random.default_rng([seed, k])
        for _ in range(draws if k else 1):
            order = rng.permutation(len(y))
            rev, test = order[:k], order[k:]
            cal = None
            if k:
                site = SiteCells(emb[rev], y[rev], probs[rev], np.arange(k) // PER_SAMPLE, np.ones(k, bool))
                try:
                    cal = fit_calibration(bundle, reference, site, min_cells=1, min_samples=1)
                    fits.append(cal.fit_seconds)
                    rates.append(cal.false_call_rate)
                except CalibrationRefused as exc:
                    refused += 1
                    reasons.add(str(exc).split(" (")[0])
            top, flagged = _decide(bundle, cal, emb[test], probs[test])
            yt = y[test]
            normal = cats[yt] == "normal"
            blast = cats[yt] == "malignant"
            called = (cats[top] == "malignant") & ~flagged
            for key, hit, base in (("ncb", called, normal), ("nrev", flagged, normal), ("screen", called | flagged, blast),
                                   ("strict", called, blast)):
                acc[key][0] += int((hit & base).sum())
                acc[key][1] += int(base.sum())
            for f in REFER_FRACTIONS:
                r = _refer(top, flagged, yt, bundle.categories, cal, f, samples, rng)
                if r >= 0:
                    refer[f][0] += r
                    refer[f][1] += samples
        row = {"normal_called_blast": share(*acc["ncb"]), "normal_review": share(*acc["nrev"]),
               "screen_sensitivity": share(*acc["screen"]) if has_blasts else None,
               "strict_sensitivity": share(*acc["strict"]) if has_blasts else None,
               "draws": draws if k else 1, "refused": refused, "refusals": sorted(reasons),
               "box_calibrates": k >= MIN_CELLS and k // PER_SAMPLE >= MIN_SAMPLES,
               "false_call_rate_mean": round(float(np.mean(rates)), 4) if rates else None,
               "fit_seconds_median": round(float(np.median(fits)), 3) if fits else None}
        for f in REFER_FRACTIONS:
            row[f"referred_{int(round(100 * f))}"] = share(*refer[f]) if refer[f][1] else None
        out[str(k)] = row
    return out


def unlabelled(bundle, reference, emb, y, probs, draws, seed, k=100) -> dict | None:
    """Without labels: the per-class "unfamiliar" statistics re-estimated from k of the lab's unreviewed cells
    (the bundle's own calls as their classes) with the reference cells; the rest of the lab is the test."""
    from device.calibration.fit import decisions, fit_ood

    if len(y) - k < MIN_TEST:
        return None
    cats = np.array(bundle.categories)
    acc = {"bundle": np.zeros(5, int), "unlabelled": np.zeros(5, int)}
    rng = np.random.default_rng([seed, 99])
    for _ in range(draws):
        order = rng.permutation(len(y))
        un, test = order[:k], order[k:]
        pseudo = probs[un].argmax(1)
        ood = fit_ood(np.concatenate([reference.emb, emb[un]]), np.concatenate([reference.y, pseudo]),
                      np.concatenate([reference.probs.argmax(1), pseudo]), len(cats), bundle.ood)
        for name, stats in (("bundle", bundle.ood), ("unlabelled", ood)):
            top, flagged = decisions(probs[test], emb[test], stats, bundle.thresholds, bundle.categories)
            yt = y[test]
            normal, blast = cats[yt] == "normal", cats[yt] == "malignant"
            called = (cats[top] == "malignant") & ~flagged
            acc[name] += [(called & normal).sum(), (flagged & normal).sum(), normal.sum(),
                          ((called | flagged) & blast).sum(), blast.sum()]
    return {name: {"normal_called_blast": share(a[0], a[2]), "normal_review": share(a[1], a[2]),
                   "screen_sensitivity": share(a[3], a[4]) if a[4] else None} for name, a in acc.items()}


def fit_time_2000(bundle, reference, emb, y, probs, seed) -> float:
    """One fit on 2,000 reviewed cells (the lab's cells redrawn, 80 samples of 25), one BLAS thread."""
    from device.calibration import SiteCells, fit_calibration

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), 2000)
    noise = rng.normal(0, 0.01, (2000, emb.shape[1])).astype(np.float32)
    site = SiteCells(emb[idx] + noise, y[idx], probs[idx], np.arange(2000) // PER_SAMPLE, np.ones(2000, bool))
    t0 = time.perf_counter()
    try:
        fit_calibration(bundle, reference, site)
    except Exception:  # noqa: BLE001 - a refusal still costs the whole fit
        pass
    return round(time.perf_counter() - t0, 2)


def _fmt(s):
    if not s or s.get("value") is None:
        return "    -           "
    from device.records.counts import wilson_interval

    lo, hi = wilson_interval(s["k"], s["n"])
    return f"{s['value']:.3f} [{lo:.3f}-{hi:.3f}] ({s['k']}/{s['n']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="default: the appliance's bundled default")
    ap.add_argument("--fast", action="store_true", help="fewer cells, k, draws and samples (CI)")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--samples", type=int, default=500, help="simulated 100-cell samples per draw and fraction")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from device.calibration.fit import MIN_CELLS, MIN_SAMPLES, Reference
    from device.model.bundle import load_bundle
    from convert.reference import embed, reference_records

    t0 = time.monotonic()
    bundle = load_bundle(args.bundle)
    ks, draws, samples = ((0, 25, 100), 2, 100) if args.fast else (KS, args.draws, args.samples)
    if bundle.reference is not None:
        ref = bundle.reference
        reference = Reference(ref["embeddings"], ref["labels"], ref["probabilities"])
        ref_source = "the bundle's reference.npz"
    else:  # an older bundle: the same cells the add-reference command would store
        e, yy, p = embed(bundle, reference_records(bundle, per_label=10 if args.fast else 40,
                                                   max_blasts=40 if args.fast else 150), args.threads)
        reference = Reference(e.astype(np.float16).astype(np.float32), yy.astype(int), p)
        ref_source = "computed from test_files.csv (the bundle has no reference.npz)"
    out = {"bench": "site_calibration", "bundle": bundle.name, "sha256": bundle.sha256, "fast": args.fast,
           "reference": {"source": ref_source, "cells": int(len(reference.y))}, "min_cells": MIN_CELLS,
           "min_samples": MIN_SAMPLES, "cells_per_sample": PER_SAMPLE, "labs": {}}
    task = bundle.meta.task
    fit_data = None
    for lab in ("aml-lmu", "jiangxi"):
        recs = lab_records(lab, task)
        if args.fast:
            recs = recs[::3] if lab == "jiangxi" else recs
        emb, y, probs = embed_lab(bundle, recs, args.threads)
        out["labs"][lab] = {"cells": int(len(y)), "records": len(recs),
                            "blasts": int((np.array(bundle.categories)[y] == "malignant").sum()),
                            "k": simulate_lab(bundle, reference, emb, y, probs, ks, draws, samples, args.seed),
                            "unlabelled_k100": unlabelled(bundle, reference, emb, y, probs, draws, args.seed)}
        if fit_data is None or len(y) > len(fit_data[1]):
            fit_data = (emb, y, probs)
    out["fit_seconds_2000"] = fit_time_2000(bundle, reference, *fit_data, args.seed)
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(f"{bundle.name}; reference: {ref_source} ({len(reference.y)} cells); box calibrates from {MIN_CELLS} cells "
          f"in {MIN_SAMPLES} samples")
    for lab, d in out["labs"].items():
        print(f"{lab}: {d['cells']} cells ({d['blasts']} blasts)")
        for k, row in d["k"].items():
            if "skipped" in row:
                print(f"  k={k:>3}: {row['skipped']}")
                continue
            print(f"  k={k:>3} normal->blast {_fmt(row['normal_called_blast'])} review {_fmt(row['normal_review'])} "
                  f"screen {_fmt(row['screen_sensitivity'])} refused {row['refused']}/{row['draws']}")
            print(f"        referred 0% {_fmt(row['referred_0'])} 5% {_fmt(row['referred_5'])} "
                  f"20% {_fmt(row['referred_20'])}")
        u = d["unlabelled_k100"]
        if u:
            print(f"  without labels (100 unreviewed cells re-estimate the unfamiliar statistics): normal review "
                  f"{_fmt(u['bundle']['normal_review'])} -> {_fmt(u['unlabelled']['normal_review'])}")
    print(f"fit on 2,000 reviewed cells: {out['fit_seconds_2000']} s (one BLAS thread)")
    result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
