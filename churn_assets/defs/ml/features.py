"""What the model sees: the reference's features, categoricals as categories, and a
holdout that keeps each customer on the same side across retrains."""

from __future__ import annotations

import duckdb
import pandas as pd
import polars as pl

CATEGORICAL = ["canal", "country", "platform"]
NUMERIC = [
    "gender",
    "age_group",
    "order_count",
    "total_amount",
    "total_item",
    "event_count",
    "session_count",
    "days_since_creation",
    "days_since_last_activity",
    "days_last_event",
]
FEATURES = CATEGORICAL + NUMERIC
LABEL = "churn"
HOLDOUT_PERCENT = 20


def load_features(con: duckdb.DuckDBPyConnection, with_label: bool = True) -> pl.DataFrame:
    """gold.churn_features with a stable holdout flag: md5 of user_id (a standard hash,
    unlike DuckDB's or Polars' own, so the split survives library upgrades)."""
    cols = ", ".join(["user_id", *FEATURES, *([LABEL] if with_label else [])])
    return con.sql(
        f"""SELECT {cols}, (md5_number(user_id) % 100) < {HOLDOUT_PERCENT} AS is_holdout
            FROM gold.churn_features ORDER BY user_id"""
    ).pl()


def landed_rows(con: duckdb.DuckDBPyConnection) -> int:
    """Bronze rows landed so far: what the retrain policy counts new rows against."""
    return int(con.execute("SELECT coalesce(sum(rows_loaded), 0) FROM bronze.ingest_manifest").fetchall()[0][0] or 0)


def latest_ingest(con: duckdb.DuckDBPyConnection):
    """When the newest landed file was ingested (part of a model's data fingerprint)."""
    return con.execute("SELECT max(ingested_at) FROM bronze.ingest_manifest").fetchall()[0][0]


def to_model_frame(df: pl.DataFrame) -> pd.DataFrame:
    """The model's input: categoricals as strings (the pyfunc turns them into categories
    with the training vocabulary), numbers as floats (missing = NaN)."""
    out = df.select(
        [pl.col(c).cast(pl.Utf8) for c in CATEGORICAL] + [pl.col(c).cast(pl.Float64) for c in NUMERIC]
    ).to_pandas()
    for c in CATEGORICAL:
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def as_categories(frame: pd.DataFrame, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    out = frame.copy()
    for c in CATEGORICAL:
        out[c] = pd.Categorical(out[c], categories=vocabulary[c])
    return out
