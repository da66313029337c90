"""LightGBM training and holdout evaluation (pure: frames in, model and numbers out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    import lightgbm as lgb

    params = {**DEFAULT_PARAMS, **(params or {})}
    data = lgb.Dataset(matrix, label=labels, categorical_feature=CATEGORICAL, free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=num_boost_round)
    return TrainedModel(booster, vocabulary, params, num_boost_round)


def best_threshold(labels: np.ndarray, proba: np.ndarray) -> float:
    """The probability cut that maximizes F1 on the holdout (recorded with the model), among 91
    quantiles of the probabilities; the first of equals. F1 at every cut in one pass over the
    sorted probabilities (one ``f1_score`` per cut cost seconds on a large holdout)."""
    grid = np.unique(np.quantile(proba, np.linspace(0.05, 0.95, 91)))
    order = np.argsort(proba, kind="stable")
    positives_from = np.append(np.cumsum(labels[order][::-1])[::-1], 0)  # positives at sorted index >= k
    first = np.searchsorted(proba[order], grid, side="left")  # the first index predicted positive
    tp, predicted, positives = positives_from[first], len(proba) - first, int(labels.sum())
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + positives); 0 when both are 0, as f1_score says.
    total = predicted + positives
    f1 = np.divide(2.0 * tp, total, out=np.zeros(len(grid)), where=total > 0)
    return float(grid[int(np.argmax(f1))])


def evaluate(labels: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = proba >= threshold
    return {
        "holdout_roc_auc": float(roc_auc_score(labels, proba)),
        "holdout_pr_auc": float(average_precision_score(labels, proba)),
        "holdout_f1": float(f1_score(labels, predicted, zero_division=0)),
        "holdout_precision": float(precision_score(labels, predicted, zero_division=0)),
        "holdout_recall": float(recall_score(labels, predicted, zero_division=0)),
        "holdout_log_loss": float(log_loss(labels, np.clip(proba, 1e-7, 1 - 1e-7))),
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
class Fitted:
    """A model trained on the training customers and measured on the holdout."""

    model: TrainedModel
    metrics: dict[str, float]
    threshold: float
    importance: pd.DataFrame
    rows_train: int
    rows_holdout: int
    holdout_example: pd.DataFrame  # a few holdout rows: the registered model's input example


def fit(df: pl.DataFrame, params: dict, num_boost_round: int, shuffle_fraction: float = 0.0) -> Fitted:
    """Train on the rows not flagged ``is_holdout``, choose the threshold and measure on the others."""
    import polars as pl

    train_df, hold_df = df.filter(~pl.col("is_holdout")), df.filter(pl.col("is_holdout"))
    labels = shuffle_labels(train_df[LABEL].to_numpy().astype(int), shuffle_fraction)
    vocabulary = vocabulary_of(train_df)
    model = train_matrix(model_matrix(train_df, vocabulary), labels, vocabulary, params, num_boost_round)
    del train_df  # the matrix LightGBM binned is all it needed
    hold_y = hold_df[LABEL].to_numpy().astype(int)
    proba = model.booster.predict(model_matrix(hold_df, vocabulary))
    threshold = best_threshold(hold_y, proba)
    return Fitted(
        model,
        evaluate(hold_y, proba, threshold),
        threshold,
        feature_importance(model),
        len(labels),
        len(hold_df),
        to_model_frame(hold_df.head(5)),
    )
