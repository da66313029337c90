"""The pipeline against the data contract, on the real reference sample.

The oracle is a plain DuckDB computation of the contract straight from the landing files
(read_json / read_csv), independent of the pipeline's own SQL.
"""

from __future__ import annotations

import hashlib

import pytest

from churn_assets_tests import reference_oracle
from churn_assets_tests.helpers import SAMPLE, land_sample, materialize, needs_sample, one, query

pytestmark = [needs_sample, pytest.mark.slow]


def oracle(as_of: str):
    return reference_oracle.oracle(SAMPLE, as_of)


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
    expected, got, mismatches = reference_oracle.compare(SAMPLE, built / "warehouse.duckdb", "2023-06-10")
    assert expected == got == 450
    assert mismatches == []


def test_first_platform_is_the_earliest_event(built):
    rows = query(
        built,
        """
        SELECT f.user_id, f.platform,
               (SELECT e.platform FROM bronze.churn_app_events e
                WHERE e.user_id = f.user_id AND e.platform IS NOT NULL
                ORDER BY strptime(e.date, '%m-%d-%Y %H:%M:%S'), e._file_id, e._row_no LIMIT 1) AS expected
        FROM gold.churn_features f""",
    )
    assert rows and all(p == e for _, p, e in rows)


def test_silver_users_cleaning(built):
    raw = (
        oracle("2023-06-10")
        .execute("SELECT id, email, firstname FROM u WHERE id IS NOT NULL ORDER BY id LIMIT 50")
        .fetchall()
    )
    silver = dict((r[0], r[1:]) for r in query(built, "SELECT user_id, email, firstname FROM silver.churn_users"))
    for user_id, email, first in raw:
        hashed, firstname = silver[user_id]
        # Keyed, not the reference's reversible unkeyed SHA-1 (nor a plain SHA-256).
        assert hashed not in (hashlib.sha1(email.encode()).hexdigest(), hashlib.sha256(email.encode()).hexdigest())
        assert len(hashed) == 64
        assert firstname == " ".join(w[:1].upper() + w[1:].lower() for w in first.split(" "))
    types = dict(
        query(
            built,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema='silver' AND table_name='churn_users'",
        )
    )
    assert types["gender"] == types["age_group"] == types["churn"] == "INTEGER"
    assert types["creation_date"] == types["last_activity_date"] == "TIMESTAMP"


def test_quality_table_counts_per_expectation(built):
    rows = dict(
        ((t, x), (p, f, d))
        for t, x, p, f, d in query(
            built, "SELECT table_name, expectation, passed, failed, dropped FROM ops.data_quality"
        )
    )
    assert rows[("silver.churn_orders", "order_valid_id")] == (2129, 44, 44)
    assert rows[("silver.churn_orders", "order_valid_user_id")] == (2150, 23, 23)
    assert rows[("bronze.churn_users_bronze", "correct_schema")] == (2086, 0, 0)
    assert rows[("gold.churn_features", "one_row_per_customer")] == (450, 0, 0)


def test_reference_check_script_on_the_sample(capsys):
    # The one command that checks the full reference dataset, run here on its slice.
    from benchmarks.reference_check import main

    assert main([str(SAMPLE), "--skip-model"]) == 0
    out = capsys.readouterr().out
    assert "silver.churn_orders              2,106" in out
    assert "pipeline: 450; mismatching customers: 0" in out


def test_dashboard_kpis_on_the_reference_slice(tmp_path):
    """customers_churned and revenue_latest_month on real reference data, against SQL on
    silver and against SQL straight from the landed files."""
    (tmp_path / "landing").mkdir()
    land_sample(tmp_path)
    assert materialize(tmp_path, "*dashboard/kpis").success
    kpis = dict(query(tmp_path, "SELECT name, value FROM dashboard.kpis"))
    assert kpis["customers_churned"] == one(tmp_path, "SELECT count(*) FROM silver.churn_users WHERE churn = 1")
    latest = one(tmp_path, "SELECT max(date_trunc('month', creation_date)) FROM silver.churn_orders")
    assert kpis["revenue_latest_month"] == one(
        tmp_path, "SELECT sum(amount) FROM silver.churn_orders WHERE date_trunc('month', creation_date) = ?", [latest]
    )
    raw = oracle("2023-06-10")
    churned = raw.execute("SELECT count(DISTINCT id) FROM u WHERE id IS NOT NULL AND churn").fetchall()[0][0]
    revenue = raw.execute("""
        WITH v AS (SELECT trunc(amount)::INT AS amount, strptime(transaction_date, '%m-%d-%Y %H:%M:%S') AS t
                   FROM o WHERE id IS NOT NULL AND user_id IS NOT NULL)
        SELECT sum(amount) FROM v
        WHERE date_trunc('month', t) = (SELECT max(date_trunc('month', t)) FROM v)""").fetchall()[0][0]
    assert (kpis["customers_churned"], kpis["revenue_latest_month"]) == (churned, revenue) == (1303, 105762)
