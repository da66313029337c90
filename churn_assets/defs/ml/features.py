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
    frame: pl.DataFrame  # the holdout and the training customers (each whole, or its sample), flagged is_holdout
    rows: int  # customers in gold.churn_features
    rows_train_available: int  # training customers before sampling
    rows_holdout_available: int  # holdout customers before sampling


# Each side of the split, sampled above its cap: (flag condition, what ranks it, its count column).
# Two md5s of user_id other than the split's, so that neither sample leans on the split's hash.
_SIDES = {
    "train": ("NOT is_holdout", "sample:", "_in_train"),
    "holdout": ("is_holdout", "evaluate:", "_in_holdout"),
}


def _sample_ctes(side: str, cap: int) -> str:
    """CTEs over ``f`` (the features with their holdout flag): ``{side}_n``, the side's customers,
    and ``{side}_sampled``, the user ids kept: all of them up to ``cap``, else a sample of ``cap``
    stratified by label (each label keeps its share, rounded, at least one customer, so that no
    label leaves a small sample), the customers ranked by an md5 of their key, so the same ones
    while the data is the same. Ranked on the key alone, then joined back: for the training side
    at 100x the reference the window sorts 5.5M narrow rows, not every feature column (2.9 s
    against 4.4 s). No window without a partition: on Spark that would move every row into one task."""
    flag, salt, _ = _SIDES[side]
    return f"""{side}_ranked AS (
                SELECT user_id, row_number() OVER (PARTITION BY {LABEL} ORDER BY md5_number('{salt}' || user_id),
                                                   user_id) AS _rank,
                       count(*) OVER (PARTITION BY {LABEL}) AS _in_label
                FROM f WHERE {flag}),
            {side}_n AS (SELECT count(*) AS n FROM f WHERE {flag}),
            {side}_sampled AS (SELECT user_id FROM {side}_ranked CROSS JOIN {side}_n
                               WHERE n <= {cap} OR _rank <= greatest(1, round({cap} * _in_label / n)))"""


def training_sql(max_train_rows: int, portable: bool = False, max_holdout_rows: int = 0) -> str:
    """The holdout and the training customers; beyond ``max_train_rows`` training customers a
    sample of that many, beyond ``max_holdout_rows`` holdout customers a sample of that many (0 = no
    cap; with a cap, each side's customers before sampling come on every row, as ``_in_train`` and
    ``_in_holdout``), as one query in DuckDB's dialect: the one statement of the rule, which the Spark
    engine runs transpiled (``transpile.duckdb_to_spark``; ``portable``, see ``md5_mod``), so the
    samples are taken where the data is and only they reach the driver."""
    cols = ", ".join(["user_id", *FEATURES, LABEL, "is_holdout"])
    if not (max_train_rows or max_holdout_rows):
        return f"SELECT {cols} FROM ({_features_sql(True, portable)}) ORDER BY user_id"
    caps = {"train": max_train_rows, "holdout": max_holdout_rows}
    ctes = ",\n            ".join(_sample_ctes(side, cap) for side, cap in caps.items() if cap)
    # A side without a cap comes whole: its rows count it.
    counts = "".join(f", (SELECT n FROM {side}_n) AS {_SIDES[side][2]}" for side, cap in caps.items() if cap)
    # The sampled ids are of their side already; a side without a cap is kept by its flag.
    sampled = " UNION ALL ".join(f"SELECT user_id FROM {side}_sampled" for side, cap in caps.items() if cap)
    whole = [_SIDES[side][0] for side, cap in caps.items() if not cap]
    kept = " OR ".join([*whole, f"user_id IN ({sampled})"])
    return f"""WITH f AS ({_features_sql(True, portable)}),
            {ctes}
            SELECT {cols}{counts}
            FROM f WHERE {kept}
            ORDER BY user_id"""


def holdout_sql(max_holdout_rows: int, portable: bool = False) -> str:
    """The holdout customers the metrics are measured on: ``training_sql``'s holdout side alone
    (the same customers), for the champion comparison to score both models on."""
    cols = ", ".join(["user_id", *FEATURES, LABEL, "is_holdout"])
    if not max_holdout_rows:
        return f"SELECT {cols} FROM ({_features_sql(True, portable)}) WHERE is_holdout ORDER BY user_id"
    return f"""WITH f AS ({_features_sql(True, portable)}),
            {_sample_ctes("holdout", max_holdout_rows)}
            SELECT {cols} FROM f WHERE is_holdout AND user_id IN (SELECT user_id FROM holdout_sampled)
            ORDER BY user_id"""


def load_training(con, max_train_rows: int, max_holdout_rows: int = 0) -> TrainingData:
    """The holdout and the training customers; beyond ``max_train_rows`` training customers, or
    ``max_holdout_rows`` holdout customers, a sample of that many stratified by label (each label
    keeps its share, rounded), the same customers every time while the data is the same (each side
    ranked by another md5 of user_id).

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
    # A sampled side's customers before sampling come with the rows (the query counts them anyway:
    # a second pass over gold for them hashed every key again, 0.6 s at 100x the reference); a
    # side that came whole is counted in the rows.
    available = []
    for side, cap in zip(("train", "holdout"), caps):
        rows = frame["is_holdout"] if side == "holdout" else ~frame["is_holdout"]
        column = _SIDES[side][2]
        available.append((int(frame[column][0]) if len(frame) else 0) if cap else int(rows.sum()))
    return TrainingData(frame.drop(c for _, _, c in _SIDES.values() if c in frame.columns), total, *available)


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
