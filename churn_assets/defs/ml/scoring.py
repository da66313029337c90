"""Scoring with a registered model: the holdout the champion step compares on, and the
customers' predictions in ``gold.churn_prediction``.

An hourly increment changes the features of a few customers, not all: each prediction row
keeps a hash of the features it was scored from (``_features_hash``), and a run with the same
model scores only the customers whose hash moved, plus new ones, and drops the ones gold no
longer has; it compares only the customers gold's builds logged as rebuilt since it last scored
(``gold/changes.py``), all of gold after a build that rebuilt every row. The table then equals a
full rescoring (churn_assets_tests/test_scoring_incremental.py).
A new model version, a changed threshold, or a table from before the hash column or the context
columns (``CONTEXT``: what the prediction figures group by) scores everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np

if TYPE_CHECKING:  # imported where used: every code-location load imports this module
    import pandas as pd
    import polars as pl

from churn_assets.defs.gold.changes import changed_since, read_up_to
from churn_assets.defs.ml.features import FEATURES, LABEL, load_holdout, to_model_frame
from churn_assets.timeutil import utcnow
from churn_assets.warehouse import registered, scalar, table_exists, transaction

# Scoring's watermark on gold's builds (``gold/changes.py``).
READER = "gold.churn_prediction"

# What a prediction depends on: the key and every column the model reads. DuckDB's hash is
# stable within a version; after an upgrade that changes it, every customer is scored once.
FEATURES_HASH = f"hash({', '.join(['user_id', *FEATURES])})"

# What the prediction figures group and sort by (dashboards/metrics.py), kept on each prediction
# row from the gold row it was scored from, so the figures read this table alone: an hourly run
# writes them with the rows it scores instead of joining those rows with gold again. Each is a
# model input, whose change rescores the customer, or creation_date's month, which moves only
# with days_since_creation (a model input): they are as current as the prediction.
CONTEXT = {
    "country": "country",
    "canal": "canal",
    "platform": "platform",
    "creation_month": "date_trunc('month', creation_date)",
    "total_amount": "total_amount",
    "order_count": "order_count",
    "days_last_event": "days_last_event",
}
# What a scoring batch reads from gold: the model's input and the context it keeps.
_READ = [*FEATURES, *(c for c in CONTEXT if c not in FEATURES)]


def holdout(con: duckdb.DuckDBPyConnection, max_rows: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The holdout customers a model is measured on (beyond ``max_rows``, the stratified sample the
    training step measures on: ``features.load_holdout``) as model input, with their labels."""
    hold = load_holdout(con, max_rows)
    return to_model_frame(hold), hold[LABEL].to_numpy().astype(int)


@dataclass(frozen=True)
class Scored:
    rows: int  # customers scored by this run
    at_risk: int  # customers predicted to churn in the whole table
    rows_per_second: float
    mode: str = "full"  # full | incremental
    rows_total: int = 0  # customers in the table
    rows_removed: int = 0  # customers gold no longer has (incremental only)


# Customers a scoring batch holds in Python. Gold streams out of DuckDB a batch at a time and only
# the prediction columns are kept, so scoring everyone (a new model, or the daily refresh when
# every day count moves) holds one batch of features, not every customer's; the predictions
# (key, probability, hash) still grow with the customers.
SCORE_BATCH_ROWS = 500_000


def predictions(
    user_ids: pl.Series, proba: np.ndarray, threshold: float, model_name: str, version: str, scored_at
) -> pl.DataFrame:
    """The rows of ``gold.churn_prediction``: probability, label at ``threshold``, which model, when."""
    import polars as pl

    return pl.DataFrame(
        {"user_id": user_ids, "churn_probability": proba, "churn_prediction": (proba >= threshold).astype(np.int32)}
    ).with_columns(model_name=pl.lit(model_name), model_version=pl.lit(version), scored_at=pl.lit(scored_at))


def _from_gold(names) -> str:
    """These columns as gold's columns give them (a context column by its SQL)."""
    return ", ".join(c if CONTEXT.get(c, c) == c else f"{CONTEXT[c]} AS {c}" for c in names)


def _features_sql(only: str = "") -> str:
    """Model input columns and their hash, for every customer of gold or those of ``only`` (a SQL
    condition), in no set order: scoring streams them as they come (a sort would hold them all)."""
    return f"""SELECT user_id, {", ".join(FEATURES)}, {FEATURES_HASH} AS _features_hash
               FROM gold.churn_features {f"WHERE {only}" if only else ""}"""


def _with_context(scored: str, rows: str | None = None) -> str:
    """The prediction rows of ``scored`` with their context: from ``rows`` (a table holding the
    scored customers' context columns), else looked up in gold. Joined in SQL, so scoring every
    customer holds only key, probability and hash in Python (the context there: +1.1 GB at 100x)."""
    if rows:
        source = f"SELECT user_id, {', '.join(CONTEXT)} FROM {rows}"
    else:
        source = f"SELECT user_id, {_from_gold(CONTEXT)} FROM gold.churn_features"
    return f"SELECT s.*, c.* EXCLUDE (user_id) FROM {scored} s JOIN ({source}) c USING (user_id)"


def _score(
    con: duckdb.DuckDBPyConnection,
    only: str,
    model,
    threshold: float,
    model_name: str,
    version: str,
    batch_rows: int,
    rows: str | None = None,
) -> tuple[pl.DataFrame, float]:
    """The prediction rows (with their features hash) of gold's customers, or those of ``only``,
    or of ``rows`` (a table of key, features and hash, as ``_features_sql`` reads them), scored
    ``batch_rows`` customers at a time; and the seconds the model took."""
    import polars as pl

    sql = _features_sql(only) if rows is None else f"SELECT user_id, {', '.join(FEATURES)}, _features_hash FROM {rows}"
    reader = con.sql(sql).to_arrow_reader(batch_rows)
    kept, took = [], 0.0
    for batch in reader:
        df = pl.from_arrow(batch)
        t0 = time.perf_counter()
        proba = np.asarray(model.predict_polars(df), dtype=np.float64)
        took += time.perf_counter() - t0
        kept.append(pl.DataFrame({"user_id": df["user_id"], "p": proba, "h": df["_features_hash"]}))
    if not kept:
        empty = pl.from_arrow(reader.schema.empty_table())
        kept.append(pl.DataFrame({"user_id": empty["user_id"], "p": np.zeros(0), "h": empty["_features_hash"]}))
    scored = pl.concat(kept, rechunk=False)  # the batches' own buffers, not a second copy
    del kept
    out = predictions(scored["user_id"], scored["p"].to_numpy(), threshold, model_name, version, utcnow())
    return out.with_columns(_features_hash=scored["h"]), took


def replace_predictions(
    con: duckdb.DuckDBPyConnection,
    model,
    threshold: float,
    model_name: str,
    version: str,
    batch_rows: int = SCORE_BATCH_ROWS,
) -> Scored:
    """Score every customer of gold.churn_features; the table is replaced only once all are scored."""
    out, took = _score(con, "", model, threshold, model_name, version, batch_rows)
    with transaction(con), registered(con, "_scored", out):
        con.execute(f"CREATE OR REPLACE TABLE gold.churn_prediction AS {_with_context('_scored')}")
        read_up_to(con, READER)
    at_risk = scalar(con, "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1")
    return Scored(len(out), int(at_risk), round(len(out) / took if took else 0.0, 1), "full", len(out))


def _same_model(con: duckdb.DuckDBPyConnection, threshold: float, model_name: str, version: str) -> bool:
    """The table holds only this model's predictions at this threshold, each with its features hash."""
    if not table_exists(con, "gold", "churn_prediction"):
        return False
    columns = {c for (c,) in con.execute("SELECT column_name FROM (DESCRIBE gold.churn_prediction)").fetchall()}
    if not {"_features_hash", *CONTEXT} <= columns:  # a table from before them: everyone is scored
        return False
    other = scalar(
        con,
        """SELECT count(*) FROM gold.churn_prediction
           WHERE model_name IS DISTINCT FROM ? OR model_version IS DISTINCT FROM ? OR _features_hash IS NULL
              OR churn_prediction IS DISTINCT FROM (churn_probability >= ?)::INTEGER""",
        [model_name, version, threshold],
    )
    return other == 0


def update_predictions(
    con: duckdb.DuckDBPyConnection,
    model,
    threshold: float,
    model_name: str,
    version: str,
    batch_rows: int = SCORE_BATCH_ROWS,
    compare_all: bool = False,
) -> Scored:
    """Score the customers whose features changed since the same model last scored them (new
    ones included) and drop those gold no longer has; any other model scores everyone.
    ``compare_all``: look at every customer of gold, not only those its builds logged."""
    if not _same_model(con, threshold, model_name, version):
        return replace_predictions(con, model, threshold, model_name, version, batch_rows)
    # Only the customers gold's builds rebuilt since scoring last read it can have moved, while
    # every build since was incremental (``gold/changes.py``); else all of gold is compared.
    changed = None if compare_all else changed_since(con, READER)
    among = f"WHERE user_id IN {changed}" if changed else ""
    # One pass over those rows of gold and of the predictions finds the rows to score (hash moved,
    # or new) and the customers gold no longer has; only the former reach Python. Among the
    # customers gold's builds logged (~3 % of them hourly) it keeps their features too, so they
    # are not looked up in gold again (0.18 s at 100x the reference); comparing all of gold, they
    # stream from gold instead, a batch at a time.
    features = "".join(f", f.{c}" for c in _READ) if changed else ""
    # One transaction from finding the rows to replacing them: the predictions' rows found here
    # are deleted by row id (0.11 -> 0.02 s at 100x the reference, no second pass over the
    # customer keys), and only a commit's checkpoint can move a row.
    with transaction(con):
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _to_score AS
                SELECT coalesce(f.user_id, p.user_id) AS user_id, f.user_id IS NULL AS removed{features},
                       f.h AS _features_hash, p.row_id AS _prediction_row
                FROM (SELECT user_id, {_from_gold(_READ)}, {FEATURES_HASH} AS h FROM gold.churn_features {among}) f
                FULL JOIN (SELECT rowid AS row_id, user_id, _features_hash AS h FROM gold.churn_prediction {among}) p
                     USING (user_id)
                WHERE f.h IS DISTINCT FROM p.h"""
        )
        only = "user_id IN (SELECT user_id FROM _to_score WHERE NOT removed)"
        rows = "_to_score WHERE NOT removed" if changed else None
        out, took = _score(con, only, model, threshold, model_name, version, batch_rows, rows)
        with registered(con, "_scored", out):
            removed = scalar(con, "SELECT count(*) FROM _to_score WHERE removed")
            con.execute(
                "DELETE FROM gold.churn_prediction WHERE rowid IN "
                "(SELECT _prediction_row FROM _to_score WHERE _prediction_row IS NOT NULL)"
            )
            # The context of the customers gold's builds logged came with their features.
            con.execute(f"INSERT INTO gold.churn_prediction BY NAME {_with_context('_scored', rows)}")
            read_up_to(con, READER)
        con.execute("DROP TABLE _to_score")
    at_risk, total = con.execute(
        "SELECT count(*) FILTER (churn_prediction = 1), count(*) FROM gold.churn_prediction"
    ).fetchall()[0]
    if changed and total != scalar(con, "SELECT count(*) FROM gold.churn_features"):
        # Gold was changed outside its builds (no log entry names those customers): compare it all.
        return update_predictions(con, model, threshold, model_name, version, batch_rows, compare_all=True)
    rate = round(len(out) / took if took else 0.0, 1)
    return Scored(len(out), int(at_risk), rate, "incremental", int(total), int(removed or 0))
