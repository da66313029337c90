"""Dashboard assets: one table per figure (in the DuckDB file, or the Spark warehouse with
CHURN_ENGINE=spark: ``spark.py``), and the page that draws them all."""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from churn_assets.defs.dashboards.metrics import METRICS, Metric, followed_sql
from churn_assets.defs.dashboards.page import chart_specs, markdown_image, png_of, render
from churn_assets.defs.silver import changes as silver_changes
from churn_assets.engine import EngineResource
from churn_assets.files import write_atomic
from churn_assets.metadata import previewable, table_metadata
from churn_assets.ops.alerts import AlertsResource
from churn_assets.resources import PipelineSettingsResource, WarehouseResource
from churn_assets.warehouse import registered, table_exists, transaction

# The charts whose PNG goes into the chart previews' metadata, for the Dagster UI.
KEY_CHARTS = ["revenue_by_month", "churn_by_platform", "predicted_churn_by_country", "data_quality_daily"]
# How old the previews may get before a cycle draws them again (a new as-of date always does):
# drawing them is most of the page's cost (0.8 s at any scale: vl-convert's start, then each PNG),
# and the page itself, what people open, is drawn every cycle.
PREVIEWS_EVERY_HOURS = 6

# How often the dashboards follow new data outside the hourly cycle (continuous mode): they
# are slow-moving, and fresh predictions must not wait for them.
REFRESH_CRON = "*/15 * * * *"


def refresh_condition(reads_warehouse: bool = True, cron: str = REFRESH_CRON) -> dg.AutomationCondition:
    """At most once per tick of ``cron``, and only once something the asset reads has changed
    since it was last refreshed; not while a run is writing it (a cycle that writes it anyway
    counts as the refresh). A figure that reads nothing in the warehouse (run history, alerts)
    refreshes at every tick."""
    due = dg.AutomationCondition.cron_tick_passed(cron).since_last_handled()
    if reads_warehouse:
        due = due & dg.AutomationCondition.any_deps_updated().since_last_handled()
    return (due & _not_in_progress()).with_label(f"every {cron}, once its inputs changed, not in progress")


def follows_inputs() -> dg.AutomationCondition:
    """Whenever a figure it draws was refreshed (or is about to be, in the same run)."""
    return (dg.AutomationCondition.any_deps_updated().since_last_handled() & _not_in_progress()).with_label(
        "after its figures, not in progress"
    )


def _not_in_progress() -> dg.AutomationCondition:
    # Not "nor its inputs": in continuous mode some input is nearly always being written, and
    # waiting for a gap split one refresh into several runs, each queued ahead of landing runs.
    # The run queue (one run at a time) already makes a refresh read after the write finishes.
    return ~dg.AutomationCondition.in_progress()


def _follow(con, metric: Metric) -> bool:
    """Move the figure's table by what silver changed since it last read it, when it can; False when
    it must be computed anew (no such figure, not computed yet, or silver cannot say what changed)."""
    if not metric.follows or not table_exists(con, "dashboard", metric.name):
        return False
    seen = {table: silver_changes.since(con, metric.reader, table) for table in metric.follows}
    if None in seen.values():
        return False
    con.execute(f"CREATE OR REPLACE TABLE dashboard.{metric.name} AS {followed_sql(metric, seen)}")
    return True


def _read_up_to(con, metric: Metric) -> None:
    """The figure has read silver as it is now. Readers no figure is any longer (an earlier definition,
    a figure removed) are forgotten: they would keep silver's old images from being dropped."""
    current = [m.reader for m in METRICS if m.follows]
    con.execute(
        f"""DELETE FROM ops.watermarks WHERE consumer LIKE 'dashboard.%' AND source_table LIKE 'silver.%'
            AND consumer NOT IN ({", ".join("?" * len(current))})""",
        current,
    )
    for table in metric.follows:
        silver_changes.read_up_to(con, metric.reader, table)


def _metric_asset(metric: Metric) -> dg.AssetsDefinition:
    @dg.asset(
        key=["dashboard", metric.name],
        deps=[list(d) for d in metric.deps],
        group_name="dashboard",
        kinds={"duckdb"},
        pool="duckdb_warehouse",
        automation_condition=refresh_condition(),
        description=f"{metric.description} ({metric.dashboard}; table dashboard.{metric.name})",
    )
    def _asset(
        warehouse: WarehouseResource, pipeline_settings: PipelineSettingsResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        if engine.is_spark:
            from churn_assets.defs.dashboards.spark import build_metric_spark

            rows = build_metric_spark(engine, metric, pipeline_settings.as_of_datetime())
            return dg.MaterializeResult(metadata={"dagster/row_count": rows, "engine": "spark"})
        with warehouse.get_connection() as con:
            with transaction(con):
                followed = _follow(con, metric)
                if not followed:
                    con.execute(
                        f"CREATE OR REPLACE TABLE dashboard.{metric.name} AS {metric.sql}",
                        {"as_of": pipeline_settings.as_of_datetime()} if "$as_of" in metric.sql else None,
                    )
                if metric.follows:
                    _read_up_to(con, metric)
            mode = {"mode": "changes" if followed else "whole"} if metric.follows else {}
            return dg.MaterializeResult(metadata={**table_metadata(con, f"dashboard.{metric.name}"), **mode})

    return _asset


@dg.asset(
    key=["dashboard", "pipeline_runs"],
    automation_condition=refresh_condition(reads_warehouse=False),
    group_name="dashboard",
    kinds={"duckdb", "dagster"},
    pool="duckdb_warehouse",
    description="Run history from the Dagster instance: job, status, start, duration of the latest 200 runs "
    "(pipeline health; table dashboard.pipeline_runs).",
)
def pipeline_runs(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, engine: EngineResource
) -> dg.MaterializeResult:
    import polars as pl

    now = datetime.now(timezone.utc).timestamp()
    rows = []
    for record in context.instance.get_run_records(limit=200):
        run = record.dagster_run
        start = record.start_time or record.create_timestamp.timestamp()
        end = record.end_time
        rows.append(
            {
                "run_id": run.run_id,
                "job_name": run.job_name,
                "status": run.status.value,
                "started_at": datetime.fromtimestamp(start, timezone.utc).replace(tzinfo=None),
                "ended_at": datetime.fromtimestamp(end, timezone.utc).replace(tzinfo=None) if end else None,
                "duration_seconds": round((end or now) - start, 3),
            }
        )
    frame = pl.DataFrame(
        rows,
        schema={
            "run_id": pl.Utf8,
            "job_name": pl.Utf8,
            "status": pl.Utf8,
            "started_at": pl.Datetime,
            "ended_at": pl.Datetime,
            "duration_seconds": pl.Float64,
        },
    )
    if engine.is_spark:
        return _spark_frame(engine, frame.sort("started_at"), "dashboard.pipeline_runs")
    with warehouse.get_connection() as con:
        with transaction(con), registered(con, "_runs", frame):
            con.execute("CREATE OR REPLACE TABLE dashboard.pipeline_runs AS SELECT * FROM _runs ORDER BY started_at")
        return dg.MaterializeResult(metadata=table_metadata(con, "dashboard.pipeline_runs"))


@dg.asset(
    key=["dashboard", "alerts"],
    automation_condition=refresh_condition(reads_warehouse=False),
    group_name="dashboard",
    kinds={"duckdb", "sqlite"},
    pool="duckdb_warehouse",
    description="Alerts raised by the cycle's monitoring (failed and abnormally long runs, cadence switches), "
    "copied from the alerts store the sensors write (table dashboard.alerts).",
)
def alerts_figure(warehouse: WarehouseResource, alerts: AlertsResource, engine: EngineResource) -> dg.MaterializeResult:
    import polars as pl

    rows = alerts.store().all()[:200]
    frame = pl.DataFrame(
        [{k: r[k] for k in ("raised_at", "kind", "job_name", "run_id", "reason", "link", "state")} for r in rows],
        schema={
            "raised_at": pl.Utf8,
            "kind": pl.Utf8,
            "job_name": pl.Utf8,
            "run_id": pl.Utf8,
            "reason": pl.Utf8,
            "link": pl.Utf8,
            "state": pl.Utf8,
        },  # delivery: pending, delivered or expired
    ).with_columns(pl.col("raised_at").str.to_datetime(strict=False))
    if engine.is_spark:
        return _spark_frame(engine, frame.sort("raised_at", descending=True), "dashboard.alerts")
    with warehouse.get_connection() as con:
        with transaction(con), registered(con, "_alerts", frame):
            con.execute("CREATE OR REPLACE TABLE dashboard.alerts AS SELECT * FROM _alerts ORDER BY raised_at DESC")
        return dg.MaterializeResult(metadata=table_metadata(con, "dashboard.alerts"))


def _spark_frame(engine: EngineResource, frame, table: str) -> dg.MaterializeResult:
    from churn_assets.defs.dashboards.spark import write_frame_spark

    return dg.MaterializeResult(
        metadata={"dagster/row_count": write_frame_spark(engine, frame, table), "engine": "spark"}
    )


metric_assets = [_metric_asset(m) for m in METRICS]
FIGURES = [m.name for m in METRICS] + ["pipeline_runs", "alerts"]


def _figures(warehouse: WarehouseResource, engine: EngineResource, names: list[str] = FIGURES) -> dict[str, list[dict]]:
    """The figures' rows as the page shows them (only the columns that may leave the warehouse)."""
    if engine.is_spark:  # the figures' tables are small: each comes to the driver whole
        from churn_assets.defs.dashboards.spark import figure_rows

        tables = {name: figure_rows(engine, f"dashboard.{name}") for name in names}
    else:
        with warehouse.get_connection() as con:
            tables = {}
            for name in names:
                cur = con.execute(f"SELECT * FROM dashboard.{name}")
                tables[name] = ([d[0] for d in cur.description], cur.fetchall())
    fig = {}
    for name, (cols, rows) in tables.items():
        shown = previewable(cols, f"dashboard.{name}")  # the page leaves the warehouse
        fig[name] = [{c: v for c, v in zip(cols, row) if c in shown} for row in rows]
    return fig


def _model_version(warehouse: WarehouseResource, engine: EngineResource) -> str:
    """The model versions that scored the predictions, as the page and the previews name them."""
    if engine.is_spark:
        from churn_assets.defs.dashboards.spark import model_versions

        versions = model_versions(engine)
    else:
        with warehouse.get_connection() as con:
            versions = [
                v for (v,) in con.execute("SELECT DISTINCT model_version FROM gold.churn_prediction").fetchall()
            ]
    return ", ".join(sorted(str(v) for v in versions)) or "none"


@dg.asset(
    key=["dashboard", "page"],
    automation_condition=follows_inputs(),
    deps=[["dashboard", name] for name in FIGURES],
    group_name="dashboard",
    kinds={"html"},
    description="The dashboards as one self-contained page, $CHURN_HOME/dashboard/index.html: every figure drawn "
    "(Vega-Lite, inlined), the as-of time, the production model's version, each layer's freshness. Opens from "
    "disk with no network and no database.",
)
def dashboard_page(
    warehouse: WarehouseResource, pipeline_settings: PipelineSettingsResource, engine: EngineResource
) -> dg.MaterializeResult:
    model_version = _model_version(warehouse, engine)
    page = render(
        _figures(warehouse, engine),
        as_of=pipeline_settings.as_of_datetime(),
        model_version=model_version,
        generated_at=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    out = Path(pipeline_settings.home) / "dashboard" / "index.html"
    write_atomic(out, page)  # a reader never sees half a page
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "url": dg.MetadataValue.url(out.as_uri()),
            "bytes": len(page.encode()),
            "figures": len(FIGURES),
            "model_version": model_version,
        }
    )


PREVIEWS_KEY = dg.AssetKey(["dashboard", "chart_previews"])


def previews_due(
    last: dg.AssetMaterialization | None, last_at: float | None, as_of: datetime, model_version: str, now: float
) -> str:
    """Why the previews are drawn now, or "" to keep the last ones: none yet, a new as-of date, a
    new model scoring the predictions, or older than ``PREVIEWS_EVERY_HOURS``."""
    if last is None or last_at is None:
        return "no previews yet"
    drawn_for, drawn_with = last.metadata.get("as_of"), last.metadata.get("model_version")
    if drawn_for is None or drawn_with is None:
        return "no as-of date or model version recorded"
    if str(drawn_for.value)[:10] != as_of.date().isoformat():
        return "a new as-of date"
    if str(drawn_with.value) != model_version:
        return "a new model version"
    if now - last_at >= PREVIEWS_EVERY_HOURS * 3600:
        return f"older than {PREVIEWS_EVERY_HOURS} hours"
    return ""


@dg.asset(
    key=PREVIEWS_KEY,
    automation_condition=follows_inputs(),
    deps=[["dashboard", name] for name in KEY_CHARTS],
    group_name="dashboard",
    kinds={"png"},
    output_required=False,  # a cycle keeps the last previews while they are recent
    description=f"PNG images of the key charts ({', '.join(KEY_CHARTS)}) in this asset's metadata, for the "
    f"Dagster UI: drawn again when the last ones are {PREVIEWS_EVERY_HOURS} hours old, the as-of date changed or "
    "another model scored the predictions (the page itself is drawn every cycle).",
)
def chart_previews(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    pipeline_settings: PipelineSettingsResource,
    engine: EngineResource,
):
    as_of = pipeline_settings.as_of_datetime()
    model_version = _model_version(warehouse, engine)
    event = context.instance.get_latest_materialization_event(PREVIEWS_KEY)
    last = event.asset_materialization if event else None
    now = datetime.now(timezone.utc).timestamp()
    why = previews_due(last, event.timestamp if event else None, as_of, model_version, now)
    if not why:
        context.log.info(f"chart previews drawn {datetime.fromtimestamp(event.timestamp, timezone.utc):%H:%M} UTC kept")
        return
    # The figures are read only to be drawn; only the key charts are.
    specs = chart_specs({**{name: [] for name in FIGURES}, **_figures(warehouse, engine, KEY_CHARTS)})
    images = {f"chart_{name}": dg.MetadataValue.md(markdown_image(png_of(specs[name]), name)) for name in KEY_CHARTS}
    yield dg.MaterializeResult(
        metadata={"as_of": as_of.isoformat(), "model_version": model_version, "drawn_because": why, **images}
    )


assets = [*metric_assets, pipeline_runs, alerts_figure, dashboard_page, chart_previews]
