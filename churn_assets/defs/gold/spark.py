"""Gold on Spark: ``churn_features_sql`` (the DuckDB engine's SQL) transpiled and run on the
cluster, rebuilt whole and switched to in one rename; the quality rules are the same SQL too."""

from __future__ import annotations

from datetime import datetime

from churn_assets.defs.gold.features import CONSUMER, GoldResult, churn_features_sql
from churn_assets.engine import GOLD_STATE_COLUMNS, EngineResource
from churn_assets.timeutil import utcnow
from churn_assets.transpile import duckdb_to_spark


def gold_spark_sql(as_of: datetime) -> str:
    return duckdb_to_spark(churn_features_sql(), named={"as_of": as_of})


def build_churn_features_spark(engine: EngineResource, as_of: datetime) -> GoldResult:
    engine.replace_table(engine.sql(gold_spark_sql(as_of)), "gold.churn_features")
    total = engine.table("gold.churn_features").count()
    engine.append_rows("ops.gold_state", GOLD_STATE_COLUMNS, [(CONSUMER, as_of, utcnow())])
    return GoldResult("full", total, total, True)
