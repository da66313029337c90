"""What a warehouse holds, comparable with a fresh load of a landing folder.

File ids and ingest times depend on the order things arrived; everything else (every
column of every bronze, silver and gold row, each record's file and line) must be the same
as loading the final landing folder from scratch.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

BRONZE = ("bronze.churn_users_bronze", "bronze.churn_orders_bronze", "bronze.churn_app_events")
SILVER = ("silver.churn_users", "silver.churn_orders")
GOLD = ("gold.churn_features",)


def snapshot(home: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        out = {}
        for table in (*BRONZE, *SILVER, *GOLD):
            out[table] = con.execute(
                f"SELECT * EXCLUDE (_file_id{', _ingested_at' if table in BRONZE else ''}) FROM {table} ORDER BY ALL"
                if table not in GOLD
                else f"SELECT * FROM {table} ORDER BY ALL"
            ).fetchall()
        return out
    finally:
        con.close()


def differences(got: dict, want: dict) -> dict[str, tuple[int, int, int]]:
    """table -> (rows got, rows wanted, rows in one and not the other) for tables that differ."""
    out = {}
    for table in want:
        a, b = got.get(table, []), want[table]
        if a != b:
            out[table] = (len(a), len(b), len(set(a) ^ set(b)))
    return out


def accounting(home: Path) -> list[tuple]:
    """Per current file segment whose records do not add up: (path, records, loaded, quarantined, in bronze)."""
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("""
            WITH cur AS (SELECT *, max(version) OVER (PARTITION BY source, path) AS current
                         FROM bronze.ingest_manifest),
                 rows AS (SELECT _file_id, count(*) AS n FROM (
                            SELECT _file_id FROM bronze.churn_users_bronze
                            UNION ALL SELECT _file_id FROM bronze.churn_orders_bronze
                            UNION ALL SELECT _file_id FROM bronze.churn_app_events) GROUP BY 1),
                 q AS (SELECT file_id, count(*) AS n FROM bronze.quarantine GROUP BY 1)
            SELECT path, records, rows_loaded, rows_quarantined, coalesce(rows.n, 0) AS in_bronze
            FROM cur LEFT JOIN rows ON rows._file_id = cur.file_id LEFT JOIN q ON q.file_id = cur.file_id
            WHERE version = current AND status <> 'duplicate'
              AND (records <> rows_loaded + rows_quarantined OR rows_loaded <> coalesce(rows.n, 0)
                   OR rows_quarantined <> coalesce(q.n, 0))""").fetchall()
    finally:
        con.close()
