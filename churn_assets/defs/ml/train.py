"""LightGBM training and holdout evaluation (pure: frames in, model and numbers out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from churn_assets.defs.ml.features import (
    CATEGORICAL,
    FEATURES,
    LABEL,
    as_categories,
    model_matrix,
    to_model_frame,
    vocabulary_of,
)

# LightGBM, scikit-learn, pandas and Polars are imported where used: every code-location load
# imports this module (Dagster loads every module under defs/), and they cost seconds.
if TYPE_CHECKING:
    import lightgbm as lgb
    import pandas as pd
    import polars as pl

DEFAULT_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 7,
    "deterministic": True,
    "num_threads": 2,
    "verbose": -1,
}
NUM_BOOST_ROUND = 200


@dataclass
class TrainedModel:
    booster: lgb.Booster
    vocabulary: dict[str, list[str]]
    params: dict = field(default_factory=dict)
    num_boost_round: int = NUM_BOOST_ROUND

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        from churn_assets.defs.ml.model import score

        return score(self.booster, self.vocabulary, frame)


def train(
    frame: pd.DataFrame, labels: np.ndarray, params: dict | None = None, num_boost_round: int = NUM_BOOST_ROUND
) -> TrainedModel:
    """A model trained on ``frame`` as the model takes its input (``to_model_frame``)."""
    import polars as pl

    vocabulary = vocabulary_of(pl.from_pandas(frame[CATEGORICAL]))
    return train_matrix(as_categories(frame[FEATURES], vocabulary), labels, vocabulary, params, num_boost_round)


def train_matrix(
    matrix: pd.DataFrame,
    labels: np.ndarray,
    vocabulary: dict[str, list[str]],
    params: dict | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> TrainedModel:
    """LightGBM on the features with their categoricals already coded in ``vocabulary``."""
    from churn_assets.defs.ml.model import lightgbm

    lgb = lightgbm()
    params = {**DEFAULT_PARAMS, **(params or {})}
    data = lgb.Dataset(matrix, label=labels, categorical_feature=CATEGORICAL, free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=num_boost_round)
    return TrainedModel(booster, vocabulary, params, num_boost_round)


class _Curve(NamedTuple):
    """One point per distinct probability, highest first: the probability, and the churners (tp)
    and the others (fp) at or above it; and the churners and customers in all."""

    values: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    n: int


def _curve(labels: np.ndarray, proba: np.ndarray) -> _Curve:
    """The holdout sorted once, for the threshold and every metric."""
    labels = np.asarray(labels).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    order = np.argsort(-proba, kind="stable")
    ranked = proba[order]
    last = np.append(np.flatnonzero(np.diff(ranked)), len(ranked) - 1)
    tp = np.cumsum(labels[order])[last].astype(np.float64)
    return _Curve(ranked[last], tp, (last + 1) - tp, int(labels.sum()), len(labels))


def best_threshold(labels: np.ndarray, proba: np.ndarray, curve: _Curve | None = None) -> float:
    """The probability cut that maximizes F1 on the holdout (recorded with the model), among 91
    quantiles of the probabilities; the first of equals. F1 at every cut from the sorted
    probabilities (``curve``, sorted here when not given; one ``f1_score`` per cut cost seconds on
    a large holdout)."""
    c = curve if curve is not None else _curve(labels, proba)
    grid = np.unique(np.quantile(proba, np.linspace(0.05, 0.95, 91)))
    # The customers at or above a cut are those at or above the lowest distinct probability >= it.
    k = np.searchsorted(-c.values, -grid, side="right")  # distinct probabilities >= each cut
    tp = np.where(k > 0, c.tp[k - 1], 0.0)
    predicted = np.where(k > 0, (c.tp + c.fp)[k - 1], 0.0)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + positives); 0 when both are 0, as f1_score says.
    total = predicted + c.positives
    f1 = np.divide(2.0 * tp, total, out=np.zeros(len(grid)), where=total > 0)
    return float(grid[int(np.argmax(f1))])


def _roc_auc(c: _Curve) -> float:
    if c.positives in (0, c.n):  # as roc_auc_score: no ranking to measure
        raise ValueError("Only one class present in the holdout's labels: ROC AUC is not defined")
    tpr, fpr = np.append(0.0, c.tp / c.positives), np.append(0.0, c.fp / (c.n - c.positives))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoids under the curve


def roc_auc(labels: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC as scikit-learn's ``roc_auc_score`` (held equal to it in ``test_train_metrics.py``)."""
    return _roc_auc(_curve(labels, proba))


def evaluate(labels: np.ndarray, proba: np.ndarray, threshold: float, curve: _Curve | None = None) -> dict[str, float]:
    """The holdout's metrics as scikit-learn defines them (held equal to it in
    ``test_train_metrics.py``), from one sort of the probabilities (``curve``, sorted here when not
    given): scikit-learn's six functions each checked and sorted the holdout again (0.85-1.1 s for
    1.36M customers at 100x the reference)."""
    c = curve if curve is not None else _curve(labels, proba)
    tp, fp, positives = c.tp, c.fp, c.positives
    labels = np.asarray(labels)
    predicted = np.asarray(proba) >= threshold
    tp_at, called = int(np.count_nonzero(predicted & (labels == 1))), int(np.count_nonzero(predicted))
    clipped = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "holdout_roc_auc": _roc_auc(c),
        "holdout_pr_auc": float(np.sum(np.diff(np.append(0.0, tp)) / positives * (tp / (tp + fp)))),
        "holdout_f1": 2 * tp_at / (called + positives),
        "holdout_precision": tp_at / called if called else 0.0,
        "holdout_recall": tp_at / positives,
        "holdout_log_loss": float(-np.mean(np.where(labels == 1, np.log(clipped), np.log(1 - clipped)))),
    }


def feature_importance(model: TrainedModel) -> pd.DataFrame:
    import pandas as pd

    gain = model.booster.feature_importance(importance_type="gain")
    return pd.DataFrame({"feature": model.booster.feature_name(), "gain": gain}).sort_values("gain", ascending=False)


def shuffle_labels(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """``labels`` with about ``fraction`` of them permuted among themselves (a copy): a
    deliberately worse model, to see the promotion gate at work. 0 returns them unchanged."""
    out = labels.copy()
    if fraction > 0:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(rng.random(len(out)) < fraction)
        out[idx] = rng.permutation(out[idx])
    return out


@dataclass
class Trained:
    """A model trained on the training customers, with the holdout it has not seen yet."""

    model: TrainedModel
    holdout: pl.DataFrame
    rows_train: int
    importance: pd.DataFrame
    holdout_example: pd.DataFrame  # a few holdout rows: the registered model's input example

    def measure(self) -> tuple[dict[str, float], float]:
        """The holdout's metrics at the threshold chosen on it, and that threshold."""
        labels = self.holdout[LABEL].to_numpy().astype(int)
        proba = self.model.booster.predict(model_matrix(self.holdout, self.model.vocabulary))
        curve = _curve(labels, proba)  # one sort for the threshold and the metrics
        threshold = best_threshold(labels, proba, curve)
        return evaluate(labels, proba, threshold, curve), threshold


@dataclass
class Fitted:
    """A model trained on the training customers and measured on the holdout."""

    model: TrainedModel
    metrics: dict[str, float]
    threshold: float
    importance: pd.DataFrame
    rows_train: int
    rows_holdout: int
    holdout_example: pd.DataFrame  # a few holdout rows: the registered model's input example


def train_on(df: pl.DataFrame, params: dict, num_boost_round: int, shuffle_fraction: float = 0.0) -> Trained:
    """Train on the rows not flagged ``is_holdout``; the others are kept to measure it on."""
    import polars as pl

    train_df, hold_df = df.filter(~pl.col("is_holdout")), df.filter(pl.col("is_holdout"))
    labels = shuffle_labels(train_df[LABEL].to_numpy().astype(int), shuffle_fraction)
    vocabulary = vocabulary_of(train_df)
    model = train_matrix(model_matrix(train_df, vocabulary), labels, vocabulary, params, num_boost_round)
    del train_df  # the matrix LightGBM binned is all it needed
    return Trained(model, hold_df, len(labels), feature_importance(model), to_model_frame(hold_df.head(5)))


def fit(df: pl.DataFrame, params: dict, num_boost_round: int, shuffle_fraction: float = 0.0) -> Fitted:
    """Train on the rows not flagged ``is_holdout``, choose the threshold and measure on the others."""
    trained = train_on(df, params, num_boost_round, shuffle_fraction)
    metrics, threshold = trained.measure()
    return Fitted(
        trained.model,
        metrics,
        threshold,
        trained.importance,
        trained.rows_train,
        len(trained.holdout),
        trained.holdout_example,
    )
