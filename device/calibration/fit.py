"""Fitting a site calibration from reviewed cells, and judging it before it may be used.

The head: logits = alpha * log p_bundle + z W + b, where z is the cell's embedding standardised by the
bundle's reference set. It starts as the bundle's own head (alpha 1, W 0, b 0) and the L2 penalty pulls it
back there, so a handful of reviewed cells moves it little (the bundle's head is the prior). It is fitted
on the bundle's reference cells (blasts and normal cells of the training labs) together with the site's
reviewed cells, so it never learns "looks like this lab = normal" from the site's normal cells alone.

Every figure is out of fold: the reference and site cells are split in folds (site cells by sample), each
fold is predicted by a head fitted without it, and the thresholds are chosen on those predictions:
- blast operating point: the highest blast probability that keeps the bundle's target sensitivity on the
  reference blasts (and on the site's blasts confirmed by a qualified reviewer);
- "possible blast" review band: the same for the bundle's review sensitivity;
- review threshold: the lowest top probability at which the site's kept cells are right REVIEW_ACCURACY
  of the time;
- "unfamiliar": per-class Mahalanobis statistics of reference + site cells (99.5th percentile per class).
A calibration whose out-of-fold sensitivity on the reference blasts falls below the bundle's target (the
operating point is chosen to keep it, so this is the last check, not the usual reason), whose screening
sensitivity (called blast or sent to review) falls below the bundle's own on the same blasts or on the site's
confirmed blasts, or that calls more of the site's held-back normal cells blast than the bundle does, is
refused with the reason, as is one fitted on fewer than MIN_CELLS cells from MIN_SAMPLES samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

# Chosen with bench.site_calibration (see README): the refer rule's rate (k + 1) / (n + 2) cannot fall below
# 1 / (n + 2), 1 % from 100 cells; 4 samples so that the 4 out-of-fold folds split the site's cells by sample.
MIN_CELLS = 100
MIN_SAMPLES = 4
FOLDS = 4
SITE_WEIGHT = 6.0  # one reviewed cell of this box weighs as much as six reference cells
L2 = 0.01  # on W, b and alpha - 1: how strongly the bundle's head is kept (chosen by bench.site_calibration)
STEPS = 250
REVIEW_ACCURACY = 0.97  # kept cells right this often (the recipes ask 0.99 of the bundle's validation)
OOD_QUANTILE = 0.995
SHRINK = 0.2  # covariance shrinkage toward its diagonal: a few hundred cells for d of 256-1280


class CalibrationRefused(ValueError):
    """A calibration that must not be used; the message says why, for the administrator."""


@dataclass
class Reference:
    """The bundle's own held-out cells: embeddings, label indices, and the bundle's probabilities."""
    emb: np.ndarray
    y: np.ndarray
    probs: np.ndarray


@dataclass
class SiteCells:
    """Reviewed cells of this box: embedding, final label index, the bundle's probabilities, sample,
    and whether a qualified reviewer decided it (only those may teach a blast)."""
    emb: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    sample: np.ndarray
    qualified: np.ndarray

    def take(self, keep: np.ndarray) -> "SiteCells":
        return SiteCells(self.emb[keep], self.y[keep], self.probs[keep], self.sample[keep], self.qualified[keep])


@dataclass
class Calibration:
    bundle_sha256: str
    labels: list[str]
    categories: list[str]
    mu: np.ndarray
    sd: np.ndarray
    alpha: float
    W: np.ndarray
    b: np.ndarray
    thresholds: dict
    ood: dict
    false_calls: tuple[int, int]  # the site's reviewed normal cells called blast (out of fold): k of n
    n_cells: int
    n_samples: int
    created_at: str
    figures: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    record_id: int | None = None  # its row on the box (set by device.records.calibrations)

    @property
    def name(self) -> str:
        """In plain words, for the result page and the PDF."""
        return f"calibrated on {self.n_cells} cells reviewed on this box, {self.date}"

    @property
    def false_call_rate(self) -> float:
        """Normal cells called blast per counted normal cell, smoothed (k + 1) / (n + 2): never exactly zero."""
        k, n = self.false_calls
        return (k + 1) / (n + 2)

    @property
    def date(self) -> str:
        return self.created_at[:10]

    def probabilities(self, emb: np.ndarray, probs: np.ndarray) -> np.ndarray:
        return _predict(self.alpha, self.W, self.b, _z(emb, self.mu, self.sd), _logp(probs))

    def adjust(self, probs: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, dict, dict]:
        """What the classifier uses in place of the bundle's: (probabilities, ood statistics, thresholds)."""
        return self.probabilities(emb, probs).astype(np.float32), self.ood, self.thresholds


# -- the head ---------------------------------------------------------------------------------------------
def _logp(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-4, 1.0))


def _z(emb, mu, sd) -> np.ndarray:
    return (np.asarray(emb, np.float64) - mu) / sd


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(1, keepdims=True)


def _predict(alpha, W, b, Z, L) -> np.ndarray:
    return _softmax(alpha * L + Z @ W + b)


def fit_head(Z: np.ndarray, L: np.ndarray, y: np.ndarray, w: np.ndarray, k: int, l2: float = L2,
             steps: int = STEPS, lr: float = 0.05) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted multinomial logistic regression (Adam, full batch) starting from, and pulled toward, the bundle."""
    n, d = Z.shape
    Y = np.zeros((n, k))
    Y[np.arange(n), y] = 1.0
    w = w / w.sum()
    params = [np.array(1.0), np.zeros((d, k)), np.zeros(k)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        alpha, W, b = params
        G = (_predict(alpha, W, b, Z, L) - Y) * w[:, None]
        grads = [np.array((G * L).sum() + 2 * l2 * (alpha - 1.0)), Z.T @ G + 2 * l2 * W, G.sum(0) + 2 * l2 * b]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] = params[i] - lr * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
    return float(params[0]), params[1], params[2]


# -- unfamiliar-cell statistics ----------------------------------------------------------------------------
def fit_ood(emb: np.ndarray, y: np.ndarray, called: np.ndarray, k: int, fallback: dict | None) -> dict:
    """Class means, a shared (shrunk) precision, and each class's 99.5th percentile of distances of the cells
    called that class, in the layout of the bundle's ood.npz (so ``ood_scores`` reads both)."""
    emb = np.asarray(emb, np.float64)
    d = emb.shape[1]
    means = np.zeros((k, d))
    for c in range(k):
        if (y == c).sum() >= 3:
            means[c] = emb[y == c].mean(0)
        elif fallback is not None:
            means[c] = fallback["means"][c]
        else:
            means[c] = emb.mean(0)
    resid = emb - means[y]
    cov = resid.T @ resid / max(1, len(emb) - k)
    cov = (1 - SHRINK) * cov + SHRINK * np.diag(np.diag(cov)) + 1e-6 * np.eye(d) * max(np.trace(cov) / d, 1e-12)
    precision = np.linalg.inv(cov)
    diff = emb - means[called]
    dist = np.einsum("nd,de,ne->n", diff, precision, diff)
    overall = float(np.quantile(dist, OOD_QUANTILE))
    spread = np.array([float(np.quantile(dist[called == c], OOD_QUANTILE)) if (called == c).sum() >= 30 else overall
                       for c in range(k)])
    return {"means": means.astype(np.float32), "precision": precision.astype(np.float32),
            "class_threshold": np.maximum(spread, 1e-6).astype(np.float32)}


# -- decisions and figures ---------------------------------------------------------------------------------
def decisions(probs: np.ndarray, emb: np.ndarray, ood: dict | None, thresholds: dict, categories: list[str]):
    """The device's own rule (``classifier.decide``) for each cell: (label index, flagged)."""
    from device.model.classifier import decide, ood_scores

    mal = [i for i, c in enumerate(categories) if c == "malignant"]
    scores = None if ood is None or emb is None else ood_scores(np.asarray(emb, np.float32), ood, probs.argmax(1))
    top = np.zeros(len(probs), int)
    flagged = np.zeros(len(probs), bool)
    for i, p in enumerate(probs):
        t, flag = decide(p, mal, None if scores is None else float(scores[i]), thresholds)
        top[i], flagged[i] = t, flag is not None
    return top, flagged


def _share(k, n) -> dict:
    return {"k": int(k), "n": int(n), "value": round(float(k) / n, 4) if n else None}


def figures(top, flagged, y, categories, positives=None) -> dict:
    """Normal cells called blast / sent to review; blasts called blast / caught (called or reviewed); agreement."""
    cat = np.array(categories)
    mal = cat[top] == "malignant"
    called_blast = mal & ~flagged
    normal = cat[y] == "normal"
    blast = cat[y] == "malignant" if positives is None else positives
    return {"normal_called_blast": _share((called_blast & normal).sum(), normal.sum()),
            "normal_review": _share((flagged & normal).sum(), normal.sum()),
            "blast_sensitivity": _share((called_blast & blast).sum(), blast.sum()),
            "screen_sensitivity": _share(((called_blast | flagged) & blast).sum(), blast.sum()),
            "agreement": _share(((top == y) & ~flagged).sum(), (~flagged).sum())}


def _threshold_for(scores: np.ndarray, target: float) -> float | None:
    """The highest threshold t with mean(scores >= t) >= target."""
    if not len(scores):
        return None
    s = np.sort(scores)
    misses = int(np.floor(len(s) * (1 - target) + 1e-9))
    return float(s[min(misses, len(s) - 1)])


def _review_threshold(top_p: np.ndarray, correct: np.ndarray, target: float, fallback: float) -> float:
    """The lowest top probability at which the kept cells are right ``target`` of the time (at least 20 kept)."""
    if len(top_p) < 20:
        return fallback
    order = np.argsort(-top_p)
    acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(acc >= target)[0]
    ok = ok[ok >= 19]
    if not len(ok):
        return max(fallback, float(top_p.max()))
    return float(top_p[order][ok.max()])


def _folds(n_ref: int, samples: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref_fold = rng.permutation(n_ref) % k
    uniq = np.unique(samples)
    if len(uniq) >= k:
        fold_of = dict(zip(rng.permutation(uniq).tolist(), np.arange(len(uniq)) % k))
        site_fold = np.array([fold_of[s] for s in samples.tolist()], int)
    else:
        site_fold = rng.permutation(len(samples)) % k
    return ref_fold, site_fold


def _target(bundle) -> tuple[float, float]:
    """The bundle's blast target sensitivity and its review ("possible blast") sensitivity."""
    m = bundle.meta.test_metrics
    mal = (m.malignant if m else None) or {}
    return float(mal.get("target_sensitivity", 0.97)), float(mal.get("review_sensitivity", 0.995))


def usable(site: SiteCells, categories: list[str]) -> np.ndarray:
    """Which reviewed cells may teach: every non-malignant decision, and blasts only from a qualified reviewer."""
    cat = np.array(categories)[site.y]
    return (cat != "malignant") | site.qualified.astype(bool)


def fit_calibration(bundle, reference: Reference | None, site: SiteCells, min_cells: int = MIN_CELLS,
                    min_samples: int = MIN_SAMPLES, seed: int = 0) -> Calibration:
    """Fit, judge out of fold, refuse with the reason, or return the calibration (fitted on every cell)."""
    t0 = time.process_time()
    if reference is None or not len(reference.y):
        raise CalibrationRefused(f"{bundle.name} carries no reference cells (reference.npz), so a calibration cannot "
                                 "be checked against its blasts; add them with `leukoscope model add-reference`")
    cats = bundle.categories
    k = len(cats)
    site = site.take(usable(site, cats))
    n_samples = len(np.unique(site.sample))
    if len(site.y) < min_cells or n_samples < min_samples:
        raise CalibrationRefused(f"too few reviewed cells: {len(site.y)} from {n_samples} samples; at least "
                                 f"{min_cells} cells from {min_samples} samples are needed")
    if site.emb.shape[1] != reference.emb.shape[1]:
        raise CalibrationRefused("the stored embeddings do not match the bundle's reference cells (another model?)")
    target, review_target = _target(bundle)
    mal = [i for i, c in enumerate(cats) if c == "malignant"]
    if not mal:
        raise CalibrationRefused(f"{bundle.name} has no blast class: there is no operating point to calibrate")
    ref_e = np.asarray(reference.emb, np.float64)
    mu, sd = ref_e.mean(0), ref_e.std(0) + 1e-6
    E = np.concatenate([ref_e, np.asarray(site.emb, np.float64)])
    Z, L = _z(E, mu, sd), _logp(np.concatenate([reference.probs, site.probs]))
    y = np.concatenate([reference.y, site.y]).astype(int)
    n_ref = len(reference.y)
    w = np.concatenate([np.ones(n_ref), np.full(len(site.y), SITE_WEIGHT)])
    is_site = np.arange(len(y)) >= n_ref
    ref_fold, site_fold = _folds(n_ref, site.sample, FOLDS, seed)
    fold = np.concatenate([ref_fold, site_fold])

    oof = np.zeros((len(y), k))
    for f in range(FOLDS):
        tr = fold != f
        alpha, W, b = fit_head(Z[tr], L[tr], y[tr], w[tr], k)
        oof[~tr] = _predict(alpha, W, b, Z[~tr], L[~tr])
    blast_score = oof[:, mal].sum(1)
    positives = np.isin(y, mal) & (~is_site | np.concatenate([np.zeros(n_ref, bool), site.qualified.astype(bool)]))
    # the operating point keeps the bundle's target on its reference blasts; the "possible blast" band reaches
    # down far enough to send the site's confirmed blasts to review too (they may look unlike the reference's)
    t_mal = _threshold_for(blast_score[positives & ~is_site], target)
    t_rev = min(_threshold_for(blast_score[positives], review_target), t_mal)
    below = blast_score < t_mal
    site_keep = is_site & below
    # never stricter than the bundle's own: a site whose cells are hard keeps the bundle's review rate
    t_review = min(_review_threshold(oof[site_keep].max(1), oof[site_keep].argmax(1) == y[site_keep],
                                     REVIEW_ACCURACY, float(bundle.thresholds.get("review", 0.5))),
                   float(bundle.thresholds.get("review", 1.0)))
    thresholds = {"review": t_review, "malignant": t_mal, "malignant_review": t_rev, "ood": 1.0}

    # out-of-fold "unfamiliar" statistics, so the figures below are honest about them too
    oof_ood_top, oof_flag = np.zeros(len(y), int), np.zeros(len(y), bool)
    for f in range(FOLDS):
        tr = fold != f
        ood_f = fit_ood(E[tr], y[tr], oof[tr].argmax(1), k, bundle.ood)
        oof_ood_top[~tr], oof_flag[~tr] = decisions(oof[~tr], E[~tr], ood_f, thresholds, cats)
    before_top, before_flag = decisions(np.concatenate([reference.probs, site.probs]).astype(np.float32), E,
                                        bundle.ood, bundle.thresholds, cats)
    ref, st = ~is_site, is_site
    figs = {"before": {"site": figures(before_top[st], before_flag[st], y[st], cats, positives[st]),
                       "reference": figures(before_top[ref], before_flag[ref], y[ref], cats)},
            "after": {"site": figures(oof_ood_top[st], oof_flag[st], y[st], cats, positives[st]),
                      "reference": figures(oof_ood_top[ref], oof_flag[ref], y[ref], cats)},
            "held_back": f"out of fold: {FOLDS} folds, site cells split by sample", "target_sensitivity": target}
    _judge(figs, target, bundle.name)

    alpha, W, b = fit_head(Z, L, y, w, k)
    final_probs = _predict(alpha, W, b, Z, L)
    ood = fit_ood(E, y, final_probs.argmax(1), k, bundle.ood)
    # per non-blast white cell (normal or atypical): the denominator the refer rule counts in
    normal_site = st & np.isin(np.array(cats)[y], ("normal", "atypical"))
    called = (np.array(cats)[oof_ood_top] == "malignant") & ~oof_flag
    return Calibration(bundle.sha256, list(bundle.labels), list(cats), mu, sd, alpha, W, b, thresholds, ood,
                       (int((called & normal_site).sum()), int(normal_site.sum())), int(len(site.y)), n_samples,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"), figs,
                       round(time.process_time() - t0, 3))


def _judge(figs: dict, target: float, name: str) -> None:
    sens = figs["after"]["reference"]["blast_sensitivity"]
    if sens["n"] and sens["value"] < target:
        raise CalibrationRefused(f"refused: blast sensitivity on {name}'s reference blasts would fall to "
                                 f"{sens['value']:.3f} ({sens['k']} of {sens['n']}), below its target {target:.2f}")
    before, after = figs["before"]["site"]["normal_called_blast"], figs["after"]["site"]["normal_called_blast"]
    if after["k"] > before["k"]:
        raise CalibrationRefused(f"refused: it would call more of this box's held-back normal cells blast "
                                 f"({after['k']} of {after['n']} instead of {before['k']})")
    for where, label in (("reference", f"{name}'s reference blasts"), ("site", "this box's confirmed blasts")):
        before, after = figs["before"][where]["screen_sensitivity"], figs["after"][where]["screen_sensitivity"]
        if before["n"] and after["k"] < before["k"]:
            raise CalibrationRefused(f"refused: fewer of {label} would be called blast or sent to review "
                                     f"({after['k']} of {after['n']} instead of {before['k']})")
