"""What each gold build changed, for the readers of gold that follow it (scoring, the gold check).

An hourly build rebuilds the rows of the customers new data names (about 1 % of them) and leaves
the others as they were. Each build is numbered in ``ops.gold_builds``; an incremental one lists
those customers in ``ops.gold_changes``, a full build or a day-count refresh is marked
``every_row``. A reader keeps the last build it read as its watermark (``ops.watermarks``, source
``gold.churn_features``) and, while every build since is incremental, reads only the customers
listed: at 100x the reference that is 70,000 keys instead of a pass over 6.8M.
"""

from __future__ import annotations

import duckdb

from churn_assets.warehouse import advance, scalar, watermark

SOURCE = "gold.churn_features"  # the readers' watermark source


def record_build(con: duckdb.DuckDBPyConnection, affected: str | None) -> int:
    """Number this build; ``affected`` (a SQL subquery of user ids) is what it rebuilt, None when
    it rebuilt every row. Log entries every reader has read are dropped. Inside the build's
    transaction."""
    build = (scalar(con, "SELECT max(build_id) FROM ops.gold_builds") or 0) + 1
    con.execute("INSERT INTO ops.gold_builds VALUES (?, ?, now()::TIMESTAMP)", [build, affected is None])
    if affected is not None:
        con.execute(f"INSERT INTO ops.gold_changes SELECT {build}, user_id FROM {affected}")
    read_by_all = scalar(con, "SELECT min(file_id) FROM ops.watermarks WHERE source_table = ?", [SOURCE])
    if read_by_all:
        con.execute("DELETE FROM ops.gold_changes WHERE build_id <= ?", [read_by_all])
    return build


def changed_since(con: duckdb.DuckDBPyConnection, reader: str) -> str | None:
    """A SQL subquery of the customers gold's builds changed since ``reader`` last read (see
    ``read_up_to``), or None when it must read every row: it has not read yet, or a build since
    rebuilt every row."""
    seen = watermark(con, reader, SOURCE)
    if not seen:
        return None
    every_row = scalar(con, "SELECT bool_or(every_row) FROM ops.gold_builds WHERE build_id > ?", [seen])
    if every_row:
        return None
    return f"(SELECT DISTINCT user_id FROM ops.gold_changes WHERE build_id > {int(seen)})"


def read_up_to(con: duckdb.DuckDBPyConnection, reader: str) -> None:
    """``reader`` has read gold as the latest build left it."""
    advance(con, reader, SOURCE, scalar(con, "SELECT max(build_id) FROM ops.gold_builds") or 0)
