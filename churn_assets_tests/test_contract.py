"""The pipeline against the data contract, on the real reference sample.

The oracle is a plain DuckDB computation of the contract straight from the landing files
(read_json / read_csv), independent of the pipeline's own SQL.
"""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from churn_assets_tests.conftest import SAMPLE, land_sample, materialize, needs_sample, one, query

pytestmark = needs_sample

P = "'%m-%d-%Y %H:%M:%S'"


def oracle(as_of: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE u AS SELECT * FROM read_json('{SAMPLE}/users/*.json', format='newline_delimited',
        columns={{'id':'VARCHAR','firstname':'VARCHAR','lastname':'VARCHAR','email':'VARCHAR','canal':'VARCHAR','country':'VARCHAR',
                  'creation_date':'VARCHAR','last_activity_date':'VARCHAR','gender':'DOUBLE','age_group':'DOUBLE','churn':'BOOLEAN'}})""")
    con.execute(f"""CREATE TABLE o AS SELECT * FROM read_json('{SAMPLE}/orders/*.json', format='newline_delimited',
        columns={{'id':'VARCHAR','user_id':'VARCHAR','transaction_date':'VARCHAR','item_count':'DOUBLE','amount':'DOUBLE'}})""")
    con.execute(f"CREATE TABLE e AS SELECT * FROM read_csv('{SAMPLE}/events/*.csv', all_varchar=true, header=true)")
    con.execute(f"""CREATE TABLE expected AS
        WITH ord AS (SELECT user_id, count(*) n, sum(amount::INT) amt, sum(item_count::INT) items,
                            max(strptime(transaction_date, {P})) last_tx
                     FROM o WHERE id IS NOT NULL AND user_id IS NOT NULL GROUP BY user_id),
             ev AS (SELECT user_id, count(*) n, count(DISTINCT session_id) sessions, max(strptime(date, {P})) last_ev
                    FROM e WHERE user_id IS NOT NULL GROUP BY user_id)
        SELECT u.id AS user_id, ord.n AS order_count, ord.amt AS total_amount, ord.items AS total_item,
               ord.last_tx AS last_transaction, ev.n AS event_count, ev.sessions AS session_count, ev.last_ev AS last_event,
               u.churn::INT AS churn, u.gender::INT AS gender, u.age_group::INT AS age_group, u.canal, u.country,
               datediff('day', strptime(u.creation_date, {P})::DATE, DATE '{as_of[:10]}') AS days_since_creation,
               datediff('day', strptime(u.last_activity_date, {P})::DATE, DATE '{as_of[:10]}') AS days_since_last_activity,
               datediff('day', ev.last_ev::DATE, DATE '{as_of[:10]}') AS days_last_event
        FROM u JOIN ord ON ord.user_id = u.id JOIN ev ON ev.user_id = u.id WHERE u.id IS NOT NULL""")
    return con


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("sample")
    (home / "landing").mkdir()
    land_sample(home)
    result = materialize(home, "*gold/churn_features")
    assert result.success
    return home


def test_layer_counts(built):
    assert one(built, "SELECT count(*) FROM bronze.churn_users_bronze") == 2086
    assert one(built, "SELECT count(*) FROM bronze.churn_orders_bronze") == 2173
    assert one(built, "SELECT count(*) FROM bronze.churn_app_events") == 1125
    assert one(built, "SELECT count(*) FROM silver.churn_users") == 2086
    # 44 orders without id and 23 without user_id are dropped, as in the contract.
    assert one(built, "SELECT count(*) FROM silver.churn_orders") == 2106
    assert one(built, "SELECT count(*) FROM gold.churn_features") == 450


def test_every_customer_equals_plain_sql(built):
    cols = ["user_id", "order_count", "total_amount", "total_item", "last_transaction", "event_count", "session_count",
            "last_event", "churn", "gender", "age_group", "canal", "country", "days_since_creation",
            "days_since_last_activity", "days_last_event"]
    got = query(built, f"SELECT {', '.join(cols)} FROM gold.churn_features ORDER BY user_id")
    expected = oracle("2023-06-10").execute(f"SELECT {', '.join(cols)} FROM expected ORDER BY user_id").fetchall()
    assert len(got) == len(expected) == 450
    mismatches = [(g, e) for g, e in zip(got, expected) if tuple(g) != tuple(e)]
    assert mismatches == []


def test_first_platform_is_the_earliest_event(built):
    rows = query(built, """
        SELECT f.user_id, f.platform,
               (SELECT e.platform FROM bronze.churn_app_events e
                WHERE e.user_id = f.user_id AND e.platform IS NOT NULL
                ORDER BY strptime(e.date, '%m-%d-%Y %H:%M:%S'), e._file_id, e._row_no LIMIT 1) AS expected
        FROM gold.churn_features f""")
    assert rows and all(p == e for _, p, e in rows)


def test_silver_users_cleaning(built):
    raw = oracle("2023-06-10").execute("SELECT id, email, firstname FROM u WHERE id IS NOT NULL ORDER BY id LIMIT 50").fetchall()
    silver = dict(((r[0], r[1:]) for r in query(built, "SELECT user_id, email, firstname FROM silver.churn_users")))
    for user_id, email, first in raw:
        hashed, firstname = silver[user_id]
        # Keyed, not the reference's reversible unkeyed SHA-1 (nor a plain SHA-256).
        assert hashed not in (hashlib.sha1(email.encode()).hexdigest(), hashlib.sha256(email.encode()).hexdigest())
        assert len(hashed) == 64
        assert firstname == " ".join(w[:1].upper() + w[1:].lower() for w in first.split(" "))
    types = dict(query(built, "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema='silver' AND table_name='churn_users'"))
    assert types["gender"] == types["age_group"] == types["churn"] == "INTEGER"
    assert types["creation_date"] == types["last_activity_date"] == "TIMESTAMP"


def test_quality_table_counts_per_expectation(built):
    rows = dict(((t, x), (p, f, d)) for t, x, p, f, d in query(
        built, "SELECT table_name, expectation, passed, failed, dropped FROM ops.data_quality"))
    assert rows[("silver.churn_orders", "order_valid_id")] == (2129, 44, 44)
    assert rows[("silver.churn_orders", "order_valid_user_id")] == (2150, 23, 23)
    assert rows[("bronze.churn_users_bronze", "correct_schema")] == (2086, 0, 0)
    assert rows[("gold.churn_features", "one_row_per_customer")] == (450, 0, 0)
