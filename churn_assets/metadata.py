"""Materialization metadata shared by every layer: row counts, column schema, a preview."""

from __future__ import annotations

import dagster as dg
import duckdb

# Previews never show these: metadata is read by many more people than the warehouse.
PII_COLUMNS = {"email", "address", "lastname"}


def table_metadata(con: duckdb.DuckDBPyConnection, qualified: str, preview_rows: int = 5) -> dict:
    schema, table = qualified.split(".")
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    total = con.execute(f"SELECT count(*) FROM {qualified}").fetchall()[0][0]
    shown = [c for c, _ in cols if c not in PII_COLUMNS and not c.startswith("_")]
    preview = con.sql(
        f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in shown)} FROM {qualified} LIMIT {preview_rows}"
    ).pl()
    return {
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(name=c, type=t) for c, t in cols]),
        "preview": dg.MetadataValue.md(markdown_table(preview)),
    }


def markdown_table(df) -> str:
    if df.height == 0:
        return "_(no rows)_"
    head = "| " + " | ".join(df.columns) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join("" if v is None else str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([head, sep, *body])
