"""What a campaign run reads and writes in the warehouse: the copy cache and the messages.
(The tables' DDL is in ``churn_assets/warehouse.py``; the outbox's own I/O in ``outbox.py``.)"""

from __future__ import annotations

import json

import duckdb

from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.generation import Generation
from churn_assets.defs.campaigns.messages import MESSAGE_COLUMNS, MessageRow, as_values
from churn_assets.timeutil import utcnow
from churn_assets.warehouse import registered


def messages_of_run(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    return con.execute("SELECT count(*) FROM campaigns.retention_messages WHERE run_id = ?", [run_id]).fetchall()[0][0]


def cached_copy(con: duckdb.DuckDBPyConnection, key: str) -> Generation | None:
    """The newest copy generated for a decision's cache key, or None."""
    rows = con.execute(
        "SELECT generator, decision, subject, texts FROM campaigns.copy_cache WHERE cache_key = ? "
        "ORDER BY created_at DESC LIMIT 1",
        [key],
    ).fetchall()
    if not rows:
        return None
    generator, decision, subject, texts = rows[0]
    d = json.loads(decision)
    return Generation(
        Decision(d["style"], tuple(d["languages"]), d["offer"], d["urgency"], d["season"]),
        generator,
        "ok",
        subject,
        json.loads(texts),
    )


def forget_copy(con: duckdb.DuckDBPyConnection, key: str) -> None:
    con.execute("DELETE FROM campaigns.copy_cache WHERE cache_key = ?", [key])


def cache_copy(con: duckdb.DuckDBPyConnection, key: str, prompt_version: str, gen: Generation) -> None:
    con.execute(
        "INSERT INTO campaigns.copy_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            key,
            prompt_version,
            gen.generator,
            gen.decision.as_json(),
            gen.subject,
            json.dumps(gen.texts),
            gen.input_tokens,
            gen.output_tokens,
            gen.cost_usd,
            utcnow(),
        ],
    )


def insert_messages(con: duckdb.DuckDBPyConnection, rows: list[MessageRow]) -> None:
    """One statement, committed on its own: a kill loses nothing written before it. The rows go in
    as one frame (``executemany`` ran an INSERT per row: 1.2 s for 1,000 messages at 100x; one
    multi-row VALUES bound 22,000 parameters: 0.26 s; the frame 0.03-0.08 s)."""
    if not rows:
        return
    import polars as pl

    names = MESSAGE_COLUMNS.split(", ")
    columns = zip(*(as_values(r) for r in rows), strict=True)
    frame = pl.DataFrame({name: list(col) for name, col in zip(names, columns, strict=True)}, strict=False)
    with registered(con, "_messages", frame):
        con.execute(
            f"INSERT INTO campaigns.retention_messages ({MESSAGE_COLUMNS}) SELECT {MESSAGE_COLUMNS} FROM _messages"
        )
