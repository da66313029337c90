"""What each silver upsert took out, for the readers that keep aggregates of silver (the dashboard
figures) instead of computing them again over the whole table every hour.

A row replaced by a later version leaves its old image in ``ops.silver_removed_<table>``, tagged
with the silver run that removed it (``removed_by``: the bronze file id silver read up to). An
image holds the row's key, measures and grouping attributes (``Feed.columns``), none of its
personal columns. A reader keeps the silver state it last read as its watermark ``w``
(``ops.watermarks``, source ``silver.<table>``). Since then, the rows added are silver's rows of
``_file_id > w``, and the rows taken out are the images tagged after ``w`` of rows it had counted
(``_file_id <= w``): its aggregate moves by the first minus the second.

A new version of a landed file (bronze retires the earlier one) makes silver put earlier rows back
under their old file ids, which no watermark sees: a reader computes anew while such a version is
newer than what it read (once, unless the version brought no rows: then until silver reads a file
after it). Images are dropped once every consumer of the table in ``ops.watermarks`` (gold too) has
passed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from churn_assets.landing import SPECS
from churn_assets.warehouse import advance, scalar, watermark


@dataclass(frozen=True)
class Feed:
    table: str  # silver.<name>; also silver's own consumer name in ops.watermarks
    log: str  # ops.<table of old images>
    columns: tuple[str, ...]  # what an image keeps; user_id first
    source: str  # the landing source it is built from (bronze.ingest_manifest.source)

    @property
    def bronze(self) -> str:
        return f"bronze.{SPECS[self.source].table}"


FEEDS = {
    "silver.churn_users": Feed(
        "silver.churn_users", "ops.silver_removed_users", ("user_id", "canal", "gender", "churn"), "users"
    ),
    "silver.churn_orders": Feed(
        "silver.churn_orders", "ops.silver_removed_orders", ("user_id", "amount", "creation_date"), "orders"
    ),
}


def record_removed(con: duckdb.DuckDBPyConnection, table: str, removed: str, removed_by: int) -> None:
    """Log the old images of the rows ``removed`` (a temp table holding ``_file_id`` and the feed's
    columns) that silver's run up to bronze file ``removed_by`` is taking out of ``table``; drop the
    images every reader has passed. Inside silver's transaction."""
    feed = _ensure(con, table)
    cols = ", ".join(feed.columns)
    con.execute(f"INSERT INTO {feed.log} BY NAME SELECT ? AS removed_by, _file_id, {cols} FROM {removed}", [removed_by])
    _trim(con, feed)


def _ensure(con: duckdb.DuckDBPyConnection, table: str) -> Feed:
    # The log's columns take their types from the silver table's own.
    feed = FEEDS[table]
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {feed.log} AS
            SELECT 0::BIGINT AS removed_by, _file_id, {", ".join(feed.columns)} FROM {feed.table} LIMIT 0"""
    )
    return feed


def _trim(con: duckdb.DuckDBPyConnection, feed: Feed) -> None:
    read_by_all = scalar(con, "SELECT min(file_id) FROM ops.watermarks WHERE source_table = ?", [feed.table])
    if read_by_all is not None:
        con.execute(f"DELETE FROM {feed.log} WHERE removed_by <= ?", [read_by_all])


def since(con: duckdb.DuckDBPyConnection, reader: str, table: str) -> int | None:
    """The silver state ``reader`` last read of ``table`` (its watermark), or None when it must read
    the table whole: it has not read it yet, silver was rebuilt behind it, or a new version of a
    landed file has been ingested since (silver then puts earlier rows back)."""
    feed = _ensure(con, table)
    seen = watermark(con, reader, table)
    if not seen or seen > watermark(con, feed.table, feed.bronze):
        return None
    new_version = scalar(
        con,
        """SELECT count(*) FROM bronze.ingest_manifest
           WHERE source = ? AND file_id > ? AND event IN ('rewritten', 'truncated')""",
        [feed.source, seen],
    )
    return None if new_version else seen


def images(table: str, seen: int) -> str:
    """SQL: the changes to ``table`` since state ``seen``, as rows of the feed's columns and a
    ``sign``: +1 a row added, -1 a row taken out."""
    feed = FEEDS[table]
    cols = ", ".join(feed.columns)
    return f"""(SELECT {cols}, 1 AS sign FROM {feed.table} WHERE _file_id > {int(seen)}
                UNION ALL
                SELECT {cols}, -1 AS sign FROM {feed.log} WHERE removed_by > {int(seen)} AND _file_id <= {int(seen)})"""


def as_read(table: str, seen: int, current: str) -> str:
    """SQL: the rows of ``table`` as state ``seen`` held them, for the users changed since: ``current``
    holds the table's current rows of those users (with ``_file_id``), every image taken out since
    is of one of them."""
    feed = FEEDS[table]
    cols = ", ".join(feed.columns)
    return f"""(SELECT {cols} FROM {current} WHERE _file_id <= {int(seen)}
                UNION ALL
                SELECT {cols} FROM {feed.log} WHERE removed_by > {int(seen)} AND _file_id <= {int(seen)})"""


def read_up_to(con: duckdb.DuckDBPyConnection, reader: str, table: str) -> None:
    """``reader`` has read ``table`` as silver's latest run left it."""
    feed = _ensure(con, table)
    advance(con, reader, table, watermark(con, feed.table, feed.bronze))
    _trim(con, feed)
