"""The rules that decide what an odd value costs: null and counted in silver, a warning or a stop in gold."""

from __future__ import annotations

import math

import duckdb

from churn_assets.defs.gold.features import blocking_failures
from churn_assets.defs.silver.transform import ORDERS_FLAGGED, as_integer


def test_a_number_with_no_32_bit_integer_value_becomes_null_and_is_counted():
    values = [math.nan, math.inf, -math.inf, 3e9, -2147483649.5, 2147483647.9, -2147483648.9, -2.7, 57.0, None]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (amount DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    got = [r[0] for r in con.execute(f"SELECT {as_integer('amount')} FROM t ORDER BY rowid").fetchall()]
    # Truncated as Spark's cast does (not rounded), within INTEGER's range; null where it cannot be one.
    assert got == [None, None, None, None, None, 2147483647, -2147483648, -2, 57, None]
    flagged = con.execute(f"SELECT count(*) FILTER ({ORDERS_FLAGGED['order_amount_integer']}) FROM t").fetchall()
    assert flagged == [(5,)]  # the five nulls made here; a null that landed null is no failure


def _results(total: int, **failed: int) -> dict[str, tuple[int, int]]:
    names = ["one_row_per_customer", "order_count_positive", "label_is_binary", "amounts_non_negative"]
    names += ["day_counts_non_negative"]
    return {n: (total - failed.get(n, 0), failed.get(n, 0)) for n in names}


def test_landed_data_warns_a_defect_or_an_as_of_before_the_data_stops_the_cycle():
    assert blocking_failures(_results(100)) == {}
    # A refund, a date ahead of the as-of: data, the cycle goes on.
    assert blocking_failures(_results(100, amounts_non_negative=3, day_counts_non_negative=50)) == {}
    # Most day counts negative: the as-of is before the data.
    assert blocking_failures(_results(100, day_counts_non_negative=51)) == {"day_counts_non_negative": 51}
    # What only a defect produces stops it, however few the rows.
    assert blocking_failures(_results(100, order_count_positive=1, amounts_non_negative=3)) == {
        "order_count_positive": 1
    }
    assert blocking_failures(_results(100, one_row_per_customer=1)) == {"one_row_per_customer": 1}


def test_the_first_platform_is_the_earliest_event_then_the_first_to_arrive():
    """Gold's event order (one 128-bit number) orders as (timestamp, file id, row number) with a
    missing timestamp after every other: before and after 1970, at the ends of the calendar, ties."""
    from churn_assets.defs.gold.features import EVENT_ORDER

    events = [  # (customer, platform, timestamp, file id, row number)
        ("a", "web", "2024-01-01 00:00:01", 1, 5),
        ("a", "ios", "2024-01-01 00:00:00", 9, 9),  # earliest
        ("b", "web", "2024-01-01 00:00:00", 2, 1),
        ("b", "ios", "2024-01-01 00:00:00", 1, 7),  # same instant, earlier file
        ("c", "web", "1969-12-31 23:59:59", 3, 2),
        ("c", "ios", "1969-12-31 23:59:59", 3, 1),  # same instant and file, earlier row
        ("d", "web", None, 1, 1),
        ("d", "ios", "9999-12-31 23:59:59", 8, 8),  # a missing timestamp comes after any other
        ("e", "web", None, 2, 4_294_967_295),
        ("e", "ios", None, 3, 0),  # none has one: arrival decides, the largest row number included
        ("f", None, "0001-01-01 00:00:00", 1, 1),  # no platform: not a candidate
        ("f", "android", "0002-01-01 00:00:00", 1, 2),
        ("g", "web", None, 1, 1),
        ("g", "ios", "100000-01-01 00:00:00", 9, 9),  # far past what lands (4-digit years), before none
    ]
    con = duckdb.connect()
    con.execute("CREATE TABLE e (user_id VARCHAR, platform VARCHAR, ts TIMESTAMP, _file_id BIGINT, _row_no BIGINT)")
    con.executemany("INSERT INTO e VALUES (?, ?, ?, ?, ?)", events)
    first = con.execute(
        f"SELECT user_id, arg_min(platform, {EVENT_ORDER}) FILTER (WHERE platform IS NOT NULL) FROM e "
        "GROUP BY user_id ORDER BY user_id"
    ).fetchall()
    assert first == [
        ("a", "ios"),
        ("b", "ios"),
        ("c", "ios"),
        ("d", "ios"),
        ("e", "web"),
        ("f", "android"),
        ("g", "ios"),
    ]
