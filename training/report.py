"""The evaluation report: metrics, operating points and plots for one model on one split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from device.model import vocabulary
from training import metrics
from training.config import EvalConfig


def malignant_score(probs: np.ndarray, class_names: list[str]) -> np.ndarray | None:
    mask = np.array([vocabulary.category_of(c) == "malignant" for c in class_names])
    return probs[:, mask].sum(1) if mask.any() else None


def build_report(class_names: list[str], test_probs: np.ndarray, test_y: np.ndarray,
                 val_probs: np.ndarray, val_y: np.ndarray, cfg: EvalConfig) -> dict:
    """Metrics on test; thresholds chosen on validation and then applied to test."""
    report = metrics.classification_metrics(test_y, test_probs, class_names)
    t_review = metrics.review_threshold(val_probs, val_y, cfg.review_accuracy)
    kept = test_probs.max(1) >= t_review
    report["review"] = {
        "threshold": t_review,
        "target_accuracy": cfg.review_accuracy,
        "test_fraction_kept": float(kept.mean()) if len(kept) else 0.0,
        "test_accuracy_kept": float((test_probs.argmax(1) == test_y)[kept].mean()) if kept.any() else None,
    }
    report["reliability"] = metrics.reliability(test_probs, test_y)
    val_score = malignant_score(val_probs, class_names)
    if val_score is not None and not np.isin(val_y, [i for i, c in enumerate(class_names)
                                                    if vocabulary.category_of(c) == "malignant"]).any():
        report["malignant_note"] = "no malignant cell in the validation split: no operating point chosen"
        val_score = None
    if val_score is not None:
        malignant_idx = [i for i, c in enumerate(class_names) if vocabulary.category_of(c) == "malignant"]
        val_pos = np.isin(val_y, malignant_idx)
        test_pos = np.isin(test_y, malignant_idx)
        test_score = malignant_score(test_probs, class_names)
        op = metrics.operating_point(val_pos, val_score, cfg.target_sensitivity)
        t = op["chosen"]["threshold"]
        t_review = min(t, metrics.threshold_for_sensitivity(val_pos, val_score, cfg.review_sensitivity))
        if cfg.blast_specificity:
            # Two points: "called blast" only where validation normal cells reach the target specificity;
            # below it, down to the screening point (target sensitivity), a cell goes to review as a possible
            # blast. A screen then catches its blasts by review, not by calling normal cells blast.
            t_strict = metrics.threshold_for_specificity(val_pos, val_score, cfg.blast_specificity)
            if t_strict > t:
                t, t_review = t_strict, t
        report["malignant"] = {
            "target_sensitivity": cfg.target_sensitivity,
            "blast_specificity": cfg.blast_specificity or None,
            "chosen_on": "val",
            "validation": metrics.sensitivity_specificity(val_pos, val_score, t),
            "validation_points": op,
            "review_threshold": t_review,
            "review_sensitivity": cfg.review_sensitivity,
            "test": metrics.sensitivity_specificity(test_pos, test_score, t),
            "test_roc_auc": metrics.roc_auc(test_pos, test_score),
        }
    return report


def write_report(out_dir: Path, report: dict, class_names: list[str], test_probs: np.ndarray,
                 test_y: np.ndarray, stem: str = "report") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    plot_confusion(out_dir / f"{stem}_confusion.png", np.array(report["confusion_matrix"]), class_names)
    plot_roc(out_dir / f"{stem}_roc.png", test_probs, test_y, class_names)
    plot_reliability(out_dir / f"{stem}_calibration.png", report["reliability"], report["ece"])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: Path, cm: np.ndarray, class_names: list[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(class_names), 0.8 + 0.6 * len(class_names)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path: Path, probs: np.ndarray, y: np.ndarray, class_names: list[str]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, name in enumerate(class_names):
        if (y == i).any() and (y != i).any():
            fpr, tpr = metrics.roc_curve(y == i, probs[:, i])
            ax.plot(fpr, tpr, label=f"{name} ({metrics.roc_auc(y == i, probs[:, i]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(path: Path, bins: list[dict], ece: float) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=1 / 15, align="edge",
           edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {ece:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(path: Path, history: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "val_loss"):
        if key in history:
            axes[0].plot(history[key], label=key)
    for key in ("accuracy", "val_accuracy", "val_balanced_accuracy"):
        if key in history:
            axes[1].plot(history[key], label=key)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("epoch")
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
