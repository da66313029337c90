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


# One md5 of user_id places each customer: its remainder mod 100 is the split (below
# HOLDOUT_PERCENT: the holdout), and the rest of it, the quotient, ranks the customers of a side
# when a cap samples it. For an md5 (uniform) the two are independent, so a sample does not lean on
# the split; and one hash per customer, not three (two more md5 passes cost 0.4 s at 100x). The
# modulus is a multiple of 100, so its remainder mod 100 is the md5's own (the split of every
# release before), and below 2^29, so that Spark's rewrite of it stays within a BIGINT
# (``transpile.md5_number_word_factors``).
PLACE_MODULUS = 100 * 5_368_709
# A sample's cut is found on counts of rank keys per bucket of this many (~1,300 buckets per side
# and label); only the customers of the bucket it falls in are ranked one by one.
RANK_BUCKET = 4096


def _features_sql(with_label: bool, portable: bool = False, keyed: bool = False) -> str:
    """Every customer; with the label, only those that have one (a customer landed without a boolean
    churn has a null label: scored, but neither learned from nor evaluated on). ``keyed``: with
    ``_rank_key``, what ranks a customer within its side of the split for a sample."""
    cols = ", ".join(["user_id", *FEATURES, *([LABEL] if with_label else [])])
    labelled = f" WHERE {LABEL} IS NOT NULL" if with_label else ""
    place = md5_mod("user_id", PLACE_MODULUS, portable)
    key = ", _place // 100 AS _rank_key" if keyed else ""
    return (
        f"SELECT {cols}, _place % 100 < {HOLDOUT_PERCENT} AS is_holdout{key} "
        f"FROM (SELECT {cols}, {place} AS _place FROM gold.churn_features{labelled})"
    )


def load_features(con, with_label: bool = True, holdout_only: bool = False) -> pl.DataFrame:
    """gold.churn_features with a stable holdout flag: md5 of user_id (a standard hash,
    unlike DuckDB's or Polars' own, so the split survives library upgrades)."""
    where = "WHERE is_holdout" if holdout_only else ""
    return con.sql(f"SELECT * FROM ({_features_sql(with_label, _portable(con))}) {where} ORDER BY user_id").pl()


@dataclass(frozen=True)
class TrainingData:
    frame: pl.DataFrame  # the holdout and the training customers (each whole, or its sample), flagged is_holdout
    rows: int  # customers in gold.churn_features
    rows_train_available: int  # training customers before sampling
    rows_holdout_available: int  # holdout customers before sampling


# The columns of the training and holdout rows, in order.
_ROW_COLUMNS = ["user_id", *FEATURES, LABEL, "is_holdout"]
# Each side's count of customers before sampling, as a column of the sampled rows.
_COUNTS = {False: "_in_train", True: "_in_holdout"}


def _sampled_sql(max_train_rows: int, max_holdout_rows: int, portable: bool, holdout_only: bool = False) -> str:
    """Each side of the split, beyond its cap (0 = none) a sample of that many stratified by label:
    each label keeps its share, rounded, at least one customer (no label leaves a small sample),
    and the customers kept are those of the lowest rank keys, ties by user_id, so the same ones
    while the data is the same. Found without ranking the side: counts per bucket of rank keys
    give the bucket where each label's quota ends, and only that bucket's customers are ranked
    (a few thousand at 100x the reference; a window over every training customer sorted 5.4M
    rows there: the rows took 3.1-3.4 s against 1.4-1.75 s). No window without a partition: on
    Spark it would move every row into one task. ``holdout_only``: the holdout side alone (its
    sample does not depend on the other's), without the counts."""
    cap = f"CASE WHEN is_holdout THEN {int(max_holdout_rows)} ELSE {int(max_train_rows)} END"
    cols = ", ".join(f"f.{c}" for c in _ROW_COLUMNS)
    side = " WHERE is_holdout" if holdout_only else ""
    counts = "".join(
        f", (SELECT coalesce(max(_in_side), 0) FROM labels WHERE {'' if holdout else 'NOT '}is_holdout) AS {name}"
        for holdout, name in _COUNTS.items()
        if not holdout_only
    )
    same_label = f"f.is_holdout = c.is_holdout AND f.{LABEL} = c.{LABEL}"
    keyed = _features_sql(True, portable, keyed=True)
    return f"""WITH f AS (SELECT *, _rank_key // {RANK_BUCKET} AS _bucket FROM ({keyed}){side}),
            labels AS (
                SELECT is_holdout, {LABEL}, count(*) AS _in_label,
                       sum(count(*)) OVER (PARTITION BY is_holdout) AS _in_side
                FROM f GROUP BY is_holdout, {LABEL}),
            quota AS (
                SELECT is_holdout, {LABEL}, CASE WHEN {cap} = 0 OR _in_side <= {cap} THEN _in_label
                                                 ELSE greatest(1, round({cap} * _in_label / _in_side)) END AS _quota
                FROM labels),
            buckets AS (
                SELECT is_holdout, {LABEL}, _bucket, count(*) AS _in_bucket
                FROM f GROUP BY is_holdout, {LABEL}, _bucket),
            upto AS (
                SELECT *, sum(_in_bucket) OVER (PARTITION BY is_holdout, {LABEL} ORDER BY _bucket) AS _upto
                FROM buckets),
            cut AS (
                SELECT u.is_holdout, u.{LABEL}, min(u._bucket) AS _bucket,
                       arg_min(q._quota - (u._upto - u._in_bucket), u._bucket) AS _left
                FROM upto u JOIN quota q ON u.is_holdout = q.is_holdout AND u.{LABEL} = q.{LABEL}
                WHERE u._upto >= q._quota
                GROUP BY u.is_holdout, u.{LABEL}),
            edge AS (
                SELECT user_id FROM (
                    SELECT f.user_id, c._left,
                           row_number() OVER (PARTITION BY f.is_holdout, f.{LABEL}
                                              ORDER BY f._rank_key, f.user_id) AS _rank
                    FROM f JOIN cut c ON {same_label} AND f._bucket = c._bucket)
                WHERE _rank <= _left)
            SELECT {cols}{counts}
            FROM f JOIN cut c ON {same_label}
            WHERE f._bucket < c._bucket OR f.user_id IN (SELECT user_id FROM edge)
            ORDER BY f.user_id"""


def _whole_sql(portable: bool, holdout_only: bool = False) -> str:
    """Every labelled customer (``holdout_only``: of the holdout), no sample."""
    where = " WHERE is_holdout" if holdout_only else ""
    return f"SELECT {', '.join(_ROW_COLUMNS)} FROM ({_features_sql(True, portable)}){where} ORDER BY user_id"


def training_sql(max_train_rows: int, portable: bool = False, max_holdout_rows: int = 0) -> str:
    """The holdout and the training customers; beyond ``max_train_rows`` training customers a
    sample of that many, beyond ``max_holdout_rows`` holdout customers a sample of that many (0 = no
    cap; with a cap, each side's customers before sampling come on every row, as ``_in_train`` and
    ``_in_holdout``), as one query in DuckDB's dialect: the one statement of the rule, which the Spark
    engine runs transpiled (``transpile.duckdb_to_spark``; ``portable``, see ``md5_mod``), so the
    samples are taken where the data is and only they reach the driver."""
    if not (max_train_rows or max_holdout_rows):
        return _whole_sql(portable)
    return _sampled_sql(max_train_rows, max_holdout_rows, portable)


def holdout_sql(max_holdout_rows: int, portable: bool = False) -> str:
    """The holdout customers the metrics are measured on: ``training_sql``'s holdout side alone
    (the same customers), for the champion comparison to score both models on."""
    if not max_holdout_rows:
        return _whole_sql(portable, holdout_only=True)
    return _sampled_sql(0, max_holdout_rows, portable, holdout_only=True)


def load_training(con, max_train_rows: int, max_holdout_rows: int = 0) -> TrainingData:
    """The holdout and the training customers; beyond ``max_train_rows`` training customers, or
    ``max_holdout_rows`` holdout customers, a sample of that many stratified by label (each label
    keeps its share, rounded), the same customers every time while the data is the same (ranked
    by the rest of the md5 that splits them: ``PLACE_MODULUS``).

    ``con``: the DuckDB connection, or the Spark engine's cursor (``EngineResource.cursor``),
    which runs the same SQL on the cluster and collects only its result, as Arrow."""
    total = int(con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0])
    portable = _portable(con)
    # A side never has more customers than gold: under a cap, no sample of it is possible.
    caps = [cap if cap and total > cap else 0 for cap in (max_train_rows, max_holdout_rows)]
    if not any(caps):
        # No sample: the rows are every customer, and they give the counts (a second pass over
        # gold for them hashed every user_id again: ~1 s at 10x the reference).
        frame = con.sql(training_sql(0, portable)).pl()
        holdout = int(frame["is_holdout"].sum())
        return TrainingData(frame, total, len(frame) - holdout, holdout)
    frame = con.sql(training_sql(caps[0], portable, caps[1])).pl()
    # Each side's customers before sampling come with the rows (the query counts them anyway: a
    # second pass over gold for them hashed every key again, 0.6 s at 100x the reference).
    available = [int(frame[c][0]) if len(frame) else 0 for c in _COUNTS.values()]
    return TrainingData(frame.drop(*_COUNTS.values()), total, *available)


def load_holdout(con, max_holdout_rows: int) -> pl.DataFrame:
    """The holdout customers ``load_training`` measures a model on, the same ones (gold unchanged)."""
    return con.sql(holdout_sql(max_holdout_rows, _portable(con))).pl()


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
