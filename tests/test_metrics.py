from __future__ import annotations

import numpy as np
import pytest

from training import metrics


def test_roc_auc_known_values():
    pos = np.array([1, 1, 0, 0])
    assert metrics.roc_auc(pos, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert metrics.roc_auc(pos, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert metrics.roc_auc(pos, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert metrics.roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2])) == 0.75
    assert metrics.roc_auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 0])
    probs = np.eye(3)[pred] * 0.9 + 0.1 / 3
    m = metrics.classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["specificity"] == pytest.approx(3 / 4)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["c"]["f1"] == 0.0


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert metrics.expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_threshold_reaches_the_target_sensitivity():
    rng = np.random.default_rng(0)
    pos = rng.random(1000) < 0.3
    score = np.where(pos, rng.normal(0.7, 0.15, 1000), rng.normal(0.3, 0.15, 1000))
    t = metrics.threshold_for_sensitivity(pos, score, 0.95)
    ss = metrics.sensitivity_specificity(pos, score, t)
    assert ss["sensitivity"] >= 0.95
    # and it is the highest such threshold: a hair higher drops below target
    assert metrics.sensitivity_specificity(pos, score, t + 1e-9)["sensitivity"] < 0.95


def test_review_threshold_meets_accuracy_on_kept_cells():
    rng = np.random.default_rng(1)
    conf = rng.random(500) * 0.5 + 0.5
    y = np.zeros(500, int)
    correct = rng.random(500) < conf  # more confident -> more often right
    pred = np.where(correct, 0, 1)
    probs = np.stack([np.where(pred == 0, conf, 1 - conf), np.where(pred == 1, conf, 1 - conf)], 1)
    t = metrics.review_threshold(probs, y, 0.95)
    kept = probs.max(1) >= t
    assert (probs.argmax(1) == y)[kept].mean() >= 0.95
    assert 0 < kept.mean() < 1


def test_threshold_for_specificity_lets_only_the_allowed_negatives_through():
    import numpy as np

    from training.metrics import sensitivity_specificity, threshold_for_specificity

    neg = np.linspace(0.0, 0.5, 200)
    pos = np.linspace(0.3, 1.0, 50)
    score = np.concatenate([neg, pos])
    positive = np.r_[np.zeros(200, bool), np.ones(50, bool)]
    t = threshold_for_specificity(positive, score, 0.99)
    ss = sensitivity_specificity(positive, score, t)
    assert ss["fp"] == 2 and ss["specificity"] == 0.99  # 1 % of 200 negatives may pass, no more
    assert threshold_for_specificity(positive, score, 1.0) > neg.max()


def test_two_point_rule_calls_blast_at_the_specific_point_and_reviews_down_to_the_screening_point():
    import numpy as np

    from training.config import EvalConfig
    from training.report import build_report

    rng = np.random.default_rng(0)
    names = ["blast", "lymphocyte"]

    def probs(n_pos, n_neg):
        b = np.r_[rng.beta(5, 2, n_pos), rng.beta(2, 5, n_neg)]
        return np.c_[b, 1 - b], np.r_[np.zeros(n_pos, int), np.ones(n_neg, int)]

    p_va, y_va = probs(200, 400)
    p_te, y_te = probs(200, 400)
    one = build_report(names, p_te, y_te, p_va, y_va, EvalConfig(target_sensitivity=0.97))["malignant"]
    two = build_report(names, p_te, y_te, p_va, y_va,
                       EvalConfig(target_sensitivity=0.97, blast_specificity=0.99))["malignant"]
    assert two["review_threshold"] == one["validation"]["threshold"]  # review reaches the screening point
    assert two["validation"]["threshold"] > one["validation"]["threshold"]
    assert two["validation"]["specificity"] >= 0.99 > one["validation"]["specificity"]
