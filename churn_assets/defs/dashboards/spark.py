"""Dashboards on Spark: each figure's SQL (``metrics.py``, written once in DuckDB's dialect)
transpiled and run on the cluster, its result a small table ``dashboard.<name>`` in the Spark
warehouse; the page draws those tables as on DuckDB.

The figures that read tables the Spark engine keeps in another shape see them as the DuckDB
engine has them: ``bronze.ingest_manifest`` is the union of the per-source manifests of the
bronze streams (``bronze/spark.py``)."""

from __future__ import annotations

from datetime import datetime

from churn_assets.defs.bronze.spark import manifest_view
from churn_assets.defs.dashboards.metrics import Metric
from churn_assets.engine import EngineResource
from churn_assets.transpile import duckdb_to_spark


def metric_spark_sql(metric: Metric, as_of: datetime) -> str:
    return duckdb_to_spark(metric.sql, named={"as_of": as_of} if "$as_of" in metric.sql else None)


def build_metric_spark(engine: EngineResource, metric: Metric, as_of: datetime) -> int:
    """``dashboard.<name>`` rebuilt on the cluster; returns its rows. One file: a figure is small,
    and its rows keep the query's order for the page."""
    table = f"dashboard.{metric.name}"
    df = engine.sql(metric_spark_sql(metric, as_of), views=manifest_view(engine))
    engine.replace_table(df.coalesce(1), table)
    return engine.table(table).count()


def write_frame_spark(engine: EngineResource, frame, table: str) -> int:
    """A small Polars frame (a figure made on the driver: run history, alerts) as a Spark table."""
    import polars as pl

    types = {pl.Utf8: "string", pl.Datetime: "timestamp_ntz", pl.Float64: "double"}
    ddl = ", ".join(f"`{name}` {types[dtype.base_type()]}" for name, dtype in frame.schema.items())
    engine.replace_table(engine.spark().createDataFrame(frame.rows(), ddl).coalesce(1), table)
    return frame.height


def figure_rows(engine: EngineResource, table: str) -> tuple[list[str], list[tuple]]:
    """(columns, rows) of a figure's table, in its stored order."""
    df = engine.table(table)
    return df.columns, [tuple(r) for r in df.collect()]


def model_versions(engine: EngineResource) -> list:
    if not engine.has_table("gold.churn_prediction"):
        return []
    return [r[0] for r in engine.table("gold.churn_prediction").select("model_version").distinct().collect()]
