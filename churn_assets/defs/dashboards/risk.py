"""``dashboard.customer_risk``: each scored customer's prediction with the gold columns the
prediction figures group and sort by, kept up to date by what scoring changed.

The four prediction figures were each a join of ``gold.churn_prediction`` with
``gold.churn_features`` over every customer. They now group this one table, and an hourly run
changes only its rows whose prediction was written since it last ran (``scored_at`` past the
table's newest): scoring rewrites a customer's row whenever one of the model's features moved,
and every column kept here is such a feature, or the creation month, which moves only with
``days_since_creation``. A new model, a new threshold or a new as-of date rescores everyone,
and then the table is rebuilt. Customers scoring dropped are dropped here.
``churn_assets_tests/test_dashboards.py`` holds the table equal to the join after increments.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from churn_assets.warehouse import scalar, table_exists, transaction

TABLE = "dashboard.customer_risk"

# The join, for every scored customer or those scored after $since.
RISK_SQL = """
    SELECT p.user_id, f.country, f.canal, f.platform, date_trunc('month', f.creation_date) AS creation_month,
           f.total_amount, f.order_count, f.days_last_event, p.churn_prediction, p.churn_probability, p.scored_at
    FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id)"""

# Beyond this share of the table changed, rebuilding is cheaper than deleting and inserting.
REBUILD_SHARE = 0.25


@dataclass(frozen=True)
class RiskRefresh:
    mode: str  # full | incremental
    rows_changed: int
    rows_removed: int = 0


def refresh_customer_risk(con: duckdb.DuckDBPyConnection) -> RiskRefresh:
    with transaction(con):
        if not table_exists(con, "dashboard", "customer_risk"):
            return _rebuild(con)
        since = scalar(con, f"SELECT max(scored_at) FROM {TABLE}")
        if since is None:
            return _rebuild(con)
        # Counted on the predictions alone first: the daily refresh rebuilds without a join too many.
        rescored = scalar(con, "SELECT count(*) FROM gold.churn_prediction WHERE scored_at > ?", [since])
        if rescored > REBUILD_SHARE * scalar(con, f"SELECT count(*) FROM {TABLE}"):
            return _rebuild(con)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _risk AS {RISK_SQL} WHERE p.scored_at > ?", [since])
        changed = scalar(con, "SELECT count(*) FROM _risk")
        con.execute(f"DELETE FROM {TABLE} WHERE user_id IN (SELECT user_id FROM _risk)")
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM _risk")
        con.execute("DROP TABLE _risk")
        removed = 0
        # Every prediction row is here once it was scored; more rows here means customers were dropped.
        if scalar(con, f"SELECT count(*) FROM {TABLE}") != scalar(con, "SELECT count(*) FROM gold.churn_prediction"):
            removed = scalar(
                con, f"SELECT count(*) FROM {TABLE} WHERE user_id NOT IN (SELECT user_id FROM ({RISK_SQL}))"
            )
            con.execute(f"DELETE FROM {TABLE} WHERE user_id NOT IN (SELECT user_id FROM ({RISK_SQL}))")
        return RiskRefresh("incremental", int(changed), int(removed))


def _rebuild(con: duckdb.DuckDBPyConnection) -> RiskRefresh:
    con.execute(f"CREATE OR REPLACE TABLE {TABLE} AS {RISK_SQL}")
    return RiskRefresh("full", int(scalar(con, f"SELECT count(*) FROM {TABLE}")))
