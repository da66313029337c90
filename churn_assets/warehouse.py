"""The DuckDB warehouse: one file, four schemas (bronze, silver, gold, ops) plus the
schemas later layers add. This module owns the connection settings and the DDL of the
tables that are appended to; tables rebuilt whole are created by their assets.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from churn_assets.landing import SPECS, SourceSpec

SCHEMAS = ("bronze", "silver", "gold", "ops", "dashboard")

# After a source's own columns, every bronze row says where it came from; the loader inserts
# in this order.
BRONZE_LINEAGE = (
    ("_rescued_data", "VARCHAR"),
    ("_source_file", "VARCHAR"),
    ("_file_id", "BIGINT"),
    ("_row_no", "BIGINT"),
    ("_ingested_at", "TIMESTAMP"),
)


def bronze_table_ddl(spec: SourceSpec) -> str:
    """CREATE TABLE of a source's bronze table: the landing spec's columns, then the lineage."""
    columns = ", ".join(f"{name} {kind}" for name, kind in (*spec.columns, *BRONZE_LINEAGE))
    return f"CREATE TABLE IF NOT EXISTS bronze.{spec.table} ({columns})"


DDL = [
    # One row per landed file seen by bronze, written in the same transaction as its rows.
    """CREATE TABLE IF NOT EXISTS bronze.ingest_manifest (
        file_id BIGINT NOT NULL, source VARCHAR NOT NULL, path VARCHAR NOT NULL,
        size_bytes BIGINT, mtime TIMESTAMP, content_hash VARCHAR, records BIGINT,
        rows_loaded BIGINT, rows_rescued BIGINT, rows_quarantined BIGINT,
        status VARCHAR NOT NULL, detail VARCHAR, run_id VARCHAR, ingested_at TIMESTAMP,
        version INTEGER, event VARCHAR, offset_start BIGINT, offset_end BIGINT, prefix_hash VARCHAR,
        dedup_key VARCHAR)""",
    # Warehouses made before file versions: the columns a version and a tail need.
    *(
        f"ALTER TABLE bronze.ingest_manifest ADD COLUMN IF NOT EXISTS {c}"
        for c in (
            "version INTEGER",
            "event VARCHAR",
            "offset_start BIGINT",
            "offset_end BIGINT",
            "prefix_hash VARCHAR",
            "dedup_key VARCHAR",
        )
    ),
    # Exactly-once held by the warehouse, not only by the one writer: a file id, a segment
    # of a file version (path, version, first byte) and the first arrival of a content
    # (dedup_key) are each recorded once; a second writer's transaction fails instead.
    "CREATE UNIQUE INDEX IF NOT EXISTS ingest_manifest_file_id ON bronze.ingest_manifest (file_id)",
    """CREATE UNIQUE INDEX IF NOT EXISTS ingest_manifest_segment
        ON bronze.ingest_manifest (source, path, version, offset_start)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ingest_manifest_content ON bronze.ingest_manifest (source, dedup_key)",
    # Records that could not become a bronze row, each with the reason.
    """CREATE TABLE IF NOT EXISTS bronze.quarantine (
        source VARCHAR, file_id BIGINT, source_file VARCHAR, row_no BIGINT, raw VARCHAR,
        reason VARCHAR, run_id VARCHAR, quarantined_at TIMESTAMP)""",
    # One table per landing source: its columns are the landing contract's, then the lineage.
    *(bronze_table_ddl(spec) for spec in SPECS.values()),
    """CREATE TABLE IF NOT EXISTS silver.churn_users (
        user_id VARCHAR, email VARCHAR, creation_date TIMESTAMP, last_activity_date TIMESTAMP,
        firstname VARCHAR, lastname VARCHAR, address VARCHAR, canal VARCHAR, country VARCHAR,
        gender INTEGER, age_group INTEGER, churn INTEGER, _file_id BIGINT, _row_no BIGINT)""",
    """CREATE TABLE IF NOT EXISTS silver.churn_orders (
        amount INTEGER, order_id VARCHAR, user_id VARCHAR, item_count INTEGER,
        creation_date TIMESTAMP, _file_id BIGINT, _row_no BIGINT)""",
    # How far each incremental consumer has read its bronze source (by file id).
    """CREATE TABLE IF NOT EXISTS ops.watermarks (
        consumer VARCHAR NOT NULL, source_table VARCHAR NOT NULL, file_id BIGINT NOT NULL,
        updated_at TIMESTAMP)""",
    # Customers whose gold row must be recomputed although no new silver row names them.
    "CREATE TABLE IF NOT EXISTS ops.gold_pending_users (user_id VARCHAR)",
    # What gold was last built against (its as-of date decides whether day counts move).
    """CREATE TABLE IF NOT EXISTS ops.gold_state (table_name VARCHAR, as_of TIMESTAMP, built_at TIMESTAMP)""",
    # Gold's builds, and the customers each incremental one rebuilt: what gold's readers look at
    # instead of all of gold (``defs/gold/changes.py``).
    "CREATE TABLE IF NOT EXISTS ops.gold_builds (build_id BIGINT, every_row BOOLEAN, built_at TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS ops.gold_changes (build_id BIGINT, user_id VARCHAR)",
    # When the warehouse was last compacted (see ``start_run``).
    "CREATE TABLE IF NOT EXISTS ops.compactions (compacted_at TIMESTAMP, reason VARCHAR)",
    # Per run, per table, per expectation: the data-quality dashboard reads this.
    """CREATE TABLE IF NOT EXISTS ops.data_quality (
        run_id VARCHAR, checked_at TIMESTAMP, layer VARCHAR, table_name VARCHAR,
        expectation VARCHAR, passed BIGINT, failed BIGINT, dropped BIGINT, detail VARCHAR)""",
    # Retired: the prediction figures' own table; gold.churn_prediction carries its columns now.
    "DROP TABLE IF EXISTS dashboard.customer_risk",
]


# The campaigns schema, created by the first campaign run (a warehouse that never ran one has
# none). One row per distinct decision written: identical decisions share one generation,
# across runs (unchanged customers cost no call next cycle); one row per message; one per
# outbox file and when it was handed over (see ``defs/campaigns/outbox.py``).
CAMPAIGN_DDL = [
    "CREATE SCHEMA IF NOT EXISTS campaigns",
    """CREATE TABLE IF NOT EXISTS campaigns.copy_cache (
        cache_key VARCHAR, prompt_version VARCHAR, generator VARCHAR, decision VARCHAR,
        subject VARCHAR, texts VARCHAR, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE,
        created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS campaigns.retention_messages (
        message_id VARCHAR, run_id VARCHAR, user_id VARCHAR, channel VARCHAR, style VARCHAR,
        languages VARCHAR, offer VARCHAR, urgency VARCHAR, season VARCHAR, subject VARCHAR, texts VARCHAR,
        generator VARCHAR, prompt_version VARCHAR, input_hash VARCHAR, input_tokens BIGINT,
        output_tokens BIGINT, cost_usd DOUBLE, status VARCHAR, detail VARCHAR, created_at TIMESTAMP,
        outbox VARCHAR, model_error VARCHAR)""",
    # model_error: why a message meant for the model's copy has none (warehouses from before it get it here).
    "ALTER TABLE campaigns.retention_messages ADD COLUMN IF NOT EXISTS model_error VARCHAR",
    """CREATE TABLE IF NOT EXISTS campaigns.outbox_files (
        file_name VARCHAR PRIMARY KEY, run_id VARCHAR, messages BIGINT, recorded_at TIMESTAMP,
        handed_over_at TIMESTAMP)""",
]


def connect(path: Path | str, *, read_only: bool = False, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    # A Python variable named like a table must never be read in its place: every
    # in-memory table is registered under an explicit name instead.
    con.execute("SET python_enable_replacements = false")
    # Row order is carried in columns (_file_id, _row_no), never in storage order: letting
    # DuckDB write in any order makes inserts and table builds markedly faster.
    con.execute("SET preserve_insertion_order = false")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if not read_only:
        # By default a checkpoint merges row groups that deletes or small appends have
        # thinned: after an hourly increment that rewrites most of gold and the tail of
        # every bronze table (1-3 s at 10x, more than the increment itself). Off, a commit
        # writes only new row groups and deletion marks; ``start_run`` turns merging back
        # on for one run a day.
        con.execute("SET max_vacuum_tasks = 0")
    return con


class WarehouseBusy(RuntimeError):
    """Another process writes the warehouse; the message is one line naming it."""


def holder_path(path: Path | str) -> Path:
    """Beside the DuckDB file: who holds it (pid, run), written by each writer on open."""
    return Path(f"{path}.holder")


def describe_holder(path: Path | str, lock_error: str) -> str:
    """Which process holds the warehouse: the holder note when its pid matches DuckDB's
    lock message (a note left by a dead process is ignored), else DuckDB's pid."""
    match = re.search(r"PID (\d+)", lock_error)
    pid = match.group(1) if match else None
    try:
        note = holder_path(path).read_text().strip()
    except OSError:
        note = ""
    if note and (pid is None or note.startswith(f"pid {pid} ")):
        return note
    return f"pid {pid}" if pid else "another process"


def _being_created(path: Path | str, error: str) -> bool:
    """Another process is creating the file this very moment: DuckDB sees a file that is
    not a database yet. A file that stays that way is corrupt, and its error is raised."""
    try:
        young = time.time() - Path(path).stat().st_mtime < 10
    except OSError:
        return False
    return young and "not a valid DuckDB database" in error


def connect_writer(
    path: Path | str, *, wait_seconds: float, holder: str, memory_limit: str | None = None, poll_seconds: float = 0.5
) -> duckdb.DuckDBPyConnection:
    """``connect`` for a writer, waiting up to ``wait_seconds`` while another process holds
    the file; then ``WarehouseBusy`` with one line naming the holder."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = connect(path, memory_limit=memory_limit)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() and not _being_created(path, str(exc)):
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse {path} is busy: held by {describe_holder(path, str(exc))}; "
                    f"gave up after waiting {wait_seconds:g}s (CHURN_WAREHOUSE_WAIT_SECONDS)"
                ) from None
            time.sleep(poll_seconds)
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    holder_path(path).write_text(f"pid {os.getpid()} ({holder}, since {since})\n")
    return con


def busy_message(path: Path | str, wait_seconds: float) -> str | None:
    """None once the warehouse can be written (waiting up to ``wait_seconds``), else the
    one line saying who holds it. For commands, before they start a run."""
    if not Path(path).exists():
        return None
    try:
        connect_writer(path, wait_seconds=wait_seconds, holder="a check before a run").close()
    except WarehouseBusy as exc:
        return str(exc)
    return None


def when_free(read, path: Path | str, wait_seconds: float, poll_seconds: float = 0.5):
    """``read()`` (something that opens the warehouse), retried while another process holds
    it, for up to ``wait_seconds``; then the one line saying who holds it, as a string."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return read()
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() and not _being_created(path, str(exc)):
                raise
            if time.monotonic() >= deadline:
                return f"warehouse {path} is busy: held by {describe_holder(path, str(exc))}"
            time.sleep(poll_seconds)


VACUUM_TASKS_DEFAULT = 100  # DuckDB's default for max_vacuum_tasks


def start_run(con: duckdb.DuckDBPyConnection, compact_every_hours: float) -> bool:
    """Prepare a run's connection; True when this run compacts the warehouse.

    Compaction is due once ``compact_every_hours`` have passed since the last one: that
    run's checkpoints merge the row groups of every table it writes. A new warehouse counts
    as compacted (its first load writes full row groups).
    """
    last = scalar(con, "SELECT max(compacted_at) FROM ops.compactions")
    if last is None:
        con.execute("INSERT INTO ops.compactions VALUES (now()::TIMESTAMP, 'new warehouse')")
        return False
    due = scalar(
        con,
        "SELECT ?::TIMESTAMP <= now()::TIMESTAMP - to_microseconds(?::BIGINT)",
        [last, int(compact_every_hours * 3_600_000_000)],
    )
    if due:
        con.execute(f"SET max_vacuum_tasks = {VACUUM_TASKS_DEFAULT}")
        con.execute("INSERT INTO ops.compactions VALUES (now()::TIMESTAMP, 'due')")
    return bool(due)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for statement in DDL:
        con.execute(statement)


def ensure_campaign_tables(con: duckdb.DuckDBPyConnection) -> None:
    for statement in CAMPAIGN_DDL:
        con.execute(statement)


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, table) -> Iterator[str]:
    """Expose an Arrow table or Polars frame to SQL under an explicit name, for one block."""
    con.register(name, table)
    try:
        yield name
    finally:
        try:
            con.unregister(name)
        except duckdb.Error:
            pass  # an aborted transaction refuses it; the view dies with the connection


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """First column of the first row (duckdb 2.0 relations have no fetchone)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def watermark(con: duckdb.DuckDBPyConnection, consumer: str, source_table: str) -> int:
    """How far ``consumer`` has read ``source_table`` (``ops.watermarks``; 0: not yet)."""
    return (
        scalar(
            con,
            "SELECT max(file_id) FROM ops.watermarks WHERE consumer = ? AND source_table = ?",
            [consumer, source_table],
        )
        or 0
    )


def advance(con: duckdb.DuckDBPyConnection, consumer: str, source_table: str, file_id: int) -> None:
    """``consumer`` has read ``source_table`` up to ``file_id``; inside the consumer's transaction."""
    con.execute("DELETE FROM ops.watermarks WHERE consumer = ? AND source_table = ?", [consumer, source_table])
    con.execute("INSERT INTO ops.watermarks VALUES (?, ?, ?, now()::TIMESTAMP)", [consumer, source_table, file_id])


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        scalar(
            con,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        )
    )


def record_quality(con, run_id: str, layer: str, table: str, rows: list[tuple[str, int, int, int, str | None]]) -> None:
    """Append expectation counts (expectation, passed, failed, dropped, detail) for one table."""
    if not rows:
        return
    # One statement: ``executemany`` runs (and, outside a transaction, commits) a statement per row.
    values = ", ".join(["(?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    params = [v for name, *counts in rows for v in (run_id, layer, table, name, *counts)]
    con.execute(f"INSERT INTO ops.data_quality VALUES {values}", params)
