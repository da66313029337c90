"""Gold ``churn_features``: one row per customer with at least one order and one event.

Semantics follow the reference's gold SQL, made deterministic:
- ``platform`` is the first platform seen: that of the customer's earliest event with a
  platform (ties broken by arrival order); the reference's ``first()`` is arbitrary.
- events come straight from bronze: every row counts, even with an empty event_id or
  session_id; ``session_count`` counts distinct non-null sessions.
- day counts are whole calendar days from the date to the as-of date (Spark ``datediff``).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from churn_assets.silver.transform import TS_FORMAT

FEATURE_COLUMNS = [
    "user_id", "email", "creation_date", "last_activity_date", "firstname", "lastname", "address",
    "canal", "country", "gender", "age_group", "churn", "order_count", "total_amount", "total_item",
    "last_transaction", "platform", "event_count", "session_count", "last_event",
    "days_since_creation", "days_since_last_activity", "days_last_event",
]


def churn_features_sql(as_of: datetime) -> tuple[str, list]:
    sql = f"""
    WITH orders AS (
        SELECT user_id, count(*)::INTEGER AS order_count, sum(amount)::BIGINT AS total_amount,
               sum(item_count)::BIGINT AS total_item, max(creation_date) AS last_transaction
        FROM silver.churn_orders GROUP BY user_id
    ), events AS (
        SELECT user_id,
               arg_min(platform, struct_pack(t := ts, f := _file_id, r := _row_no)) FILTER (WHERE platform IS NOT NULL) AS platform,
               count(*)::INTEGER AS event_count, count(DISTINCT session_id)::INTEGER AS session_count,
               max(ts) AS last_event
        FROM (SELECT user_id, platform, session_id, _file_id, _row_no, try_strptime(date, '{TS_FORMAT}') AS ts
              FROM bronze.churn_app_events WHERE user_id IS NOT NULL)
        GROUP BY user_id
    )
    SELECT u.user_id, u.email, u.creation_date, u.last_activity_date, u.firstname, u.lastname, u.address,
           u.canal, u.country, u.gender, u.age_group, u.churn,
           o.order_count, o.total_amount, o.total_item, o.last_transaction,
           e.platform, e.event_count, e.session_count, e.last_event,
           date_diff('day', u.creation_date::DATE, $as_of::DATE) AS days_since_creation,
           date_diff('day', u.last_activity_date::DATE, $as_of::DATE) AS days_since_last_activity,
           date_diff('day', e.last_event::DATE, $as_of::DATE) AS days_last_event
    FROM silver.churn_users u
    JOIN orders o USING (user_id)
    JOIN events e USING (user_id)
    """
    return sql, {"as_of": as_of}


def build_churn_features(con: duckdb.DuckDBPyConnection, as_of: datetime) -> int:
    sql, params = churn_features_sql(as_of)
    con.execute(f"CREATE OR REPLACE TABLE gold.churn_features AS {sql} ORDER BY user_id", params)
    return con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0]


# Sanity rules for the blocking gold check: each is a SQL condition a row must meet.
SANE_VALUES = {
    "order_count_positive": "order_count >= 1",
    "event_count_positive": "event_count >= 1",
    "amounts_non_negative": "total_amount >= 0 AND total_item >= 0",
    "sessions_within_events": "session_count <= event_count",
    "label_is_binary": "churn IN (0, 1)",
    "day_counts_present": "days_since_creation IS NOT NULL AND days_last_event IS NOT NULL",
}


def gold_quality(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """expectation -> (passed, failed) on the current gold table."""
    total, distinct = con.execute(
        "SELECT count(*), count(DISTINCT user_id) FROM gold.churn_features"
    ).fetchall()[0]
    out = {"one_row_per_customer": (distinct, total - distinct)}
    exprs = ", ".join(f"count(*) FILTER (WHERE NOT coalesce({cond}, false))" for cond in SANE_VALUES.values())
    fails = con.execute(f"SELECT {exprs} FROM gold.churn_features").fetchall()[0]
    for name, failed in zip(SANE_VALUES, fails):
        out[name] = (total - failed, failed)
    return out
