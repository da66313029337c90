"""Scoring with a registered model: the holdout the champion step compares on, and every
customer's prediction, replaced whole in ``gold.churn_prediction``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import polars as pl

from churn_assets.defs.ml.features import LABEL, load_features, to_model_frame
from churn_assets.timeutil import utcnow
from churn_assets.warehouse import registered, scalar, transaction


def holdout(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, np.ndarray]:
    """The current holdout customers as model input, with their labels."""
    hold = load_features(con, holdout_only=True)
    return to_model_frame(hold), hold[LABEL].to_numpy().astype(int)


@dataclass(frozen=True)
class Scored:
    rows: int
    at_risk: int
    rows_per_second: float


def predictions(
    user_ids: pl.Series, proba: np.ndarray, threshold: float, model_name: str, version: str, scored_at
) -> pl.DataFrame:
    """The rows of ``gold.churn_prediction``: probability, label at ``threshold``, which model, when."""
    return pl.DataFrame(
        {"user_id": user_ids, "churn_probability": proba, "churn_prediction": (proba >= threshold).astype(np.int32)}
    ).with_columns(model_name=pl.lit(model_name), model_version=pl.lit(version), scored_at=pl.lit(scored_at))


def replace_predictions(
    con: duckdb.DuckDBPyConnection, model, threshold: float, model_name: str, version: str
) -> Scored:
    """Score every customer of gold.churn_features; the table is replaced only once all are scored."""
    df = load_features(con, with_label=False)
    t0 = time.perf_counter()
    proba = model.predict_polars(df)
    took = time.perf_counter() - t0
    out = predictions(df["user_id"], proba, threshold, model_name, version, utcnow())
    with transaction(con), registered(con, "_scored", out):
        con.execute("CREATE OR REPLACE TABLE gold.churn_prediction AS SELECT * FROM _scored")
    at_risk = scalar(con, "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1")
    return Scored(len(df), int(at_risk), round(len(df) / took if took else 0.0, 1))
