"""A short, human summary of the warehouse after a cycle (printed by ``churn run``)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from churn_assets.settings import warehouse_path
from churn_assets.warehouse import scalar, table_exists

LAYERS = [
    ("bronze", ["churn_users_bronze", "churn_orders_bronze", "churn_app_events", "quarantine"]),
    ("silver", ["churn_users", "churn_orders"]),
    ("gold", ["churn_features", "churn_prediction"]),
]


def campaign_line(con) -> str:
    """The last campaign run in words, saying so when the model's copy was missing."""
    from churn_assets.campaigns.run import degradation_text

    run_id, messages, template = con.execute(
        """WITH last AS (SELECT run_id FROM campaigns.retention_messages ORDER BY created_at DESC LIMIT 1)
           SELECT any_value(run_id), count(*), count(*) FILTER (status = 'ready' AND generator = 'template')
           FROM campaigns.retention_messages WHERE run_id = (SELECT run_id FROM last)"""
    ).fetchall()[0]
    errors = {}
    if scalar(con, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'campaigns' "
                   "AND table_name = 'retention_messages' AND column_name = 'model_error'"):
        errors = dict(con.execute(
            "SELECT model_error, count(*) FROM campaigns.retention_messages "
            "WHERE run_id = ? AND model_error IS NOT NULL GROUP BY 1", [run_id]).fetchall())
    if errors:
        return f"campaign   last run DEGRADED: {degradation_text(errors, messages, template)}"
    if messages and template == messages:
        return f"campaign   last run {messages:,} messages, from the offline templates (no ANTHROPIC_API_KEY)"
    return f"campaign   last run {messages:,} messages, all with the model's copy"


def cycle_summary(home: Path, champion_auc: float | None = None) -> str:
    path = warehouse_path(home)
    if not path.exists():
        return f"no warehouse yet at {path}"
    con = duckdb.connect(str(path), read_only=True)
    try:
        lines = [f"warehouse  {path}"]
        for schema, tables in LAYERS:
            counts = [f"{t} {scalar(con, f'SELECT count(*) FROM {schema}.{t}'):,}" for t in tables if table_exists(con, schema, t)]
            lines.append(f"  {schema:<7} " + ", ".join(counts))
        files = con.execute("SELECT status, count(*) FROM bronze.ingest_manifest GROUP BY status ORDER BY status").fetchall()
        lines.append("  files   " + ", ".join(f"{s} {n}" for s, n in files))
        if table_exists(con, "gold", "churn_prediction"):
            version, at_risk = con.execute(
                "SELECT any_value(model_version), count(*) FILTER (churn_prediction = 1) FROM gold.churn_prediction"
            ).fetchall()[0]
            auc = f", holdout ROC AUC {champion_auc:.3f}" if champion_auc is not None else ""
            lines.append(f"model      churn_model v{version} (champion{auc}); customers at risk {at_risk:,}")
        if table_exists(con, "campaigns", "retention_messages"):
            rows = con.execute("SELECT status, generator, count(*) FROM campaigns.retention_messages GROUP BY ALL ORDER BY 1, 2").fetchall()
            lines.append("messages   " + ", ".join(f"{n:,} {s} ({g})" for s, g, n in rows))
            lines.append(campaign_line(con))
    finally:
        con.close()
    dashboard = home / "dashboard" / "index.html"
    outboxes = sorted((home / "outbox").glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if (home / "outbox").is_dir() else []
    if dashboard.exists():
        lines.append(f"dashboard  {dashboard.as_uri()}")
    if outboxes:
        lines.append(f"outbox     {outboxes[-1]}")
    lines.append(f"MLflow     mlflow ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'} --port 5000")
    lines.append(f"Dagster UI CHURN_HOME={home} churn ui   (then http://127.0.0.1:3000)")
    return "\n".join(lines)
