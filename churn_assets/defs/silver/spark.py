"""Silver on Spark: the same cleaning SQL as DuckDB (``transform.USERS_SELECT``,
``ORDERS_SELECT``, transpiled), latest arrival per key wins.

Rebuilt whole from bronze at each run and switched to in one rename (``engine.replace_table``):
on a cluster a full pass over bronze is one parallel scan, and a rebuild has no watermark
to keep in step with the table. Latest wins as on DuckDB: per key, the row of the latest
file id, then the latest line of that file.
"""

from __future__ import annotations

from churn_assets.defs.silver.transform import (
    ORDERS_DROPPED,
    ORDERS_FLAGGED,
    ORDERS_SELECT,
    ORDERS_VALID,
    USERS_DROPPED,
    USERS_FLAGGED,
    USERS_SELECT,
    USERS_VALID,
    SilverResult,
)
from churn_assets.engine import WATERMARK_COLUMNS, EngineResource
from churn_assets.timeutil import utcnow
from churn_assets.transpile import duckdb_to_spark

BUILDS = {
    # target: (bronze source, key, valid condition, select, expectations -> condition of a dropped row,
    #          expectations -> condition of a kept row that fails it)
    "silver.churn_users": (
        "bronze.churn_users_bronze",
        "id",
        USERS_VALID,
        USERS_SELECT,
        USERS_DROPPED,
        USERS_FLAGGED,
    ),
    "silver.churn_orders": (
        "bronze.churn_orders_bronze",
        "id",
        ORDERS_VALID,
        ORDERS_SELECT,
        ORDERS_DROPPED,
        ORDERS_FLAGGED,
    ),
}


# The pseudonym key reaches the SQL as a column of a one-row frame joined in, never as a
# literal: Spark prints a plan's literals in its UI, its event log and its errors.
KEY_COLUMN = "_pseudonym_key"


def silver_spark_sql(target: str, view: str) -> str:
    """The Spark SQL of one silver table over ``view`` (its latest valid bronze rows, with the
    key column ``KEY_COLUMN`` where the select pseudonymizes)."""
    from sqlglot import exp

    _, _, _, select, _, _ = BUILDS[target]
    return duckdb_to_spark(select.format(new=view), positional=[exp.column(KEY_COLUMN)] if "?" in select else ())


def build_silver_spark(engine: EngineResource, target: str, pseudonym_key: str | None = None) -> SilverResult:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    source, key, valid, _, drops, flags = BUILDS[target]
    before = engine.table(target).count() if engine.has_table(target) else 0
    bronze = engine.table(source)
    counts = bronze.agg(
        F.count("*").alias("read"),
        *[F.count(F.when(F.expr(cond), 1)).alias(name) for name, cond in drops.items()],
        *[F.count(F.when(F.expr(f"({valid}) AND ({cond})"), 1)).alias(name) for name, cond in flags.items()],
        F.max("_file_id").alias("file_id"),
    ).first()
    latest = (
        bronze.where(valid)
        .withColumn(
            "_latest",
            F.row_number().over(Window.partitionBy(key).orderBy(F.desc("_file_id"), F.desc("_row_no"))),
        )
        .where("_latest = 1")
        .drop("_latest")
    )
    if "?" in BUILDS[target][3]:
        key = latest.sparkSession.createDataFrame([(pseudonym_key,)], f"{KEY_COLUMN} string")
        latest = latest.crossJoin(F.broadcast(key))
    view = f"_silver_latest_{target.split('.')[1]}"
    latest.createOrReplaceTempView(view)
    engine.replace_table(latest.sparkSession.sql(silver_spark_sql(target, view)), target)
    total = engine.table(target).count()
    engine.append_rows("ops.watermarks", WATERMARK_COLUMNS, [(target, source, counts["file_id"] or 0, utcnow())])
    return SilverResult(
        target,
        counts["read"],
        total,
        total - before,
        {name: counts[name] for name in drops},
        total,
        {name: counts[name] for name in flags},
    )
