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


_TRAIN_IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
{first}
from churn_assets.defs.ml.model import lightgbm
lgb = lightgbm()
without = 'sklearn' not in sys.modules and not lgb.compat.SKLEARN_INSTALLED
rng = np.random.default_rng(7)
x = rng.normal(size=(2000, 4))
y = (x[:, 0] + rng.normal(size=2000) > 0).astype(int)
params = {{"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True}}
booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=20)
import sklearn.metrics  # noqa: E402 - still importable afterwards
print(json.dumps([without, booster.predict(x[:50]).tolist()]))
"""


def test_lightgbm_is_imported_without_scikit_learn_and_trains_the_same():
    """A run imports LightGBM without its scikit-learn layer (0.9 of the 1.2 s of ``import
    lightgbm``); it trains and predicts exactly as LightGBM whole (scikit-learn imported first),
    and scikit-learn still imports afterwards. Fresh processes, as runs are."""
    import json
    import subprocess
    import sys

    def run(first: str):
        out = subprocess.run(
            [sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS.format(first=first)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    without, alone = run("")
    with_it, whole = run("import sklearn")
    assert without is True and with_it is False
    assert len(alone) == 50 and alone == whole
    assert min(alone) < 0.2 and max(alone) > 0.8  # a model that learned x0, not a constant
