"""Incremental gold equals a from-scratch build, whatever arrived in between."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pytest

from churn_assets.defs.gold.features import FEATURE_COLUMNS, churn_features_sql
from churn_assets.generator import generate_history, generate_increment
from churn_assets_tests.helpers import materialize, one, query

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

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
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }
        assert meta["gold/churn_features"]["build_mode"].value == "incremental"
        assert 0 < meta["gold/churn_features"]["customers_recomputed"].value < 1_000
        assert meta["gold/churn_features"]["day_counts_refreshed"].value is False  # same as-of date
        assert gold(home) == from_scratch(home, f"2026-11-01T0{hour}:00:00")
    # The next day: every day count moves, and only they.
    result = materialize(home, "*gold/churn_features", as_of="2026-11-02T00:30:00")
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["gold/churn_features"]["day_counts_refreshed"].value is True
    assert gold(home) == from_scratch(home, "2026-11-02T00:30:00")


# After the generated history (ending 2026-11-01) and its increments: no negative day count.
LATER = "2026-11-02T00:00:00"


def test_an_order_moved_to_another_customer_updates_both(home):
    generate_history(home, customers=500, seed=22, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_features", as_of=LATER).success
    ((order_id, old_user),) = query(home, "SELECT order_id, user_id FROM silver.churn_orders ORDER BY order_id LIMIT 1")
    new_user = query(
        home, "SELECT user_id FROM gold.churn_features WHERE user_id <> ? ORDER BY user_id LIMIT 1", [old_user]
    )[0][0]
    before = dict(query(home, "SELECT user_id, order_count FROM gold.churn_features"))
    (home / "landing" / "orders" / "correction.json").write_text(
        json.dumps(
            {
                "user_id": new_user,
                "id": order_id,
                "transaction_date": "10-31-2026 10:00:00",
                "item_count": 1.0,
                "amount": 10.0,
            }
        )
        + "\n"
    )
    assert materialize(home, "*gold/churn_features", as_of=LATER).success
    after = dict(query(home, "SELECT user_id, order_count FROM gold.churn_features"))
    assert after[new_user] == before[new_user] + 1
    assert after.get(old_user, 0) == before[old_user] - 1
    assert gold(home) == from_scratch(home, LATER)


def row_groups(home, table: str) -> dict[int, int]:
    """row group -> first block id of its first column: a rewritten row group gets new blocks."""
    return dict(
        query(
            home,
            f"SELECT row_group_id, min(block_id) FROM pragma_storage_info('{table}') "
            "WHERE column_id = 0 AND segment_type <> 'VALIDITY' GROUP BY ALL",
        )
    )


def test_hourly_commits_write_only_new_row_groups_and_a_due_run_compacts(home, monkeypatch):
    generate_history(home, customers=20_000, seed=23, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_features", as_of=LATER).success
    start = {t: row_groups(home, t) for t in ("gold.churn_features", "bronze.churn_app_events")}
    for _ in range(3):
        generate_increment(home, fraction=0.01)
        assert materialize(home, "*gold/churn_features", as_of=LATER).success
    later = {t: row_groups(home, t) for t in start}
    for table, groups in start.items():
        # Every row group written by the first load is still where it was (only deletion
        # marks changed), and the increments added row groups instead of rewriting any.
        assert {g: later[table][g] for g in groups} == groups, table
        assert len(later[table]) > len(groups), table
    assert one(home, "SELECT count(*) FROM ops.compactions") == 1  # the first load's 'new warehouse'

    monkeypatch.setenv("CHURN_COMPACT_EVERY_HOURS", "0")
    generate_increment(home, fraction=0.01)
    assert materialize(home, "*gold/churn_features", as_of=LATER).success
    assert query(home, "SELECT reason FROM ops.compactions ORDER BY compacted_at") == [("new warehouse",), ("due",)]
    compacted = row_groups(home, "gold.churn_features")
    assert len(compacted) < len(later["gold.churn_features"])
    assert gold(home) == from_scratch(home, LATER)
