"""Evaluation metrics in plain NumPy, so they read the same in training and conversion."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    pos = positive[order].astype(np.float64)
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - pos) / max((1 - pos).sum(), 1)])
    return fpr, tpr


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> list[dict]:
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            out.append({"lo": float(lo), "hi": float(hi), "n": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
    return out


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    n = len(class_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(1)
    cm = confusion_matrix(y_true, y_pred, n)
    total = cm.sum()
    per_class = {}
    f1s, supports, sens = [], [], []
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        sensitivity = tp / (tp + fn) if tp + fn else None
        specificity = tn / (tn + fp) if tn + fp else None
        precision = tp / (tp + fp) if tp + fp else 0.0
        rec = sensitivity or 0.0
        f1 = 2 * precision * rec / (precision + rec) if precision + rec else 0.0
        per_class[name] = {
            "support": int(cm[i].sum()),
            "sensitivity": None if sensitivity is None else float(sensitivity),
            "specificity": None if specificity is None else float(specificity),
            "precision": float(precision),
            "f1": float(f1),
            "roc_auc": roc_auc(y_true == i, probs[:, i]),
        }
        if cm[i].sum():
            f1s.append(f1)
            supports.append(cm[i].sum())
            sens.append(sensitivity)
    aucs = [c["roc_auc"] for c in per_class.values() if c["roc_auc"] is not None]
    return {
        "n": int(total),
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "balanced_accuracy": float(np.mean(sens)) if sens else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "weighted_f1": float(np.average(f1s, weights=supports)) if f1s else 0.0,
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "ece": expected_calibration_error(probs, y_true),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold t with sensitivity(score >= t) >= target."""
    pos_scores = np.sort(score[positive.astype(bool)])[::-1]
    if len(pos_scores) == 0:
        raise ValueError("no positive cases to choose a threshold on")
    k = int(np.ceil(target * len(pos_scores)))  # positives that must be caught
    return float(pos_scores[max(k, 1) - 1])


def threshold_for_specificity(positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """The lowest threshold t at which specificity(score >= t) >= target: just above the highest
    negative score that the target allows to exceed it."""
    neg = np.sort(score[~positive.astype(bool)])[::-1]
    if len(neg) == 0:
        raise ValueError("no negative cases to choose a threshold on")
    allowed = int(np.floor((1.0 - target) * len(neg) + 1e-9))  # negatives that may lie at or above t
    if allowed >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[allowed], np.inf))


def operating_point(positive: np.ndarray, score: np.ndarray, target: float) -> dict:
    """The blast operating point for a screen, chosen on validation.

    Start from the highest threshold that reaches ``target`` sensitivity; then lower it while the
    specificity stays the same (down to just above the next negative's score): at equal
    specificity a screening programme wants the higher sensitivity. Returns the chosen point, the
    point that only just reaches the target, and the next point up in sensitivity (the threshold
    that also catches the next blast), each with its sensitivity and specificity."""
    positive = positive.astype(bool)
    keep = np.isfinite(score)
    positive, score = positive[keep], score[keep]
    t_target = threshold_for_sensitivity(positive, score, target)
    neg, pos = score[~positive], score[positive]
    below = neg[neg < t_target]
    floor = float(below.max()) if len(below) else -np.inf
    # the lowest positive score still above every negative that the target point rejects
    candidates = pos[(pos > floor) & (pos <= t_target)]
    t_chosen = float(candidates.min()) if len(candidates) else t_target
    if np.isfinite(floor):  # half-way to the rejected negative: a margin for blasts just below the last one seen
        t_chosen = (floor + t_chosen) / 2.0
    out = {"target_sensitivity": target,
           "at_target": sensitivity_specificity(positive, score, t_target),
           "chosen": sensitivity_specificity(positive, score, t_chosen)}
    lower = pos[pos < t_chosen]
    if len(lower):
        # the next point up in sensitivity: down to the next blast, with the specificity that costs
        out["next"] = sensitivity_specificity(positive, score, float(lower.max()))
    return out


def sensitivity_specificity(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    positive = positive.astype(bool)
    flagged = score >= threshold
    tp, fn = int((flagged & positive).sum()), int((~flagged & positive).sum())
    tn, fp = int((~flagged & ~positive).sum()), int((flagged & ~positive).sum())
    return {"threshold": float(threshold),
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def review_threshold(probs: np.ndarray, y_true: np.ndarray, target_accuracy: float) -> float:
    """Lowest confidence threshold at which the cells kept (top probability >= t)
    are classified with at least ``target_accuracy``; the rest go to review."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    order = np.argsort(-conf, kind="mergesort")
    acc_kept = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(acc_kept >= target_accuracy)[0]
    if len(ok) == 0:
        return float(conf.max()) if len(conf) else 1.0
    # the largest prefix (most cells kept) that still meets the target
    return float(conf[order][ok[-1]])


def per_image(pred: np.ndarray, owner: np.ndarray, image_labels: np.ndarray, n_classes: int) -> dict:
    """Field datasets (one label per image): each image's label by majority of its cells'
    predictions (ties: the lowest class index), against the image's label. Images with no
    cell found count as wrong and are reported apart."""
    n = len(image_labels)
    votes = np.zeros((n, n_classes), np.int64)
    np.add.at(votes, (owner, pred), 1)
    has = votes.sum(1) > 0
    called = votes.argmax(1)
    right = has & (called == image_labels)
    recalls = [float(right[image_labels == c].mean()) for c in range(n_classes) if (image_labels == c).any()]
    return {"images": int(n), "images_without_cell": int((~has).sum()),
            "accuracy": float(right.mean()) if n else 0.0,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
            "accuracy_of_images_with_cells": float(right[has].mean()) if has.any() else 0.0}
