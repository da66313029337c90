"""A short, human summary of the warehouse after a cycle (printed by ``churn run``)."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from churn_assets.landing import ACCEPTED, unrecognized_files
from churn_assets.settings import SOURCES, Settings
from churn_assets.warehouse import scalar, table_exists

LAYERS = [
    ("bronze", ["churn_users_bronze", "churn_orders_bronze", "churn_app_events", "quarantine"]),
    ("silver", ["churn_users", "churn_orders"]),
    ("gold", ["churn_features", "churn_prediction"]),
]


def campaign_line(con) -> str:
    """The last campaign run in words, saying so when the model's copy was missing."""
    from churn_assets.defs.campaigns.run import degradation_text

    run_id, messages, template = con.execute(
        """WITH last AS (SELECT run_id FROM campaigns.retention_messages ORDER BY created_at DESC LIMIT 1)
           SELECT any_value(run_id), count(*), count(*) FILTER (status = 'ready' AND generator = 'template')
           FROM campaigns.retention_messages WHERE run_id = (SELECT run_id FROM last)"""
    ).fetchall()[0]
    errors = {}
    if scalar(
        con,
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'campaigns' "
        "AND table_name = 'retention_messages' AND column_name = 'model_error'",
    ):
        errors = dict(
            con.execute(
                "SELECT model_error, count(*) FROM campaigns.retention_messages "
                "WHERE run_id = ? AND model_error IS NOT NULL GROUP BY 1",
                [run_id],
            ).fetchall()
        )
    if errors:
        return f"campaign   last run DEGRADED: {degradation_text(errors, messages, template)}"
    if messages and template == messages:
        return f"campaign   last run {messages:,} messages, from the offline templates (no ANTHROPIC_API_KEY)"
    return f"campaign   last run {messages:,} messages, all with the model's copy"


SHOWN = 10  # files listed by name; the rest are counted


def quarantine_lines(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[str]:
    """One line per file with records in quarantine, or not loaded at all, and why
    (``run_id``: only what that run ingested)."""
    where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    rows = con.execute(
        f"""SELECT path, reason, n FROM (
              SELECT source_file AS path, reason, count(*) AS n, min(file_id) AS f
              FROM bronze.quarantine {where} GROUP BY ALL
              UNION ALL
              SELECT path, status || coalesce(': ' || detail, ''), 0, file_id
              FROM bronze.ingest_manifest {where + (" AND" if where else "WHERE")} status NOT IN ('loaded', 'empty')
                AND (status <> 'quarantined' OR path NOT IN (SELECT source_file FROM bronze.quarantine))
            ) ORDER BY f, path, n DESC, reason""",
        params * 2,
    ).fetchall()
    by_file: dict[str, list[str]] = {}
    for path, reason, n in rows:
        by_file.setdefault(path, []).append(f"{n:,} × {reason}" if n else reason)
    lines = [f"  {path}: {'; '.join(reasons)}" for path, reasons in list(by_file.items())[:SHOWN]]
    if len(by_file) > SHOWN:
        lines.append(f"  ... and {len(by_file) - SHOWN} more files (bronze.quarantine, bronze.ingest_manifest)")
    return lines


def stray_files(root: Path) -> list[Path]:
    """Files in the landing folder but outside its source folders: never ingested."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in SOURCES)


def _duckdb_lines(con, champion_auc: float | None, run_id: str | None, path: Path) -> list[str]:
    lines = [f"warehouse  {path}"]
    for schema, tables in LAYERS:
        counts = [
            f"{t} {scalar(con, f'SELECT count(*) FROM {schema}.{t}'):,}" for t in tables if table_exists(con, schema, t)
        ]
        lines.append(f"  {schema:<7} " + ", ".join(counts))
    files = con.execute(
        "SELECT status, count(*) FROM bronze.ingest_manifest GROUP BY status ORDER BY status"
    ).fetchall()
    lines.append("  files   " + ", ".join(f"{s} {n}" for s, n in files))
    problems = quarantine_lines(con, run_id)
    if problems:
        scope = "this run's files" if run_id else "files"
        lines.append(f"  {scope} with quarantined or refused records (file: records × reason):")
        lines += ["  " + line for line in problems]
    if table_exists(con, "gold", "churn_prediction"):
        version, at_risk = con.execute(
            "SELECT any_value(model_version), count(*) FILTER (churn_prediction = 1) FROM gold.churn_prediction"
        ).fetchall()[0]
        auc = f", holdout ROC AUC {champion_auc:.3f}" if champion_auc is not None else ""
        lines.append(f"model      churn_model v{version} (champion{auc}); customers at risk {at_risk:,}")
    return lines


def spark_lines(settings: Settings, champion_auc: float | None) -> list[str]:
    """The layers' counts and the model line read from the Spark warehouse (CHURN_ENGINE=spark):
    after ``churn run`` this process's session is still open, so it costs a few small jobs."""
    from pyspark.sql import functions as F

    from churn_assets.engine import EngineResource

    engine = EngineResource.from_settings(settings)
    lines = [f"warehouse  {settings.spark_warehouse} (Spark, {settings.spark_master})"]
    for schema, tables in LAYERS:
        counts = [f"{t} {engine.table(f'{schema}.{t}').count():,}" for t in tables if engine.has_table(f"{schema}.{t}")]
        lines.append(f"  {schema:<7} " + ", ".join(counts))
    lines.append('  files   churn sql "SELECT status, count(*) FROM bronze.ingest_manifest GROUP BY status"')
    if engine.has_table("gold.churn_prediction"):
        version, at_risk = (
            engine.table("gold.churn_prediction")
            .agg(F.max("model_version"), F.sum(F.when(F.col("churn_prediction") == 1, 1).otherwise(0)))
            .collect()[0]
        )
        auc = f", holdout ROC AUC {champion_auc:.3f}" if champion_auc is not None else ""
        lines.append(f"model      churn_model v{version} (champion{auc}); customers at risk {at_risk or 0:,}")
    return lines


def cycle_summary(settings: Settings, champion_auc: float | None = None, run_id: str | None = None) -> str:
    home, path = settings.home, settings.warehouse_path
    spark = settings.engine == "spark"
    if not path.exists() and not spark:
        return f"no warehouse yet at {path}"
    # On Spark the layers live in the Spark warehouse; the campaign's ledger stays in the DuckDB file.
    lines = spark_lines(settings, champion_auc) if spark else []
    con = duckdb.connect(str(path), read_only=True) if path.exists() else None
    try:
        if con is not None and not spark:
            lines += _duckdb_lines(con, champion_auc, run_id, path)
        if con is not None and table_exists(con, "campaigns", "retention_messages"):
            rows = con.execute(
                "SELECT status, generator, count(*) FROM campaigns.retention_messages GROUP BY ALL ORDER BY 1, 2"
            ).fetchall()
            lines.append("messages   " + ", ".join(f"{n:,} {s} ({g})" for s, g, n in rows))
            lines.append(campaign_line(con))
    finally:
        if con is not None:
            con.close()
    strays = stray_files(settings.landing_dir)
    if strays:
        names = ", ".join(str(p.relative_to(home)) for p in strays[:SHOWN]) + (" ..." if len(strays) > SHOWN else "")
        lines.append(f"ignored    {len(strays)} files outside landing/{{{','.join(SOURCES)}}}/: {names}")
    unread = [rel for s in SOURCES for rel in unrecognized_files(settings.landing_dir, s)]
    if unread:
        names = ", ".join(f"landing/{rel}" for rel in unread[:SHOWN]) + (" ..." if len(unread) > SHOWN else "")
        lines.append(f"ignored    {len(unread)} files not named as data files ({ACCEPTED}): {names}")
    dashboard = settings.dashboard_dir / "index.html"
    outbox = settings.outbox_dir
    outboxes = sorted(outbox.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if outbox.is_dir() else []
    if dashboard.exists():
        lines.append(f"dashboard  {dashboard.as_uri()}")
    if outboxes:
        lines.append(f"outbox     {outboxes[-1]}")
    # Commands that work as printed from any folder, without activating the venv.
    venv = Path(sys.executable).parent
    store = settings.mlflow_uri
    lines.append(f"MLflow     {venv / 'mlflow'} ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
    lines.append(f"Dagster UI CHURN_HOME={home} {venv / 'churn'} ui   (then http://127.0.0.1:3000)")
    return "\n".join(lines)
