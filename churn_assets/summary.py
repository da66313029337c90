"""A short, human summary of the warehouse after a cycle (printed by ``churn run``)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from churn_assets.settings import warehouse_path
from churn_assets.warehouse import scalar, table_exists

LAYERS = [
    ("bronze", ["churn_users_bronze", "churn_orders_bronze", "churn_app_events", "quarantine"]),
    ("silver", ["churn_users", "churn_orders"]),
    ("gold", ["churn_features"]),
]


def cycle_summary(home: Path) -> str:
    path = warehouse_path(home)
    if not path.exists():
        return f"no warehouse yet at {path}"
    con = duckdb.connect(str(path), read_only=True)
    try:
        lines = [f"warehouse: {path}"]
        for schema, tables in LAYERS:
            counts = [
                f"{t} {scalar(con, f'SELECT count(*) FROM {schema}.{t}'):,}"
                for t in tables
                if table_exists(con, schema, t)
            ]
            lines.append(f"  {schema:<7} " + ", ".join(counts))
        files = con.execute(
            "SELECT status, count(*) FROM bronze.ingest_manifest GROUP BY status ORDER BY status"
        ).fetchall()
        lines.append("  files   " + ", ".join(f"{s} {n}" for s, n in files))
        return "\n".join(lines)
    finally:
        con.close()
