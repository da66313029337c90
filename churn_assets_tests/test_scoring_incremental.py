"""Scoring follows what changed: after an increment the same model scores only the customers
whose features moved, and ``gold.churn_prediction`` equals a full rescoring. A real DuckDB
warehouse built by the real assets, a real LightGBM model trained on its gold rows."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from churn_assets.defs.gold.changes import changed_since
from churn_assets.defs.ml.features import FEATURES, load_features
from churn_assets.defs.ml.model import Scorer
from churn_assets.defs.ml.scoring import CONTEXT, READER, replace_predictions, update_predictions
from churn_assets.defs.ml.train import fit
from churn_assets.generator import generate_history, generate_increment
from churn_assets.warehouse import connect
from churn_assets_tests.helpers import materialize

pytestmark = pytest.mark.slow  # builds a warehouse through the assets

# Customers a scoring batch holds in these tests: every full scoring takes several batches,
# and full_rescoring (the default batch, larger than this gold) takes one.
BATCH = 257

# Everything but scored_at: the untouched rows keep the time they were scored.
COLS = "user_id, churn_probability, churn_prediction, model_name, model_version, _features_hash, " + ", ".join(CONTEXT)


def test_the_context_a_prediction_keeps_moves_only_with_the_model_input():
    """A prediction row is rewritten only when the model's input moves, so the gold columns it keeps
    must be model inputs, or creation_date's month (which moves only with days_since_creation)."""
    assert set(CONTEXT) - set(FEATURES) == {"creation_month"}
    assert "days_since_creation" in FEATURES
    assert {name for name, sql in CONTEXT.items() if sql != name} == {"creation_month"}


def table(con) -> list[tuple]:
    return con.execute(f"SELECT {COLS} FROM gold.churn_prediction ORDER BY user_id").fetchall()


def full_rescoring(con, scorer, threshold, version) -> list[tuple]:
    """What a full rescoring writes, on a copy of the warehouse as it is now."""
    con.execute("CHECKPOINT")
    path = Path(con.execute("SELECT path FROM duckdb_databases() WHERE NOT internal").fetchone()[0])
    copy = path.with_name("rescored.duckdb")
    shutil.copy(path, copy)
    other = connect(copy)
    try:
        replace_predictions(other, scorer, threshold, "churn_model", version)
        return table(other)
    finally:
        other.close()
        copy.unlink()


class BatchCounting(Scorer):
    """The real scorer, noting how many customers each call was given."""

    def __init__(self, booster, vocabulary) -> None:
        super().__init__(booster, vocabulary)
        self.batches: list[int] = []

    def predict_polars(self, df):
        self.batches.append(len(df))
        return super().predict_polars(df)


def gold(home, as_of: str) -> None:
    assert materialize(home, "*gold/churn_features", as_of=as_of).success


def test_incremental_scoring_equals_a_full_rescoring(home):
    generate_history(home, customers=3_000, seed=31, end=date(2026, 11, 1), progress=False)
    gold(home, "2026-11-01T01:00:00")
    con = connect(home / "warehouse.duckdb")
    try:
        fitted = fit(load_features(con), {"num_threads": 1, "verbose": -1}, 40)
        scorer, threshold = BatchCounting(fitted.model.booster, fitted.model.vocabulary), fitted.threshold
        first = update_predictions(con, scorer, threshold, "churn_model", "1", batch_rows=BATCH)
        total = con.execute("SELECT count(*) FROM gold.churn_features").fetchone()[0]
        assert (first.mode, first.rows) == ("full", total)  # nothing scored yet: everyone
        # A batch at a time, never more than BATCH customers in Python, each customer once.
        assert max(scorer.batches) == BATCH and sum(scorer.batches) == total, scorer.batches
        assert len(scorer.batches) == -(-total // BATCH)
        assert table(con) == full_rescoring(con, scorer, threshold, "1")
        again = update_predictions(con, scorer, threshold, "churn_model", "1", batch_rows=BATCH)
        assert (again.mode, again.rows, again.rows_total) == ("incremental", 0, total)  # nothing changed
    finally:
        con.close()

    for hour in (2, 3):
        generate_increment(home, fraction=0.03, dirty_rate=0.01)
        gold(home, f"2026-11-01T0{hour}:00:00")
        con = connect(home / "warehouse.duckdb")
        try:
            before = dict(con.execute("SELECT user_id, _features_hash FROM gold.churn_prediction").fetchall())
            # Only the customers gold's build logged are compared, not all of gold.
            logged = con.execute(f"SELECT count(*) FROM {changed_since(con, READER)}").fetchone()[0]
            scored = update_predictions(con, scorer, threshold, "churn_model", "1", batch_rows=BATCH)
            assert 0 < scored.rows <= logged < len(before) / 4
            total = con.execute("SELECT count(*) FROM gold.churn_features").fetchone()[0]
            assert scored.mode == "incremental"
            # Only what the increment touched: some customers, far fewer than all.
            assert 0 < scored.rows < total / 4, (scored.rows, total)
            new = con.execute("SELECT count(*) FROM gold.churn_features").fetchone()[0] - len(before)
            assert scored.rows >= new > 0  # new customers are among those scored
            assert scored.rows_total == total
            assert table(con) == full_rescoring(con, scorer, threshold, "1")
        finally:
            con.close()

    # The next day every day count moves: every customer is scored again, still equal.
    gold(home, "2026-11-02T00:30:00")
    con = connect(home / "warehouse.duckdb")
    try:
        scorer.batches.clear()
        scored = update_predictions(con, scorer, threshold, "churn_model", "1", batch_rows=BATCH)
        assert scored.rows == scored.rows_total
        assert max(scorer.batches) == BATCH and sum(scorer.batches) == scored.rows
        assert table(con) == full_rescoring(con, scorer, threshold, "1")
        # A customer leaving gold leaves the predictions, even when no build logged it (gold
        # changed by hand: the counts differ, and all of gold is compared); another model version
        # scores everyone.
        gone = con.execute("SELECT min(user_id) FROM gold.churn_features").fetchone()[0]
        con.execute("DELETE FROM gold.churn_features WHERE user_id = ?", [gone])
        scored = update_predictions(con, scorer, threshold, "churn_model", "1")
        assert (scored.rows, scored.rows_removed) == (0, 1)
        assert con.execute("SELECT count(*) FROM gold.churn_prediction WHERE user_id = ?", [gone]).fetchone()[0] == 0
        assert table(con) == full_rescoring(con, scorer, threshold, "1")
        other = update_predictions(con, scorer, threshold, "churn_model", "2")
        assert (other.mode, other.rows) == ("full", other.rows_total)
    finally:
        con.close()


def test_the_retired_prediction_figures_table_is_dropped(tmp_path):
    """dashboard.customer_risk, the prediction figures' table before the predictions carried its
    columns, goes from a warehouse that has it the next time a run opens it."""
    from churn_assets.warehouse import ensure_schema

    con = connect(tmp_path / "w.duckdb")
    try:
        con.execute("CREATE SCHEMA dashboard")
        con.execute("CREATE TABLE dashboard.customer_risk AS SELECT 'u-1' AS user_id")
        ensure_schema(con)
        tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'dashboard'").fetchall()
        assert ("customer_risk",) not in tables
        ensure_schema(con)  # and again, with nothing to drop
    finally:
        con.close()
