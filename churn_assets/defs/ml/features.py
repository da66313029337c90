"""What the model sees: the reference's features, categoricals as categories, and a
holdout that keeps each customer on the same side across retrains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:  # imported where used: every code-location load imports this module
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


def md5_mod(expr: str, modulus: int, portable: bool = False) -> str:
    """SQL for ``md5_number(expr) % modulus``. DuckDB's modulo of a 128-bit integer is slow (7.7 s
    for 6.8M customers): on DuckDB it is taken from the number's two 64-bit halves instead
    (n = hi * 2^64 + lo, so n % m = (hi % m * (2^64 % m) + lo % m) % m), the same value in 0.5 s.
    ``portable``: the plain form, which the Spark transpiler rewrites (``transpile._md5_number``).
    Below 2^32 only: ``hi % m * (2^64 % m)`` must fit in 64 bits."""
    if not 0 < modulus < 2**32:
        raise ValueError(f"md5_mod takes a modulus from 1 to 2^32 - 1, not {modulus}")
    n = f"md5_number({expr})"
    if portable:
        return f"{n} % {modulus}"
    return (
        f"(({n} >> 64)::UBIGINT % {modulus} * {pow(2, 64, modulus)} "
        f"+ ({n} & {2**64 - 1}::UHUGEINT)::UBIGINT % {modulus}) % {modulus}"
    )


def _portable(con) -> bool:
    """Whether ``con`` is the Spark engine's cursor (its SQL is transpiled) rather than DuckDB."""
    return not isinstance(con, duckdb.DuckDBPyConnection)


def _features_sql(with_label: bool, portable: bool = False) -> str:
    """Every customer; with the label, only those that have one (a customer landed without a boolean
    churn has a null label: scored, but neither learned from nor evaluated on)."""
    cols = ", ".join(["user_id", *FEATURES, *([LABEL] if with_label else [])])
    labelled = f" WHERE {LABEL} IS NOT NULL" if with_label else ""
    holdout = f"({md5_mod('user_id', 100, portable)}) < {HOLDOUT_PERCENT}"
    return f"SELECT {cols}, {holdout} AS is_holdout FROM gold.churn_features" + labelled


def load_features(con, with_label: bool = True, holdout_only: bool = False) -> pl.DataFrame:
    """gold.churn_features with a stable holdout flag: md5 of user_id (a standard hash,
    unlike DuckDB's or Polars' own, so the split survives library upgrades)."""
    where = "WHERE is_holdout" if holdout_only else ""
    return con.sql(f"SELECT * FROM ({_features_sql(with_label, _portable(con))}) {where} ORDER BY user_id").pl()


@dataclass(frozen=True)
class TrainingData:
    frame: pl.DataFrame  # the holdout and the training customers (all, or the sample), flagged is_holdout
    rows: int  # customers in gold.churn_features
    rows_train_available: int  # training customers before sampling


def training_sql(max_train_rows: int, portable: bool = False) -> str:
    """The holdout and the training customers, beyond ``max_train_rows`` (0 = no cap) training
    customers a sample of that many (then with ``_in_train``, the training customers before
    sampling, on every row), as one query in DuckDB's dialect: the one statement of
    the rule, which the Spark engine runs transpiled (``transpile.duckdb_to_spark``; ``portable``,
    see ``md5_mod``), so the sample is taken where the data is and only the sample reaches the
    driver. (No window without a partition: on Spark that would move every row into one task.)"""
    cols = ", ".join(["user_id", *FEATURES, LABEL, "is_holdout"])
    if not max_train_rows:
        return f"SELECT {cols} FROM ({_features_sql(True, portable)}) ORDER BY user_id"
    # Ranked on the key alone, then joined back: the window sorts 5.5M narrow rows at 100x the
    # reference, not every feature column (2.9 s against 4.4 s).
    return f"""WITH f AS ({_features_sql(True, portable)}),
            t AS (SELECT user_id, row_number() OVER (PARTITION BY {LABEL} ORDER BY md5_number('sample:' || user_id),
                                                user_id) AS _rank,
                         count(*) OVER (PARTITION BY {LABEL}) AS _in_label
                  FROM f WHERE NOT is_holdout),
            n AS (SELECT count(*) AS _in_train FROM f WHERE NOT is_holdout),
            sampled AS (SELECT user_id FROM t CROSS JOIN n
                       WHERE _in_train <= {max_train_rows} OR _rank <= round({max_train_rows} * _in_label / _in_train))
            SELECT {cols}, (SELECT _in_train FROM n) AS _in_train
            FROM f WHERE is_holdout OR user_id IN (SELECT user_id FROM sampled)
            ORDER BY user_id"""


def load_training(con, max_train_rows: int) -> TrainingData:
    """The holdout and the training customers; beyond ``max_train_rows`` training customers, a
    sample of that many stratified by label (each label keeps its share, rounded), the same
    customers every time while the data is the same (ranked by another md5 of user_id).

    ``con``: the DuckDB connection, or the Spark engine's cursor (``EngineResource.cursor``),
    which runs the same SQL on the cluster and collects only its result, as Arrow."""
    total = int(con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0])
    portable = _portable(con)
    if not max_train_rows or total <= max_train_rows:
        # No sample possible: the rows are every customer, and they give the counts (a second
        # pass over gold for them hashed every user_id again: ~1 s at 10x the reference).
        frame = con.sql(training_sql(0, portable)).pl()
        return TrainingData(frame, total, int((~frame["is_holdout"]).sum()))
    frame = con.sql(training_sql(max_train_rows, portable)).pl()
    # The training customers before sampling come with the rows (the query counts them anyway):
    # a second pass over gold for them hashed every key again (0.6 s at 100x the reference).
    in_train = int(frame["_in_train"][0]) if len(frame) else 0
    return TrainingData(frame.drop("_in_train"), total, in_train)


def landed_rows(con: duckdb.DuckDBPyConnection) -> int:
    """Bronze rows landed so far: what the retrain policy counts new rows against."""
    return int(con.execute("SELECT coalesce(sum(rows_loaded), 0) FROM bronze.ingest_manifest").fetchall()[0][0] or 0)


def latest_ingest(con: duckdb.DuckDBPyConnection):
    """When the newest landed file was ingested (part of a model's data fingerprint)."""
    return con.execute("SELECT max(ingested_at) FROM bronze.ingest_manifest").fetchall()[0][0]


def to_model_frame(df: pl.DataFrame) -> pd.DataFrame:
    """The model's input: categoricals as strings (the pyfunc turns them into categories
    with the training vocabulary), numbers as floats (missing = NaN)."""
    import polars as pl

    out = df.select(
        [pl.col(c).cast(pl.Utf8) for c in CATEGORICAL] + [pl.col(c).cast(pl.Float64) for c in NUMERIC]
    ).to_pandas()
    for c in CATEGORICAL:
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def as_categories(frame: pd.DataFrame, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    import pandas as pd

    out = frame.copy()
    for c in CATEGORICAL:
        # A value the vocabulary lacks is missing to the model (pandas will refuse to build it in).
        out[c] = pd.Categorical(out[c].where(out[c].isin(vocabulary[c])), categories=vocabulary[c])
    return out


def vocabulary_of(df: pl.DataFrame) -> dict[str, list[str]]:
    """The categories of each categorical feature, sorted: the model's vocabulary."""
    import polars as pl

    return {c: sorted(df[c].cast(pl.Utf8).drop_nulls().unique().to_list()) for c in CATEGORICAL}


def model_matrix(df: pl.DataFrame, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    """``as_categories(to_model_frame(df), vocabulary)`` built from Polars directly: each
    categorical as its code in the vocabulary (missing or unknown: NaN), numbers as floats, and
    no Python string per row (those cost seconds and gigabytes on millions of customers)."""
    import pandas as pd
    import polars as pl

    out = df.select(pl.col(c).cast(pl.Float64) for c in NUMERIC).to_pandas()
    for i, c in enumerate(CATEGORICAL):
        vocab = vocabulary[c]
        codes = (
            df[c]
            .cast(pl.Utf8)
            .replace_strict(vocab, list(range(len(vocab))), default=-1, return_dtype=pl.Int32)
            .fill_null(-1)
        )
        out.insert(i, c, pd.Categorical.from_codes(codes.to_numpy(), categories=vocab))
    return out
