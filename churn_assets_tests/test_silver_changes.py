"""Silver's change feed, and the figures that follow it instead of reading the whole history each
hour: after customers and orders sent again with other values, orders moved to another customer,
a new version of a landed file and a next run, each figure equals its query over silver."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pytest

from churn_assets.defs.dashboards.metrics import METRICS
from churn_assets.generator import generate_history, generate_increment
from churn_assets_tests.helpers import materialize, one, query, user_record

FOLLOWING = [m for m in METRICS if m.follows]
SELECTION = [f"*dashboard/{m.name}" for m in FOLLOWING]
AS_OF = "2026-11-02T00:00:00"


def modes(result) -> dict[str, str]:
    return {
        e.asset_key.to_user_string(): e.materialization.metadata["mode"].value
        for e in result.get_asset_materialization_events()
        if "mode" in e.materialization.metadata
    }


def assert_figures_equal_their_queries(home) -> None:
    for m in FOLLOWING:
        table = query(home, f"SELECT * FROM dashboard.{m.name} ORDER BY ALL")
        assert table == query(home, f"SELECT * FROM ({m.sql}) ORDER BY ALL"), m.name
        types = "SELECT column_name, column_type FROM (DESCRIBE {})"
        assert query(home, types.format(f"dashboard.{m.name}")) == query(home, types.format(f"({m.sql})")), m.name


def land(home, source: str, name: str, records: list[dict | str]) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (home / "landing" / source / name).write_text("\n".join(lines) + "\n")


@pytest.mark.slow  # whole runs
def test_figures_follow_silvers_changes_and_equal_their_queries(home):
    generate_history(home, customers=2_000, seed=31, end=date(2026, 11, 1), dirty_rate=0.01, progress=False)
    first = materialize(home, SELECTION, as_of=AS_OF)
    assert set(modes(first).values()) == {"whole"}
    assert_figures_equal_their_queries(home)

    # Odd amounts: an order without one, and the lowest a silver INTEGER holds (its old image is
    # negated below). A month whose orders lose every amount shows no revenue, as SQL's sum does.
    buyer = one(home, "SELECT user_id FROM silver.churn_users ORDER BY user_id LIMIT 1")
    odd = [
        {"user_id": buyer, "id": "odd-1", "transaction_date": "01-15-1990 10:00:00", "item_count": 1.0},
        {"user_id": buyer, "id": "odd-2", "transaction_date": "01-16-1990 10:00:00", "item_count": 1.0, "amount": 10.0},
        {
            "user_id": buyer,
            "id": "odd-3",
            "transaction_date": "02-16-1990 10:00:00",
            "item_count": 1.0,
            "amount": -2147483648.0,
        },
    ]
    land(home, "orders", "odd_orders.json", odd)
    assert set(modes(materialize(home, SELECTION, as_of=AS_OF)).values()) == {"changes"}
    assert_figures_equal_their_queries(home)
    land(
        home,
        "orders",
        "odd_orders_again.json",
        [{**odd[1], "transaction_date": "03-16-1990 10:00:00"}, {**odd[2], "amount": 5.0}],
    )
    assert set(modes(materialize(home, SELECTION, as_of=AS_OF)).values()) == {"changes"}
    assert_figures_equal_their_queries(home)
    assert query(
        home,
        "SELECT revenue, orders, orders_with_amount FROM dashboard.revenue_by_month WHERE month = DATE '1990-01-01'",
    ) == [(None, 1, 0)]

    # A figure whose definition changed (an earlier release's reader) computes anew, and the earlier
    # reader is forgotten.
    con_rows = "SELECT count(*) FROM ops.watermarks WHERE consumer LIKE 'dashboard.revenue_by_month#%'"
    assert one(home, con_rows) == 1
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute(
        "UPDATE ops.watermarks SET consumer = 'dashboard.revenue_by_month#0' "
        "WHERE consumer LIKE 'dashboard.revenue_by_month#%'"
    )
    con.close()
    assert modes(materialize(home, SELECTION, as_of=AS_OF))["dashboard/revenue_by_month"] == "whole"
    assert one(home, "SELECT count(*) FROM ops.watermarks WHERE consumer = 'dashboard.revenue_by_month#0'") == 0
    assert one(home, con_rows) == 1

    # Sent again with other values: customers with another channel, gender and label; orders with
    # another amount, another month, and one moved to another customer.
    users = query(
        home,
        "SELECT user_id, canal, gender, churn FROM silver.churn_users WHERE canal IS NOT NULL ORDER BY user_id LIMIT 3",
    )
    moved = [
        user_record(u, canal="PHONE" if canal != "PHONE" else "MOBILE", gender=float(1 - (g or 0)), churn=not c)
        for u, canal, g, c in users
    ]
    land(home, "users", "resent_users.json", moved)
    orders = query(
        home,
        """SELECT o.order_id, o.user_id, o.amount, o.item_count FROM silver.churn_orders o
           JOIN silver.churn_users u USING (user_id) WHERE u.canal = 'WEBAPP' ORDER BY o.order_id LIMIT 3""",
    )
    other = one(home, "SELECT user_id FROM silver.churn_users WHERE canal = 'MOBILE' ORDER BY user_id LIMIT 1")
    resent = [
        {"user_id": u, "id": o, "transaction_date": "10-31-2026 10:00:00", "item_count": float(i), "amount": a + 7.0}
        for o, u, a, i in orders[:2]
    ]
    o, _, a, i = orders[2]
    resent.append(
        {"user_id": other, "id": o, "transaction_date": "01-15-2024 10:00:00", "item_count": float(i), "amount": a}
    )
    land(home, "orders", "resent_orders.json", resent)
    generate_increment(home, fraction=0.03, dirty_rate=0.01)
    # Silver alone first: it keeps the old image of each row it replaces, until the figures read them.
    assert materialize(home, ["*silver/churn_users", "*silver/churn_orders"], as_of=AS_OF).success
    assert set(users) <= set(query(home, "SELECT user_id, canal, gender, churn FROM ops.silver_removed_users"))
    old_orders = {(u, a) for _, u, a, _ in orders}
    assert old_orders <= set(query(home, "SELECT user_id, amount FROM ops.silver_removed_orders"))
    # Sent once more before the figures read: a row added since they read is taken out again, and
    # was never in their sums.
    land(home, "users", "resent_users_again.json", [user_record(users[0][0], canal="MOBILE", gender=0.0)])
    land(home, "orders", "resent_orders_again.json", [{**resent[0], "amount": resent[0]["amount"] + 3}])
    assert materialize(home, ["*silver/churn_users", "*silver/churn_orders"], as_of=AS_OF).success
    before = {m.name: query(home, f"SELECT * FROM dashboard.{m.name} ORDER BY ALL") for m in FOLLOWING}
    second = materialize(home, SELECTION, as_of=AS_OF)
    assert set(modes(second).values()) == {"changes"}
    assert_figures_equal_their_queries(home)
    assert all(query(home, f"SELECT * FROM dashboard.{name} ORDER BY ALL") != rows for name, rows in before.items())
    # Every figure that follows a table has read its old images: they are dropped.
    assert one(home, "SELECT count(*) FROM ops.silver_removed_users") == 0
    assert one(home, "SELECT count(*) FROM ops.silver_removed_orders") == 0

    # A new version of a landed file: silver puts earlier rows back, which no watermark sees.
    land(home, "orders", "resent_orders.json", resent[:1])
    generate_increment(home, fraction=0.01, dirty_rate=0.01)
    third = materialize(home, SELECTION, as_of=AS_OF)
    assert modes(third) == {
        "dashboard/revenue_by_month": "whole",
        "dashboard/revenue_by_channel": "whole",
        "dashboard/churn_by_gender": "changes",
    }
    assert_figures_equal_their_queries(home)
    assert one(home, "SELECT count(*) FROM bronze.ingest_manifest WHERE event IN ('rewritten', 'truncated')") == 1
    assert one(home, "SELECT count(*) FROM ops.silver_removed_users") == 0
    assert one(home, "SELECT count(*) FROM ops.silver_removed_orders") == 0

    # And the next run follows the changes again.
    generate_increment(home, fraction=0.01, dirty_rate=0.01)
    assert set(modes(materialize(home, SELECTION, as_of=AS_OF)).values()) == {"changes"}
    assert_figures_equal_their_queries(home)


def test_a_figures_reader_name_follows_its_definition():
    from dataclasses import replace

    for m in FOLLOWING:
        assert m.reader.startswith(f"dashboard.{m.name}#") and m.reader == replace(m).reader
        assert replace(m, sql=m.sql + " ").reader != m.reader
        assert replace(m, change=lambda seen, c=m.change: c(seen) + " ").reader != m.reader
