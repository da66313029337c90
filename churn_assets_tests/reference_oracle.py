"""A plain DuckDB computation of the data contract straight from landing files.

Independent of the pipeline's SQL on purpose: the pipeline is checked against it on the
shared sample (the suite) and on any full landing set (benchmarks/reference_check.py).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

P = "'%m-%d-%Y %H:%M:%S'"
COMPARED = [
    "user_id",
    "order_count",
    "total_amount",
    "total_item",
    "last_transaction",
    "event_count",
    "session_count",
    "last_event",
    "churn",
    "gender",
    "age_group",
    "canal",
    "country",
    "days_since_creation",
    "days_since_last_activity",
    "days_last_event",
]


def oracle(landing: Path, as_of_date: str) -> duckdb.DuckDBPyConnection:
    """Tables u, o, e (the landed records) and ``expected`` (the contract's churn_features)."""
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE u AS SELECT * FROM read_json('{landing}/users/*.json', format='newline_delimited',
        columns={{'id':'VARCHAR','firstname':'VARCHAR','lastname':'VARCHAR','email':'VARCHAR','canal':'VARCHAR','country':'VARCHAR',
                  'creation_date':'VARCHAR','last_activity_date':'VARCHAR','gender':'DOUBLE','age_group':'DOUBLE','churn':'BOOLEAN'}})""")
    con.execute(f"""CREATE TABLE o AS SELECT * FROM read_json('{landing}/orders/*.json', format='newline_delimited',
        columns={{'id':'VARCHAR','user_id':'VARCHAR','transaction_date':'VARCHAR','item_count':'DOUBLE','amount':'DOUBLE'}})""")
    con.execute(f"CREATE TABLE e AS SELECT * FROM read_csv('{landing}/events/*.csv', all_varchar=true, header=true)")
    con.execute(f"""CREATE TABLE expected AS
        WITH ord AS (SELECT user_id, count(*) n, sum(amount::INT) amt, sum(item_count::INT) items,
                            max(strptime(transaction_date, {P})) last_tx
                     FROM o WHERE id IS NOT NULL AND user_id IS NOT NULL GROUP BY user_id),
             ev AS (SELECT user_id, count(*) n, count(DISTINCT session_id) sessions, max(strptime(date, {P})) last_ev
                    FROM e WHERE user_id IS NOT NULL GROUP BY user_id)
        SELECT u.id AS user_id, ord.n AS order_count, ord.amt AS total_amount, ord.items AS total_item,
               ord.last_tx AS last_transaction, ev.n AS event_count, ev.sessions AS session_count,
               ev.last_ev AS last_event,
               u.churn::INT AS churn, u.gender::INT AS gender, u.age_group::INT AS age_group, u.canal, u.country,
               datediff('day', strptime(u.creation_date, {P})::DATE, DATE '{as_of_date}') AS days_since_creation,
               datediff('day', strptime(u.last_activity_date, {P})::DATE, DATE '{as_of_date}')
                   AS days_since_last_activity,
               datediff('day', ev.last_ev::DATE, DATE '{as_of_date}') AS days_last_event
        FROM u JOIN ord ON ord.user_id = u.id JOIN ev ON ev.user_id = u.id WHERE u.id IS NOT NULL""")
    return con


def compare(landing: Path, warehouse: Path, as_of_date: str) -> tuple[int, int, list]:
    """(expected customers, pipeline customers, mismatching rows [(pipeline, expected)])."""
    cols = ", ".join(COMPARED)
    expected = oracle(landing, as_of_date).execute(f"SELECT {cols} FROM expected ORDER BY user_id").fetchall()
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        got = con.execute(f"SELECT {cols} FROM gold.churn_features ORDER BY user_id").fetchall()
    finally:
        con.close()
    got_by_id = {r[0]: r for r in got}
    mismatches = [(got_by_id.get(e[0]), e) for e in expected if got_by_id.get(e[0]) != e]
    return len(expected), len(got), mismatches
