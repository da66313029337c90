"""Silver assets: cleaned, typed, pseudonymized; latest version of each key wins."""

import dagster as dg

from churn_assets.defs.silver.transform import SilverResult, build_churn_orders, build_churn_users
from churn_assets.engine import EngineResource
from churn_assets.metadata import table_metadata
from churn_assets.resources import PipelineSettingsResource, WarehouseResource
from churn_assets.warehouse import record_quality

# A key expectation drops rows, as the reference's ON VIOLATION DROP ROW; the check
# warns when more than this share of the run's rows were dropped.
MAX_DROP_RATE = 0.10


def _result(context, con, res: SilverResult, engine: EngineResource | None = None) -> dg.MaterializeResult:
    rows = [(name, res.rows_read - dropped, dropped, dropped, None) for name, dropped in res.dropped.items()]
    rows += [(name, res.rows_read - failed, failed, 0, "kept, value null") for name, failed in res.flagged.items()]
    if engine is not None:  # Spark: the same quality rows, in the Spark warehouse's ops.data_quality
        engine.record_quality(context.run.run_id, "silver", res.table, rows)
        metadata = {"dagster/row_count": res.rows_total, "engine": "spark"}
    else:
        record_quality(con, context.run.run_id, "silver", res.table, rows)
        metadata = table_metadata(con, res.table)
    rate = sum(res.dropped.values()) / res.rows_read if res.rows_read else 0.0
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "rows_new": res.rows_new,
            "rows_read": res.rows_read,
            "rows_upserted": res.rows_written,
            **{f"dropped_{k}": v for k, v in res.dropped.items()},
            **{f"nulled_{k}": v for k, v in res.flagged.items()},
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="valid_keys",
                passed=rate <= MAX_DROP_RATE,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "rows_read": res.rows_read,
                    "drop_rate": rate,
                    **{f"dropped_{k}": v for k, v in res.dropped.items()},
                },
            )
        ],
    )


@dg.asset(
    key=["silver", "churn_users"],
    deps=[["bronze", "churn_users_bronze"]],
    group_name="silver",
    kinds={"duckdb"},
    pool="duckdb_warehouse",
    description="Customers: id -> user_id, e-mail pseudonymized with a keyed hash, timestamps parsed, names "
    "capitalized, gender/age_group/churn as integers (null and counted where a number is not a 32-bit one: NaN, too "
    "large); rows without user_id dropped and counted. Latest arrival wins.",
    check_specs=[
        dg.AssetCheckSpec(
            "valid_keys", asset=["silver", "churn_users"], description="rows without user_id are dropped (counted)"
        )
    ],
)
def churn_users(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    pipeline_settings: PipelineSettingsResource,
    engine: EngineResource,
):
    if engine.is_spark:
        from churn_assets.defs.silver.spark import build_silver_spark

        res = build_silver_spark(engine, "silver.churn_users", pipeline_settings.email_pseudonym_key())
        return _result(context, None, res, engine)
    with warehouse.get_connection() as con:
        return _result(context, con, build_churn_users(con, pipeline_settings.email_pseudonym_key()))


@dg.asset(
    key=["silver", "churn_orders"],
    deps=[["bronze", "churn_orders_bronze"]],
    group_name="silver",
    kinds={"duckdb"},
    pool="duckdb_warehouse",
    description="Orders: amount and item_count as integers (null and counted where a number is not a 32-bit one), "
    "id -> order_id, transaction_date parsed into creation_date; rows without order_id or user_id dropped and "
    "counted. An order seen twice counts once.",
    check_specs=[
        dg.AssetCheckSpec(
            "valid_keys",
            asset=["silver", "churn_orders"],
            description="rows without order_id or user_id are dropped (counted)",
        )
    ],
)
def churn_orders(context: dg.AssetExecutionContext, warehouse: WarehouseResource, engine: EngineResource):
    if engine.is_spark:
        from churn_assets.defs.silver.spark import build_silver_spark

        return _result(context, None, build_silver_spark(engine, "silver.churn_orders"), engine)
    with warehouse.get_connection() as con:
        return _result(context, con, build_churn_orders(con))


assets = [churn_users, churn_orders]
