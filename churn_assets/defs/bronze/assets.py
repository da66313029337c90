"""Bronze assets: landing files -> ``bronze.<table>``, each file exactly once."""

from pathlib import Path

import dagster as dg

from churn_assets.defs.bronze.ingest import ingest_source
from churn_assets.engine import EngineResource
from churn_assets.landing import ACCEPTED, SPECS, unrecognized_files
from churn_assets.metadata import table_metadata
from churn_assets.ops.alerts import AlertsResource
from churn_assets.resources import LandingZoneResource, WarehouseResource
from churn_assets.warehouse import record_quality

DESCRIPTIONS = {
    "users": "Customer profiles (CRM) as landed: newline-delimited JSON from landing/users.",
    "orders": "Orders (ERP) as landed: newline-delimited JSON from landing/orders.",
    "events": "App and web events as landed: CSV from landing/events. Read directly by gold, like the reference.",
}


def _check_results(loaded: int, rescued: int, quarantined: int) -> list[dg.AssetCheckResult]:
    """The two bronze checks of one run, on either engine (warn only, as the reference)."""
    return [
        dg.AssetCheckResult(
            check_name="correct_schema",
            passed=rescued == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"passed": loaded - rescued, "failed": rescued},
        ),
        dg.AssetCheckResult(
            check_name="records_parseable",
            passed=quarantined == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"loaded": loaded, "quarantined": quarantined},
        ),
    ]


def _unread_files(context: dg.AssetExecutionContext, landing_root: str, source: str) -> dict:
    """Files of the source folder the allow-list leaves unread: a warning naming them (names
    only, no content) and the step's metadata, so that no file is skipped silently."""
    unread = unrecognized_files(Path(landing_root), source)
    if unread:
        shown = ", ".join(unread[:20]) + (f" and {len(unread) - 20} more" if len(unread) > 20 else "")
        context.log.warning(f"{source}: {len(unread)} files not named as data files ({ACCEPTED}), not read: {shown}")
    return {"files_unrecognized": len(unread), "files_unrecognized_names": dg.MetadataValue.json(unread[:100])}


def _bronze_asset(source: str) -> dg.AssetsDefinition:
    spec = SPECS[source]

    @dg.asset(
        key=["bronze", spec.table],
        group_name="bronze",
        kinds={"duckdb", "python"},
        pool="duckdb_warehouse",
        description=DESCRIPTIONS[source]
        + " Incremental: only files the manifest has not seen, the appended tail of a file it has, or a new"
        " version of a changed file (the earlier version's records retired); records that do not fit the schema"
        " keep their raw text in _rescued_data; unparseable records go to bronze.quarantine.",
        check_specs=[
            dg.AssetCheckSpec(
                "correct_schema",
                asset=["bronze", spec.table],
                description="_rescued_data IS NULL (warn only, as the reference)",
            ),
            dg.AssetCheckSpec(
                "records_parseable",
                asset=["bronze", spec.table],
                description="no landed record of this run went to quarantine (warn only)",
            ),
        ],
    )
    def _asset(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        landing: LandingZoneResource,
        alerts: AlertsResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        if engine.is_spark:
            return _spark_bronze(context, engine, landing, source)
        unread = _unread_files(context, landing.root, source)
        with warehouse.get_connection() as con:
            result = ingest_source(
                con,
                Path(landing.root),
                source,
                context.run.run_id,
                settle_seconds=landing.settle_seconds,
                batch_bytes=landing.batch_bytes,
            )
            fit = result.rows_loaded - result.rows_rescued
            record_quality(
                con,
                context.run.run_id,
                "bronze",
                f"bronze.{spec.table}",
                [
                    ("correct_schema", fit, result.rows_rescued, 0, None),
                    ("records_parseable", result.rows_loaded, result.rows_quarantined, result.rows_quarantined, None),
                ],
            )
            metadata = table_metadata(con, f"bronze.{spec.table}")
        context.log.info(
            f"{source}: {result.files_loaded} files loaded, {result.files_duplicate} duplicate, "
            f"{result.rows_loaded} rows, {result.rows_quarantined} quarantined, {result.files_appended} appended to, "
            f"{result.files_new_version} new versions ({result.rows_retired} rows retired)"
        )
        if result.changes:
            # Files are immutable by contract: a change is worth a warning, once per run and source.
            alerts.raise_alert(
                f"file_changed_{source}",
                context.job_name,
                context.run.run_id,
                f"{len(result.changes)} landed {source} file(s) changed after ingestion: "
                + "; ".join(result.changes[:10]),
                log=context.log,
            )
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "rows_new": result.rows_loaded,
                "files_ingested": result.files_loaded + result.files_quarantined + result.files_empty,
                "files_duplicate": result.files_duplicate,
                "records_landed": result.records,
                "rows_rescued": result.rows_rescued,
                "records_quarantined": result.rows_quarantined,
                "files_appended": result.files_appended,
                "files_new_version": result.files_new_version,
                "rows_retired": result.rows_retired,
                "files_waiting": result.files_waiting,
                **unread,
            },
            check_results=_check_results(result.rows_loaded, result.rows_rescued, result.rows_quarantined),
        )

    return _asset


def _spark_bronze(
    context: dg.AssetExecutionContext, engine: EngineResource, landing: LandingZoneResource, source: str
) -> dg.MaterializeResult:
    from churn_assets.defs.bronze.spark import ingest_source_spark

    spec = SPECS[source]
    table = f"bronze.{spec.table}"
    result = ingest_source_spark(
        engine.spark(), engine.spark_warehouse, landing.root, source, context.run.run_id, landing.batch_bytes
    )
    fit = result.rows_loaded - result.rows_rescued
    engine.record_quality(
        context.run.run_id,
        "bronze",
        table,
        [
            ("correct_schema", fit, result.rows_rescued, 0, None),
            ("records_parseable", result.rows_loaded, result.rows_quarantined, result.rows_quarantined, None),
        ],
    )
    context.log.info(
        f"{source} (spark): {result.files_loaded} files loaded, {result.files_duplicate} duplicate, "
        f"{result.files_quarantined} quarantined, {result.rows_loaded} rows, {result.rows_quarantined} quarantined"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": engine.table(table).count(),
            "rows_new": result.rows_loaded,
            "files_ingested": result.files_loaded + result.files_quarantined,
            "files_duplicate": result.files_duplicate,
            "rows_rescued": result.rows_rescued,
            "records_quarantined": result.rows_quarantined,
            "engine": "spark",
            **_unread_files(context, landing.root, source),
        },
        check_results=_check_results(result.rows_loaded, result.rows_rescued, result.rows_quarantined),
    )


churn_users_bronze = _bronze_asset("users")
churn_orders_bronze = _bronze_asset("orders")
churn_app_events = _bronze_asset("events")

assets = [churn_users_bronze, churn_orders_bronze, churn_app_events]
