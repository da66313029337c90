"""A short, human summary of the warehouse after a cycle (printed by ``churn run``)."""

from __future__ import annotations


import duckdb

from churn_assets.settings import Settings
from churn_assets.warehouse import scalar, table_exists

LAYERS = [
    ("bronze", ["churn_users_bronze", "churn_orders_bronze", "churn_app_events", "quarantine"]),
    ("silver", ["churn_users", "churn_orders"]),
    ("gold", ["churn_features", "churn_prediction"]),
]


def cycle_summary(settings: Settings, champion_auc: float | None = None) -> str:
    home, path = settings.home, settings.warehouse_path
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
    finally:
        con.close()
    dashboard = settings.dashboard_dir / "index.html"
    outboxes = sorted(settings.outbox_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if settings.outbox_dir.is_dir() else []
    if dashboard.exists():
        lines.append(f"dashboard  {dashboard.as_uri()}")
    if outboxes:
        lines.append(f"outbox     {outboxes[-1]}")
    lines.append(f"MLflow     mlflow ui --backend-store-uri {settings.mlflow_uri} --port 5000")
    lines.append(f"Dagster UI CHURN_HOME={home} churn ui   (then http://127.0.0.1:3000)")
    return "\n".join(lines)
