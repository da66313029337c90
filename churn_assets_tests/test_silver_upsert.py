"""Silver's latest-wins upsert on a real DuckDB file: a key sent twice in the new rows keeps its
latest arrival, counted once; rows without a key are dropped and counted."""

from __future__ import annotations

import pytest

from churn_assets.defs.silver.transform import build_churn_orders
from churn_assets.warehouse import connect, ensure_schema


def land_orders(con, rows: list[tuple]) -> None:
    """(file_id, row_no, order id, user id, amount) as bronze holds them."""
    con.executemany(
        """INSERT INTO bronze.churn_orders_bronze (user_id, id, transaction_date, item_count, amount, _file_id, _row_no)
           VALUES (?, ?, '06-05-2023 12:07:59', 1.0, ?, ?, ?)""",
        [(user, order, amount, file_id, row_no) for file_id, row_no, order, user, amount in rows],
    )


@pytest.mark.parametrize("collide", [False, True], ids=["real hashes", "every hash colliding"])
def test_a_key_sent_twice_keeps_its_latest_arrival_and_counts_once(tmp_path, collide):
    con = connect(tmp_path / "w.duckdb")
    ensure_schema(con)
    if collide:
        # The duplicate check counts distinct hashes of the keys; a temp macro shadowing hash()
        # makes every key collide, so the counts must come from the exact path.
        con.execute("CREATE OR REPLACE TEMP MACRO hash(x) AS 42")
    land_orders(con, [(1, 1, "o-1", "u-1", 10.0), (1, 2, "o-2", "u-1", 20.0), (1, 3, None, "u-2", 5.0)])
    first = build_churn_orders(con)
    assert (first.rows_read, first.rows_written, first.rows_new, first.rows_total) == (3, 2, 2, 2)
    assert first.dropped == {"order_valid_id": 1, "order_valid_user_id": 0}

    # o-1 twice in one batch (file 2 then file 3), o-3 new, o-2 once more: latest arrival wins.
    resent = [(2, 1, "o-1", "u-1", 11.0), (3, 1, "o-1", "u-3", 12.0), (3, 2, "o-3", "u-3", 30.0)]
    land_orders(con, [*resent, (3, 3, "o-2", "u-1", 21.0)])
    second = build_churn_orders(con)
    assert (second.rows_read, second.rows_written, second.rows_new, second.rows_total) == (4, 3, 1, 3)
    assert con.execute("SELECT order_id, user_id, amount FROM silver.churn_orders ORDER BY order_id").fetchall() == [
        ("o-1", "u-3", 12),
        ("o-2", "u-1", 21),
        ("o-3", "u-3", 30),
    ]
    # The customer the replaced rows named is recomputed in gold (u-3 is named by the new rows).
    assert {r[0] for r in con.execute("SELECT user_id FROM ops.gold_pending_users").fetchall()} == {"u-1"}

    # A batch of invalid rows only: each counted under its expectation, nothing written; then nothing new.
    land_orders(con, [(4, 1, None, "u-1", 1.0), (4, 2, "o-4", None, 2.0)])
    third = build_churn_orders(con)
    assert (third.rows_read, third.rows_written, third.rows_total) == (2, 0, 3)
    assert third.dropped == {"order_valid_id": 1, "order_valid_user_id": 1}
    idle = build_churn_orders(con)
    assert (idle.rows_read, idle.rows_written, idle.dropped) == (0, 0, {"order_valid_id": 0, "order_valid_user_id": 0})


def test_dropped_row_conditions_that_miss_an_invalid_row_fail_the_step(tmp_path, monkeypatch):
    """The expectations' counts must cover every row the valid condition leaves out, or
    ops.data_quality would count wrong without a word: edited apart, they fail the step."""
    from churn_assets.defs.silver import transform

    con = connect(tmp_path / "w.duckdb")
    ensure_schema(con)
    land_orders(con, [(1, 1, "o-1", "u-1", 10.0), (1, 2, "o-2", None, 20.0)])
    monkeypatch.setattr(transform, "ORDERS_DROPPED", {"order_valid_id": "id IS NULL"})
    with pytest.raises(RuntimeError, match="do not cover the rows failing"):
        build_churn_orders(con)
    assert con.execute("SELECT count(*) FROM silver.churn_orders").fetchall() == [(0,)]  # rolled back
