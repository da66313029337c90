"""Every figure of the reference's dashboards as one SQL query over the warehouse.

Each becomes a table ``dashboard.<name>``; ``deps`` are the asset keys it reads, so the
asset graph shows what each figure depends on. Queries take one parameter, ``$as_of``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from churn_assets.defs.silver.changes import as_read, images

SILVER_USERS = ("silver", "churn_users")
SILVER_ORDERS = ("silver", "churn_orders")
FEATURES = ("gold", "churn_features")
# Each prediction row carries the gold columns the prediction figures read (ml/scoring.py, CONTEXT).
PREDICTION = ("gold", "churn_prediction")
BRONZE = (("bronze", "churn_users_bronze"), ("bronze", "churn_orders_bronze"), ("bronze", "churn_app_events"))

# The latest calendar month present in the orders (the reference's "MRR" month).
LATEST_MONTH = "(SELECT date_trunc('month', max(creation_date)) FROM silver.churn_orders)"
# A customer's label as the churn figures show it.
STATUS = "CASE churn WHEN 1 THEN 'churned' WHEN 0 THEN 'stayed' ELSE 'no label' END AS status"
# The 100th highest probability of churn among the customers at risk: every one of the top 100
# has at least it, so the ranking by probability, then value, then key sorts only those (one
# top-N over a number instead: 0.14 -> 0.02 s at 100x the reference, 4.6M customers at risk).
TOP_100_CUT = """SELECT min(churn_probability) FROM (
                   SELECT churn_probability FROM gold.churn_prediction WHERE churn_prediction = 1
                   ORDER BY churn_probability DESC LIMIT 100)"""
# An order of that month, as a range the scan can skip row groups with (not ``date_trunc(...) =``,
# which reads every row: 0.12 against 0.03 s over 17M orders).
IN_LATEST_MONTH = "{d} >= {m} AND {d} < {m} + INTERVAL 1 MONTH"
TENURE = """CASE WHEN m < 3 THEN '0-2 months' WHEN m < 6 THEN '3-5 months' WHEN m < 12 THEN '6-11 months'
                 WHEN m < 24 THEN '12-23 months' ELSE '24+ months' END"""


@dataclass(frozen=True)
class Metric:
    name: str
    dashboard: str  # churn analysis | churn prediction | data quality | pipeline health
    deps: tuple[tuple[str, ...], ...]
    sql: str
    description: str
    # A figure of sums over silver alone can follow silver's change feed (``defs/silver/changes.py``)
    # instead of reading the whole history each hour: ``change`` renders its change since the
    # states it last read of its silver tables (``silver.<table>`` -> state), grouped by ``keys``
    # with each of ``sums`` as a difference. A group whose ``count`` falls to 0 is gone; a sum of
    # ``null_unless`` is null while its count of non-null terms is 0, as SQL's sum of nulls.
    change: Callable[[dict[str, int]], str] | None = None
    keys: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()
    count: str = ""
    null_unless: tuple[tuple[str, str], ...] = ()
    order: str = ""

    @property
    def follows(self) -> tuple[str, ...]:
        """The silver tables whose change feed the figure follows (none: computed anew each time)."""
        return tuple(".".join(d) for d in self.deps) if self.change else ()

    @property
    def reader(self) -> str:
        """Its name as a reader of silver's feed, with its definition's hash: a figure whose SQL
        changed (a new release) computes anew instead of moving a table of the old meaning."""
        text = self.sql + (self.change(dict.fromkeys(self.follows, 0)) if self.change else "")
        return f"dashboard.{self.name}#{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# How the revenue figures' columns add up: revenue is null while no order of the group has an amount.
REVENUE_SUMS = {
    "sums": ("revenue", "orders", "orders_with_amount"),
    "count": "orders",
    "null_unless": (("revenue", "orders_with_amount"),),
}


def followed_sql(metric: Metric, seen: dict[str, int]) -> str:
    """SQL: the figure's table as it is, moved by its change since the states ``seen``."""
    keys, sums, unless = ", ".join(metric.keys), ", ".join(metric.sums), dict(metric.null_unless)

    def total(m: str) -> str:
        summed = f"sum({m})::BIGINT"
        return f"CASE WHEN sum({unless[m]}) <> 0 THEN {summed} END" if m in unless else summed

    totals = ", ".join(f"{total(m)} AS {m}" for m in metric.sums)
    return f"""SELECT {keys}, {totals} FROM (
                 SELECT {keys}, {sums} FROM dashboard.{metric.name}
                 UNION ALL SELECT {keys}, {sums} FROM ({metric.change(seen)}))
               GROUP BY {keys} HAVING sum({metric.count}) <> 0 ORDER BY {metric.order}"""


def _revenue_by_month_change(seen: dict[str, int]) -> str:
    return f"""SELECT date_trunc('month', creation_date)::DATE AS month, sum(sign * amount::BIGINT) AS revenue,
                      sum(sign) AS orders, sum(sign) FILTER (amount IS NOT NULL) AS orders_with_amount
               FROM {images("silver.churn_orders", seen["silver.churn_orders"])}
               WHERE creation_date IS NOT NULL GROUP BY 1"""


def _churn_by_gender_change(seen: dict[str, int]) -> str:
    return f"""SELECT coalesce(gender::VARCHAR, 'unknown') AS gender,
                      {STATUS},
                      sum(sign) AS customers
               FROM {images("silver.churn_users", seen["silver.churn_users"])} GROUP BY ALL"""


def _revenue_by_channel_change(seen: dict[str, int]) -> str:
    # A customer's orders count under the customer's channel: an order or a customer changed moves
    # the sums of that customer, which are taken out as they were and put back as they are.
    orders, users = seen["silver.churn_orders"], seen["silver.churn_users"]
    return f"""
        WITH touched AS MATERIALIZED (
            SELECT user_id FROM {images("silver.churn_orders", orders)}
            UNION SELECT user_id FROM {images("silver.churn_users", users)}
        ), o AS MATERIALIZED (
            SELECT _file_id, user_id, amount, creation_date FROM silver.churn_orders
            WHERE user_id IN (SELECT user_id FROM touched)
        ), u AS MATERIALIZED (
            SELECT _file_id, user_id, canal, gender, churn FROM silver.churn_users
            WHERE user_id IN (SELECT user_id FROM touched)
        )
        SELECT coalesce(u.canal, 'unknown') AS canal, sum(o.amount) AS revenue, count(*) AS orders,
               count(o.amount) AS orders_with_amount
        FROM o JOIN u USING (user_id) GROUP BY 1
        UNION ALL
        SELECT coalesce(u.canal, 'unknown'), -sum(o.amount), -count(*), -count(o.amount)
        FROM {as_read("silver.churn_orders", orders, "o")} o JOIN {as_read("silver.churn_users", users, "u")} u
             USING (user_id)
        GROUP BY 1"""


METRICS = [
    Metric(
        "kpis",
        "all",
        (SILVER_USERS, SILVER_ORDERS, PREDICTION),
        f"""
        SELECT name, value, $as_of::TIMESTAMP AS as_of, detail FROM (
          SELECT 'customers' AS name, count(*)::DOUBLE AS value, NULL AS detail, 1 AS o FROM silver.churn_users
          UNION ALL SELECT 'customers_churned', count(*) FILTER (churn = 1), NULL, 2 FROM silver.churn_users
          UNION ALL SELECT 'churn_rate', avg(churn), NULL, 3 FROM silver.churn_users
          UNION ALL SELECT 'revenue_latest_month', coalesce(sum(amount), 0), strftime({LATEST_MONTH}, '%Y-%m'), 4
                    FROM silver.churn_orders WHERE {IN_LATEST_MONTH.format(d="creation_date", m=LATEST_MONTH)}
          UNION ALL SELECT 'customers_at_risk', count(*) FILTER (churn_prediction = 1), NULL, 5
                    FROM gold.churn_prediction
          UNION ALL SELECT 'revenue_at_risk', coalesce(sum(o.amount), 0), strftime({LATEST_MONTH}, '%Y-%m'), 6
                    FROM silver.churn_orders o JOIN gold.churn_prediction p USING (user_id)
                    WHERE p.churn_prediction = 1 AND {IN_LATEST_MONTH.format(d="o.creation_date", m=LATEST_MONTH)}
        ) ORDER BY o""",
        "Headline numbers: customers, customers churned, churn rate, revenue of the latest month (MRR), "
        "customers at risk and the latest month's revenue from them.",
    ),
    Metric(
        "revenue_by_month",
        "churn analysis",
        (SILVER_ORDERS,),
        """SELECT date_trunc('month', creation_date)::DATE AS month, sum(amount)::BIGINT AS revenue, count(*) AS orders,
                  count(amount) AS orders_with_amount
           FROM silver.churn_orders WHERE creation_date IS NOT NULL GROUP BY 1 ORDER BY 1""",
        "Revenue (sum of order amounts) per calendar month over the whole history; orders, and those with an "
        "amount (the revenue is null where none has one).",
        change=_revenue_by_month_change,
        keys=("month",),
        **REVENUE_SUMS,
        order="1",
    ),
    Metric(
        "churn_by_platform",
        "churn analysis",
        (FEATURES,),
        # Counted per (platform, label) first, then labelled: the CASE runs on a few rows, not on every
        # customer (0.06 -> 0.03 s at 100x the reference).
        f"""SELECT coalesce(platform, 'unknown') AS platform,
                  {STATUS},
                  sum(c)::BIGINT AS customers
           FROM (SELECT platform, churn, count(*) AS c FROM gold.churn_features GROUP BY ALL)
           GROUP BY ALL ORDER BY 1, 2""",
        "Customers per first platform seen, churned vs not.",
    ),
    Metric(
        "churn_by_gender",
        "churn analysis",
        (SILVER_USERS,),
        f"""SELECT coalesce(gender::VARCHAR, 'unknown') AS gender,
                  {STATUS},
                  count(*) AS customers
           FROM silver.churn_users GROUP BY ALL ORDER BY 1, 2""",
        "Customers per gender (0/1 as in the source), churned vs not.",
        change=_churn_by_gender_change,
        keys=("gender", "status"),
        sums=("customers",),
        count="customers",
        order="1, 2",
    ),
    Metric(
        "revenue_by_channel",
        "churn analysis",
        (SILVER_ORDERS, SILVER_USERS),
        """SELECT coalesce(u.canal, 'unknown') AS canal, sum(o.amount)::BIGINT AS revenue, count(*) AS orders,
                  count(o.amount) AS orders_with_amount
           FROM silver.churn_orders o JOIN silver.churn_users u USING (user_id) GROUP BY 1 ORDER BY 2 DESC""",
        "Revenue per acquisition channel (canal); orders, and those with an amount.",
        change=_revenue_by_channel_change,
        keys=("canal",),
        **REVENUE_SUMS,
        order="2 DESC",
    ),
    Metric(
        "predicted_churn_by_country",
        "churn prediction",
        (PREDICTION,),
        """SELECT country, count(*) AS customers, count(*) FILTER (churn_prediction = 1) AS at_risk,
                  round(avg(churn_prediction), 4) AS at_risk_share
           FROM gold.churn_prediction GROUP BY 1 ORDER BY 1""",
        "Customers predicted to churn, per country.",
    ),
    Metric(
        "predicted_churn_by_channel",
        "churn prediction",
        (PREDICTION,),
        """SELECT coalesce(canal, 'unknown') AS canal, count(*) AS customers,
                  count(*) FILTER (churn_prediction = 1) AS at_risk,
                  round(avg(churn_prediction), 4) AS at_risk_share
           FROM gold.churn_prediction GROUP BY 1 ORDER BY 1""",
        "Customers predicted to churn, per channel.",
    ),
    Metric(
        "predicted_churn_by_tenure",
        "churn prediction",
        (PREDICTION,),
        # Counted per creation month first (a few hundred), then per tenure: the months since creation
        # are computed per month, not per customer (0.10 -> 0.03 s at 100x the reference).
        f"""SELECT {TENURE} AS tenure, min(m) AS from_months, sum(c)::BIGINT AS customers,
                   sum(a)::BIGINT AS at_risk, round(sum(a) / sum(c), 4) AS at_risk_share
            FROM (SELECT date_diff('month', creation_month, $as_of::TIMESTAMP) AS m, count(*) AS c,
                         count(*) FILTER (churn_prediction = 1) AS a
                  FROM gold.churn_prediction GROUP BY creation_month)
            GROUP BY 1 ORDER BY 2""",
        "Customers predicted to churn, per tenure (whole months since account creation at the as-of date).",
    ),
    Metric(
        "at_risk_customers",
        "churn prediction",
        (PREDICTION,),
        f"""SELECT user_id, country, coalesce(canal, 'unknown') AS canal, platform,
                  round(churn_probability, 4) AS churn_probability, total_amount, order_count,
                  days_last_event, round(churn_probability * total_amount, 2) AS value_at_risk
           FROM gold.churn_prediction r
           WHERE churn_prediction = 1 AND churn_probability >= ({TOP_100_CUT})
           ORDER BY r.churn_probability DESC, r.total_amount DESC, r.user_id LIMIT 100""",
        "The 100 customers predicted to churn with the highest risk, then the highest value (pseudonymous ids).",
    ),
    Metric(
        "data_quality_daily",
        "data quality",
        (*BRONZE, SILVER_USERS, SILVER_ORDERS, FEATURES),
        """SELECT checked_at::DATE AS day, table_name, expectation, sum(passed)::BIGINT AS passed,
                  sum(failed)::BIGINT AS failed, sum(dropped)::BIGINT AS dropped,
                  round(sum(failed) / nullif(sum(passed) + sum(failed), 0), 6) AS failure_rate
           FROM ops.data_quality GROUP BY ALL ORDER BY 1, 2, 3""",
        "Per table, expectation and day: records passed, failed and dropped, and the failure rate.",
    ),
    Metric(
        "ingestion_daily",
        "data quality",
        BRONZE,
        """SELECT ingested_at::DATE AS day, source, count(*) AS files, sum(records)::BIGINT AS records_landed,
                  sum(rows_loaded)::BIGINT AS rows_loaded, sum(rows_rescued)::BIGINT AS rows_rescued,
                  sum(rows_quarantined)::BIGINT AS rows_quarantined,
                  round(sum(rows_rescued) / nullif(sum(rows_loaded), 0), 6) AS rescued_share,
                  count(*) FILTER (event = 'appended') AS files_appended,
                  count(*) FILTER (event IN ('rewritten', 'truncated')) AS files_new_version
           FROM bronze.ingest_manifest GROUP BY ALL ORDER BY 1, 2""",
        "Per source and day: files and records ingested, rescued (schema did not fit) and quarantined; files"
        " whose appended tail was read, and files re-read as a new version (earlier records retired).",
    ),
    Metric(
        "layer_freshness",
        "pipeline health",
        (*BRONZE, SILVER_USERS, SILVER_ORDERS, FEATURES, PREDICTION),
        """SELECT * FROM (
             SELECT 'bronze' AS layer, max(ingested_at) AS updated_at FROM bronze.ingest_manifest
             UNION ALL SELECT 'silver', max(updated_at) FROM ops.watermarks WHERE consumer LIKE 'silver.%'
             UNION ALL SELECT 'gold', max(built_at) FROM ops.gold_state
             UNION ALL SELECT 'prediction', max(scored_at) FROM gold.churn_prediction
           ) ORDER BY CASE layer WHEN 'bronze' THEN 1 WHEN 'silver' THEN 2 WHEN 'gold' THEN 3 ELSE 4 END""",
        "When each layer last took in new data (UTC).",
    ),
]
