"""The ingest manifest (``bronze.ingest_manifest``): one row per file segment loaded, written
in the same transaction as its rows. What it knows when a run starts, and what it tells
operators (changed files, quarantined files, retired versions)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import duckdb

from churn_assets.defs.bronze.versions import CHANGE_EVENTS, FileState, retired_copies

MANIFEST_COLUMNS = (
    "file_id",
    "source",
    "path",
    "size_bytes",
    "mtime",
    "content_hash",
    "records",
    "rows_loaded",
    "rows_rescued",
    "rows_quarantined",
    "status",
    "detail",
    "run_id",
    "ingested_at",
    "version",
    "event",
    "offset_start",
    "offset_end",
    "prefix_hash",
    "dedup_key",
)


@dataclass
class Known:
    """The manifest's view of one source when a run starts."""

    states: dict[str, FileState]  # path -> its current version
    current: dict[str, str]  # content hash -> path, for the content of every current version
    used_keys: set[str]  # every dedup key ever recorded (first arrival of a content)


def known_files(con: duckdb.DuckDBPyConnection, source: str) -> Known:
    rows = con.execute(
        """WITH m AS (
               SELECT path, coalesce(version, 1) AS version, file_id, size_bytes, epoch_us(mtime) / 1e6 AS mtime,
                      coalesce(offset_end, size_bytes) AS offset_end,
                      coalesce(prefix_hash, content_hash) AS prefix_hash, content_hash,
                      status, max(coalesce(version, 1)) OVER (PARTITION BY path) AS current
               FROM bronze.ingest_manifest WHERE source = ?)
           SELECT path, version, list(file_id ORDER BY file_id), arg_max(size_bytes, file_id), arg_max(mtime, file_id),
                  arg_max(offset_end, file_id), arg_max(prefix_hash, file_id), arg_max(status, file_id),
                  arg_max(prefix_hash, file_id) IS DISTINCT FROM arg_max(content_hash, file_id),
                  list(prefix_hash) FILTER (status <> 'duplicate')
           FROM m WHERE version = current GROUP BY path, version""",
        [source],
    ).fetchall()
    states = {
        path: FileState(version, size or 0, mtime or 0.0, end or 0, prefix or "", status, tuple(ids), bool(open_tail))
        for path, version, ids, size, mtime, end, prefix, status, open_tail, _ in rows
    }
    held = {h for *_, hashes in rows for h in hashes or () if h}
    for path in retired_copies(states, held):
        states[path] = replace(states[path], copy_retired=True)
    current = {st.prefix_hash: path for path, st in states.items() if st.status != "duplicate" and st.prefix_hash}
    used = {
        k
        for (k,) in con.execute(
            "SELECT dedup_key FROM bronze.ingest_manifest WHERE source = ? AND dedup_key IS NOT NULL", [source]
        ).fetchall()
    }
    return Known(states, current, used)


def file_changes(con: duckdb.DuckDBPyConnection, source: str | None = None) -> list[dict]:
    """Every appended tail and new version the manifest recorded, newest first:
    source, path, version, event, detail (the reason), ingested_at, file_id."""
    rows = con.execute(
        f"""SELECT source, path, version, event, detail, ingested_at, file_id FROM bronze.ingest_manifest
            WHERE event IN ({", ".join(repr(e) for e in CHANGE_EVENTS)}) AND (? IS NULL OR source = ?)
            ORDER BY file_id DESC""",
        [source, source],
    ).fetchall()
    keys = ("source", "path", "version", "event", "detail", "ingested_at", "file_id")
    return [dict(zip(keys, r)) for r in rows]


def quarantined_files(con: duckdb.DuckDBPyConnection, source: str | None = None) -> list[dict]:
    """Files of the current landing state with records in quarantine: source, path, version,
    status (``quarantined`` when nothing of the file loaded), records, rows_quarantined, detail."""
    rows = con.execute(
        """WITH cur AS (SELECT *, max(coalesce(version, 1)) OVER (PARTITION BY source, path) AS current
                        FROM bronze.ingest_manifest)
           SELECT source, path, coalesce(version, 1), arg_max(status, file_id), sum(records)::BIGINT,
                  sum(rows_quarantined)::BIGINT, arg_max(detail, file_id)
           FROM cur WHERE coalesce(version, 1) = current AND (? IS NULL OR source = ?)
           GROUP BY ALL HAVING sum(rows_quarantined) > 0 ORDER BY 1, 2""",
        [source, source],
    ).fetchall()
    keys = ("source", "path", "version", "status", "records", "rows_quarantined", "detail")
    return [dict(zip(keys, r)) for r in rows]


def retired_file_ids(con: duckdb.DuckDBPyConnection, source: str) -> list[int]:
    """File ids of versions a later version of the same path replaced: their records are gone."""
    return [
        i
        for (i,) in con.execute(
            """SELECT file_id FROM (SELECT file_id, coalesce(version, 1) AS v,
                                       max(coalesce(version, 1)) OVER (PARTITION BY path) AS current
                                FROM bronze.ingest_manifest WHERE source = ?) WHERE v < current ORDER BY 1""",
            [source],
        ).fetchall()
    ]
