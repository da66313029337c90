"""Gold ``churn_features``: one row per customer with at least one order and one event.

Semantics follow the reference's gold SQL, made deterministic:
- ``platform`` is the first platform seen: that of the customer's earliest event with a
  platform (ties broken by arrival order); the reference's ``first()`` is arbitrary.
- events come straight from bronze: every row counts, even with an empty event_id or
  session_id; ``session_count`` counts distinct non-null sessions.
- day counts are whole calendar days from the date to the as-of date (Spark ``datediff``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from churn_assets.defs.gold.changes import record_build
from churn_assets.defs.silver.transform import TS_FORMAT
from churn_assets.faults import fault_point
from churn_assets.warehouse import advance, scalar, table_exists, transaction, watermark

FEATURE_COLUMNS = [
    "user_id",
    "email",
    "creation_date",
    "last_activity_date",
    "firstname",
    "lastname",
    "address",
    "canal",
    "country",
    "gender",
    "age_group",
    "churn",
    "order_count",
    "total_amount",
    "total_item",
    "last_transaction",
    "platform",
    "event_count",
    "session_count",
    "last_event",
    "days_since_creation",
    "days_since_last_activity",
    "days_last_event",
]


# The order of a customer's events for the first platform: the earliest timestamp (a missing one
# after every other), then arrival (file id, then row), as one 128-bit number: arg_min then
# compares numbers, not structs (1-2.5 s less of the events aggregate at 100x, ~10 s). Exact while
# row numbers stay below 2^32 and file ids below 10^6 * 2^32 (timestamps land in whole seconds, a
# million microseconds of 2^64 each). The largest, 2^62 * 2^64, fits Spark's DECIMAL(38, 0) too.
NO_TIMESTAMP = 2**62  # microseconds since 1970: the year 148,000 (the landing format has 4-digit years)
EVENT_ORDER = f"coalesce(epoch_us(ts), {NO_TIMESTAMP})::HUGEINT * {2**64} + _file_id::HUGEINT * {2**32} + _row_no"


def churn_features_sql(users: str | None = None) -> str:
    """The contract's features; ``users`` (a SQL subquery of user ids) restricts them.

    Takes one parameter, ``$as_of``.
    """
    only = f"AND user_id IN {users}" if users else ""
    return f"""
    WITH orders AS (
        SELECT user_id, count(*)::INTEGER AS order_count, sum(amount)::BIGINT AS total_amount,
               sum(item_count)::BIGINT AS total_item, max(creation_date) AS last_transaction
        FROM silver.churn_orders WHERE true {only} GROUP BY user_id
    ), events AS (
        SELECT user_id,
               arg_min(platform, {EVENT_ORDER}) FILTER (WHERE platform IS NOT NULL) AS platform,
               count(*)::INTEGER AS event_count, count(DISTINCT session_id)::INTEGER AS session_count,
               max(ts) AS last_event
        FROM (SELECT user_id, platform, session_id, _file_id, _row_no, try_strptime(date, '{TS_FORMAT}') AS ts
              FROM bronze.churn_app_events WHERE user_id IS NOT NULL {only})
        GROUP BY user_id
    )
    SELECT u.user_id, u.email, u.creation_date, u.last_activity_date, u.firstname, u.lastname, u.address,
           u.canal, u.country, u.gender, u.age_group, u.churn,
           o.order_count, o.total_amount, o.total_item, o.last_transaction,
           e.platform, e.event_count, e.session_count, e.last_event,
           {DAY_COUNTS}
    FROM (SELECT * FROM silver.churn_users WHERE true {only}) u
    JOIN orders o USING (user_id)
    JOIN events e USING (user_id)
    """


# Whole calendar days from the date to the as-of date, as Spark's datediff.
DAY_COUNT_EXPRS = {
    "days_since_creation": "date_diff('day', creation_date::DATE, $as_of::DATE)",
    "days_since_last_activity": "date_diff('day', last_activity_date::DATE, $as_of::DATE)",
    "days_last_event": "date_diff('day', last_event::DATE, $as_of::DATE)",
}
DAY_COUNTS = ",\n           ".join(f"{expr} AS {name}" for name, expr in DAY_COUNT_EXPRS.items())

# Where gold reads new rows from, with the column that says how new a row is.
GOLD_SOURCES = ("silver.churn_users", "silver.churn_orders", "bronze.churn_app_events")
CONSUMER = "gold.churn_features"


@dataclass
class GoldResult:
    mode: str  # "full" or "incremental"
    rows_total: int
    customers_recomputed: int
    day_counts_refreshed: bool


def build_churn_features(con: duckdb.DuckDBPyConnection, as_of: datetime, full: bool = False) -> GoldResult:
    """Build gold, recomputing only the customers that new rows touch.

    A customer's row depends only on that customer's silver and bronze rows, so the rows
    of customers named by no new row are still right, except for the day counts, which
    move with the as-of *date*: they are refreshed for every row when that date changes.
    """
    params = {"as_of": as_of}
    with transaction(con):
        highs = {src: scalar(con, f"SELECT max(_file_id) FROM {src}") or 0 for src in GOLD_SOURCES}
        exists = table_exists(con, "gold", "churn_features")
        refreshed = False
        if full or not exists:
            con.execute(f"CREATE OR REPLACE TABLE gold.churn_features AS {churn_features_sql()}", params)
            record_build(con, None)
            mode, recomputed = "full", None
        else:
            lows = {src: watermark(con, CONSUMER, src) for src in GOLD_SOURCES}
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _gold_affected AS "
                + " UNION ".join(
                    f"SELECT user_id FROM {src} WHERE _file_id > {int(lows[src])} "
                    f"AND _file_id <= {int(highs[src])} AND user_id IS NOT NULL"
                    for src in GOLD_SOURCES
                )
                + " UNION SELECT user_id FROM ops.gold_pending_users"
            )
            recomputed = scalar(con, "SELECT count(*) FROM _gold_affected")
            affected = "(SELECT user_id FROM _gold_affected)"
            if recomputed:
                con.execute(f"DELETE FROM gold.churn_features WHERE user_id IN {affected}")
                con.execute(f"INSERT INTO gold.churn_features {churn_features_sql(affected)}", params)
            previous = scalar(con, "SELECT max(as_of) FROM ops.gold_state WHERE table_name = ?", [CONSUMER])
            if previous is None or previous.date() != as_of.date():
                assignments = ", ".join(f"{name} = {expr}" for name, expr in DAY_COUNT_EXPRS.items())
                con.execute(f"UPDATE gold.churn_features SET {assignments}", params)
                refreshed = True
            record_build(con, None if refreshed else affected)
            con.execute("DROP TABLE _gold_affected")
            mode = "incremental"
        con.execute("DELETE FROM ops.gold_pending_users")
        for src, high in highs.items():
            advance(con, CONSUMER, src, high)
        con.execute("DELETE FROM ops.gold_state WHERE table_name = ?", [CONSUMER])
        con.execute("INSERT INTO ops.gold_state VALUES (?, ?, now()::TIMESTAMP)", [CONSUMER, as_of])
        total = scalar(con, "SELECT count(*) FROM gold.churn_features")
        fault_point("gold_before_commit")
    return GoldResult(mode, total, total if recomputed is None else recomputed, refreshed or mode == "full")


# Sanity rules for the blocking gold check: each is a SQL condition a row must meet. These catch what
# only a pipeline defect produces, and a failure stops the cycle (ERROR). Nulls are not among them: a
# timestamp that did not fit its format is null by design (the record is flagged in bronze), and so is
# the label of a customer sent without a boolean one (such a customer is scored, not learned from).
SANE_VALUES = {
    "order_count_positive": "order_count >= 1",
    "event_count_positive": "event_count >= 1",
    "sessions_within_events": "session_count <= event_count",
    "label_is_binary": "coalesce(churn IN (0, 1), true)",
}
# Rules that landed data can break as well as a defect: a refund's negative amount, a date ahead of the
# as-of (an export in a time zone ahead of UTC). A few such rows warn (WARN) and the cycle goes on.
DATA_VALUES = {
    "amounts_non_negative": "total_amount >= 0 AND total_item >= 0",
    # An as-of earlier than the data gives negative day counts; a missing date gives none.
    "day_counts_non_negative": " AND ".join(f"coalesce({name} >= 0, true)" for name in DAY_COUNT_EXPRS),
}
# ... but day counts negative for most customers mean an as-of before the data (CHURN_AS_OF set too
# early), which would skew every feature the model sees: that stops the cycle.
AS_OF_BEFORE_DATA_SHARE = 0.5


def gold_quality(con: duckdb.DuckDBPyConnection, only: str | None = None) -> dict[str, tuple[int, int]]:
    """expectation -> (passed, failed) on the current gold table, or on the rows of the customers
    of ``only`` (a SQL subquery of user ids): a build deletes and inserts whole customers, so a
    second row of a customer can only come with a customer it rebuilt."""
    where = f" WHERE user_id IN {only}" if only else ""
    rules = {**SANE_VALUES, **DATA_VALUES}
    exprs = ", ".join(f"count(*) FILTER (WHERE NOT coalesce({cond}, false))" for cond in rules.values())
    # One pass over those rows for every rule (a second looked the customers up again: 0.1 s at 100x).
    total, distinct, *fails = con.execute(
        f"SELECT count(*), count(DISTINCT user_id), {exprs} FROM gold.churn_features{where}"
    ).fetchall()[0]
    out = {"one_row_per_customer": (distinct, total - distinct)}
    for name, failed in zip(rules, fails):
        out[name] = (total - failed, failed)
    return out


def blocking_failures(results: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The failed expectations of ``gold_quality`` that must stop the cycle (see ``DATA_VALUES``)."""
    failed = {name: f for name, (_, f) in results.items() if f}
    total = sum(results["one_row_per_customer"])
    negative = failed.get("day_counts_non_negative", 0)
    return {
        name: f
        for name, f in failed.items()
        if name not in DATA_VALUES or (name == "day_counts_non_negative" and negative > AS_OF_BEFORE_DATA_SHARE * total)
    }
