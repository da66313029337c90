"""Incremental gold equals a from-scratch build, whatever arrived in between."""

from __future__ import annotations

import json
from datetime import date

import duckdb

from churn_assets.generator import generate_history, generate_increment
from churn_assets.gold.features import FEATURE_COLUMNS, churn_features_sql
from churn_assets_tests.conftest import materialize, query

COLS = ", ".join(FEATURE_COLUMNS)


def from_scratch(home, as_of: str) -> list[tuple]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(f"SELECT {COLS} FROM ({churn_features_sql()}) ORDER BY user_id", {"as_of": as_of}).fetchall()
    finally:
        con.close()


def gold(home) -> list[tuple]:
    return query(home, f"SELECT {COLS} FROM gold.churn_features ORDER BY user_id")


def test_increments_match_a_full_rebuild(home):
    generate_history(home, customers=3_000, seed=21, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_features", as_of="2026-11-01T01:00:00").success
    for hour in (2, 3):
        generate_increment(home, fraction=0.03, dirty_rate=0.01)
        result = materialize(home, "*gold/churn_features", as_of=f"2026-11-01T0{hour}:00:00")
        assert result.success
        meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
        assert meta["gold/churn_features"]["build_mode"].value == "incremental"
        assert 0 < meta["gold/churn_features"]["customers_recomputed"].value < 1_000
        assert meta["gold/churn_features"]["day_counts_refreshed"].value is False  # same as-of date
        assert gold(home) == from_scratch(home, f"2026-11-01T0{hour}:00:00")
    # The next day: every day count moves, and only they.
    result = materialize(home, "*gold/churn_features", as_of="2026-11-02T00:30:00")
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["gold/churn_features"]["day_counts_refreshed"].value is True
    assert gold(home) == from_scratch(home, "2026-11-02T00:30:00")


def test_an_order_moved_to_another_customer_updates_both(home):
    generate_history(home, customers=500, seed=22, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_features").success
    (order_id, old_user), = query(home, "SELECT order_id, user_id FROM silver.churn_orders ORDER BY order_id LIMIT 1")
    new_user = query(home, "SELECT user_id FROM gold.churn_features WHERE user_id <> ? ORDER BY user_id LIMIT 1", [old_user])[0][0]
    before = dict(query(home, "SELECT user_id, order_count FROM gold.churn_features"))
    (home / "landing" / "orders" / "correction.json").write_text(
        json.dumps({"user_id": new_user, "id": order_id, "transaction_date": "10-31-2026 10:00:00", "item_count": 1.0, "amount": 10.0}) + "\n"
    )
    assert materialize(home, "*gold/churn_features").success
    after = dict(query(home, "SELECT user_id, order_count FROM gold.churn_features"))
    assert after[new_user] == before[new_user] + 1
    assert after.get(old_user, 0) == before[old_user] - 1
    assert gold(home) == from_scratch(home, "2023-06-10T00:00:00")
