"""Gold ``churn_features`` and its blocking quality check."""

import dagster as dg

from churn_assets.defs.gold.changes import changed_since, read_up_to
from churn_assets.defs.gold.features import blocking_failures, build_churn_features, gold_quality
from churn_assets.engine import EngineResource
from churn_assets.metadata import table_metadata
from churn_assets.resources import PipelineSettingsResource, WarehouseResource
from churn_assets.warehouse import record_quality, scalar, table_exists


@dg.asset(
    key=["gold", "churn_features"],
    deps=[["silver", "churn_users"], ["silver", "churn_orders"], ["bronze", "churn_app_events"]],
    group_name="gold",
    kinds={"duckdb"},
    pool="duckdb_warehouse",
    description="One row per customer with at least one order and one event: the customer, order aggregates, "
    "event aggregates (first platform, events, sessions, last event) and day counts to the as-of instant "
    "(CHURN_AS_OF, default now).",
)
def churn_features(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    pipeline_settings: PipelineSettingsResource,
    engine: EngineResource,
):
    as_of = pipeline_settings.as_of_datetime()
    if engine.is_spark:
        from churn_assets.defs.gold.spark import build_churn_features_spark

        result = build_churn_features_spark(engine, as_of)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": result.rows_total,
                "build_mode": result.mode,
                "as_of": as_of.isoformat(),
                "engine": "spark",
            }
        )
    with warehouse.get_connection() as con:
        before = (
            scalar(con, "SELECT count(*) FROM gold.churn_features")
            if table_exists(con, "gold", "churn_features")
            else 0
        )
        result = build_churn_features(con, as_of)
        metadata = table_metadata(con, "gold.churn_features")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "rows_new": result.rows_total - before,
            "customers_recomputed": result.customers_recomputed,
            "build_mode": result.mode,
            "day_counts_refreshed": result.day_counts_refreshed,
            "as_of": as_of.isoformat(),
        }
    )


# The check's watermark on gold's builds (``changes.py``).
CHECK_READER = "gold.churn_features_valid"


@dg.asset_check(
    asset=churn_features,
    blocking=True,
    description="One row per customer and sane values (counts >= 1, sessions <= events, a binary label where "
    "there is one), on the customers gold rebuilt since the check last ran without a blocking failure (every "
    "customer after a full build or a day-count refresh, and the whole table once any of them fails a rule: a "
    "warning is reported with the rows that bring it, not again every cycle). Blocking: a failure stops the "
    "cycle before the model reads gold. Amounts >= 0 and day counts >= 0 warn (a refund, a date ahead of the "
    "as-of), and stop the cycle only when most day counts are negative.",
)
def churn_features_valid(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, engine: EngineResource
) -> dg.AssetCheckResult:
    if engine.is_spark:  # the same rules, transpiled
        results = gold_quality(engine.cursor())
        engine.record_quality(
            context.op_execution_context.run_id,
            "gold",
            "gold.churn_features",
            [(name, p, f, 0, None) for name, (p, f) in results.items()],
        )
        return _check_result(results)
    with warehouse.get_connection() as con:
        # The customers gold's builds rebuilt since this check last ran without stopping the cycle (~1 % of
        # them hourly), every customer after a full build or a day-count refresh. A failure among them is
        # judged on the whole table, as a full check judges it (the as-of rule counts every customer).
        only = changed_since(con, CHECK_READER)
        results = gold_quality(con, only)
        if only is not None and any(failed for _, failed in results.values()):
            only, results = None, gold_quality(con)
        record_quality(
            con,
            context.op_execution_context.run_id,
            "gold",
            "gold.churn_features",
            [(name, passed, failed, 0, None) for name, (passed, failed) in results.items()],
        )
        if not blocking_failures(results):  # what stopped the cycle is checked again next time
            read_up_to(con, CHECK_READER)
    return _check_result(results, "every customer" if only is None else "the customers rebuilt since the last check")


def _check_result(results: dict[str, tuple[int, int]], checked: str = "every customer") -> dg.AssetCheckResult:
    failed = {name: f for name, (_, f) in results.items() if f}
    blocking = blocking_failures(results)
    # A blocking check stops what follows only on an ERROR: data that breaks a data rule warns.
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            **{name: dg.MetadataValue.int(f) for name, (_, f) in results.items()},
            "checked": checked,
            "rows_checked": sum(results["one_row_per_customer"]),
        },
        description="all expectations hold"
        if not failed
        else f"failed: {failed}" + ("" if blocking else " (rows of landed data: the cycle goes on)"),
    )


assets = [churn_features]
asset_checks = [churn_features_valid]
