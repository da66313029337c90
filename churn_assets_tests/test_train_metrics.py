"""The holdout's metrics (``train.evaluate``, ``train.roc_auc``) equal scikit-learn's on holdouts
with ties, imbalance, thresholds at the edges and a perfect or inverted ranking."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from churn_assets.defs.ml.train import evaluate, roc_auc


def sklearn_metrics(labels, proba, threshold) -> dict[str, float]:
    predicted = proba >= threshold
    return {
        "holdout_roc_auc": roc_auc_score(labels, proba),
        "holdout_pr_auc": average_precision_score(labels, proba),
        "holdout_f1": f1_score(labels, predicted, zero_division=0),
        "holdout_precision": precision_score(labels, predicted, zero_division=0),
        "holdout_recall": recall_score(labels, predicted, zero_division=0),
        "holdout_log_loss": log_loss(labels, np.clip(proba, 1e-7, 1 - 1e-7)),
    }


def holdouts():
    rng = np.random.default_rng(7)
    for n, share, decimals in [(50, 0.5, 1), (1_000, 0.1, 2), (20_000, 0.6, 3), (5_000, 0.02, 8), (3, 0.34, 2)]:
        labels = (rng.random(n) < share).astype(int)
        labels[:2] = [0, 1]  # both classes
        proba = np.round(np.clip(rng.random(n) * 0.7 + labels * 0.25, 0, 1), decimals)  # ties at low precision
        yield labels, proba
    labels = np.array([0, 0, 1, 1, 1])
    yield labels, np.array([0.1, 0.2, 0.7, 0.8, 0.9])  # perfect ranking
    yield labels, np.array([0.9, 0.8, 0.3, 0.2, 0.1])  # inverted
    yield labels, np.full(5, 0.5)  # one probability for everyone


@pytest.mark.parametrize("case", list(range(8)))
@pytest.mark.parametrize("threshold", [0.0, 0.35, 0.5, 0.9, 1.01])
def test_the_metrics_are_scikit_learns(case, threshold):
    labels, proba = list(holdouts())[case]
    ours, theirs = evaluate(labels, proba, threshold), sklearn_metrics(labels, proba, threshold)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12, abs=1e-12), name
    assert roc_auc(labels, proba) == ours["holdout_roc_auc"]


def test_one_class_has_no_auc():
    with pytest.raises(ValueError, match="Only one class"):
        evaluate(np.ones(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]), 0.5)
