"""One batch of landed files into bronze, in one DuckDB transaction: the rows, the quarantine
records and the manifest lines of its files, and the retirement of the earlier versions they
replace. A crash leaves either all of a file's segment or none of it.

Invariant, per file segment: rows in bronze + quarantined records = records landed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa

from churn_assets.defs.bronze.manifest import MANIFEST_COLUMNS, Known
from churn_assets.defs.bronze.parse import FILE_ID, SOURCE_FILE, ParsedFile, numbers_array, parse_file, text_array
from churn_assets.defs.bronze.rows_sql import csv_select_sql, json_select_sql
from churn_assets.defs.bronze.versions import CHANGE_EVENTS
from churn_assets.faults import fault_point
from churn_assets.landing import LandedFile, SourceSpec
from churn_assets.timeutil import from_epoch, utcnow
from churn_assets.warehouse import registered, scalar, transaction

PARSE_THREADS = 2


@dataclass
class IngestResult:
    source: str
    files_seen: int = 0
    files_loaded: int = 0
    files_duplicate: int = 0
    files_empty: int = 0
    files_quarantined: int = 0
    files_appended: int = 0
    files_new_version: int = 0
    files_waiting: int = 0
    records: int = 0
    rows_loaded: int = 0
    rows_rescued: int = 0
    rows_quarantined: int = 0
    rows_retired: int = 0
    changes: list[str] = field(default_factory=list)  # "path: event (reason)", for the alert


def _retire(con, spec: SourceSpec, file_ids: tuple[int, ...]) -> int:
    """Delete the bronze rows of an earlier version; gold hears of the customers whose events leave."""
    ids = ", ".join(str(int(i)) for i in file_ids)
    if spec.name == "events":
        # Silver tells gold about users and orders it re-derives; events feed gold straight from bronze.
        con.execute(
            f"""INSERT INTO ops.gold_pending_users SELECT DISTINCT user_id FROM bronze.churn_app_events
                WHERE _file_id IN ({ids}) AND user_id IS NOT NULL"""
        )
    n = scalar(con, f"SELECT count(*) FROM bronze.{spec.table} WHERE _file_id IN ({ids})") or 0
    if n:
        con.execute(f"DELETE FROM bronze.{spec.table} WHERE _file_id IN ({ids})")
    return n


def parse_batch(spec: SourceSpec, batch: list[LandedFile], known: Known) -> list[ParsedFile | None]:
    """A batch's files read and parsed (None: nothing to load from that file yet). Reads only
    ``known.states``, which no load of the run changes."""
    # Parsing is pyarrow's C++ and numpy (GIL released): files of a batch are parsed side by side.
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        return list(pool.map(lambda f: parse_file(spec, f, known.states.get(f.relpath)), batch))


def load_batch(
    con, spec: SourceSpec, parsed: list[ParsedFile | None], known: Known, run_id: str, result: IngestResult
) -> None:
    """Write what a parsed batch adds in one transaction; ``result`` counts it, ``known``
    learns the batch's contents once the transaction commits."""
    waiting = sum(pf is None for pf in parsed)
    parsed = [pf for pf in parsed if pf]
    result.files_waiting += waiting
    if not parsed:
        return
    fault_point("after_parse")
    now = utcnow()
    current = dict(known.current)
    used = set(known.used_keys)
    with transaction(con):
        first_id = (scalar(con, "SELECT max(file_id) FROM bronze.ingest_manifest") or 0) + 1
        to_load: list[tuple[int, ParsedFile]] = []
        status: dict[int, tuple[str, str | None, str | None]] = {}  # file_id -> (status, detail, dedup key)
        for file_id, pf in enumerate(parsed, start=first_id):
            path = pf.landed.relpath
            if pf.retire:
                result.rows_retired += _retire(con, spec, pf.retire)
                fault_point("new_version_after_retire")
            if pf.event == "appended":
                current = {h: p for h, p in current.items() if p != path}
                current[pf.prefix_hash] = path
                status[file_id] = (pf.status, pf.detail, None)
                to_load.append((file_id, pf))
                continue
            current = {h: p for h, p in current.items() if p != path}
            if pf.content_hash in current:
                # Same bytes under another name: the content is in already; record, add nothing.
                status[file_id] = ("duplicate", f"same content as {current[pf.content_hash]}", None)
                continue
            # The first arrival of a content claims its key: the unique index refuses a second.
            whole_read = pf.content_hash == pf.prefix_hash
            key = pf.content_hash if whole_read and pf.content_hash not in used else None
            if key:
                used.add(key)
            current[pf.prefix_hash] = path
            status[file_id] = (pf.status, pf.detail, key)
            to_load.append((file_id, pf))
        counts = _insert_rows(con, spec, to_load, run_id, now)
        fault_point("after_rows_before_manifest")
        if any(pf.event == "appended" for pf in parsed):
            fault_point("appended_rows_before_manifest")
        manifest = []
        for file_id, pf in enumerate(parsed, start=first_id):
            state, detail, key = status[file_id]
            loaded, rescued, quarantined = counts.get(file_id, (0, 0, 0))
            if state == "loaded" and loaded == 0 and quarantined:
                state = "quarantined"
                detail = detail or (pf.quarantine[0][2] if pf.quarantine else "every record quarantined")
            records = 0 if state == "duplicate" else pf.records
            manifest.append(
                [
                    file_id,
                    spec.name,
                    pf.landed.relpath,
                    pf.landed.size,
                    from_epoch(pf.landed.mtime),
                    pf.content_hash,
                    records,
                    loaded,
                    rescued,
                    quarantined,
                    state,
                    detail,
                    run_id,
                    now,
                    pf.version,
                    pf.event,
                    pf.offset_start,
                    pf.offset_end,
                    pf.prefix_hash,
                    key,
                ]
            )
            result.files_loaded += state == "loaded"
            result.files_duplicate += state == "duplicate"
            result.files_empty += state == "empty"
            result.files_quarantined += state == "quarantined"
            result.files_appended += pf.event == "appended"
            result.files_new_version += pf.event in ("rewritten", "truncated")
            if pf.event in CHANGE_EVENTS:
                result.changes.append(f"{pf.landed.relpath} v{pf.version} {pf.event}: {detail}")
            result.records += records
            result.rows_loaded += loaded
            result.rows_rescued += rescued
            result.rows_quarantined += quarantined
        con.executemany(
            f"INSERT INTO bronze.ingest_manifest ({', '.join(MANIFEST_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(MANIFEST_COLUMNS))})",
            manifest,
        )
        fault_point("after_file_before_commit")
    known.current.clear()
    known.current.update(current)
    known.used_keys.update(used)
    fault_point("after_commit")


def _with_lineage(pf: ParsedFile, file_id: int) -> pa.Table:
    n = pf.lines.num_rows
    return pf.lines.append_column(FILE_ID, numbers_array(np.full(n, file_id, dtype=np.int64))).append_column(
        SOURCE_FILE,
        pa.DictionaryArray.from_arrays(
            numbers_array(np.zeros(n, dtype=np.int32), np.int32), text_array(pf.landed.relpath)
        ),
    )


def _insert_rows(
    con, spec: SourceSpec, to_load: list[tuple[int, ParsedFile]], run_id: str, now: datetime
) -> dict[int, tuple[int, int, int]]:
    """Insert the rows and quarantine records of a batch's files; per file (loaded, rescued, quarantined)."""
    quarantine = [(file_id, pf.landed.relpath, *q) for file_id, pf in to_load for q in pf.quarantine]
    with_rows = [(file_id, pf) for file_id, pf in to_load if pf.lines is not None and pf.lines.num_rows]
    # CSV files are grouped by header (their column mapping); JSON files all read alike.
    groups: dict[tuple[str, ...], list[tuple[int, ParsedFile]]] = {}
    for file_id, pf in with_rows:
        groups.setdefault(tuple(pf.header), []).append((file_id, pf))
    for n, (header, files) in enumerate(groups.items()):
        view = f"_landing_{spec.name}_{files[0][0]}_{n}"
        table = pa.concat_tables([_with_lineage(pf, file_id) for file_id, pf in files])
        with registered(con, view, table):
            bad_sql = None
            if spec.fmt == "json":
                rows_sql, bad_sql = json_select_sql(spec, view)
            else:
                rows_sql = csv_select_sql(spec, list(header), view)
            (inserted,) = con.execute(
                f"""INSERT INTO bronze.{spec.table}
                    SELECT *, ?
                    FROM ({rows_sql})""",
                [now],
            ).fetchone()
            # The JSON rows query keeps the lines that are objects: the others, if any, are the
            # quarantine's. A clean batch skips that second pass over every line.
            if bad_sql is not None and inserted < table.num_rows:
                quarantine += [tuple(r) for r in con.execute(bad_sql).fetchall()]
    if quarantine:
        q = pa.table(
            {
                "file_id": pa.array([r[0] for r in quarantine], pa.int64()),
                "source_file": pa.array([r[1] for r in quarantine], pa.string()),
                "row_no": pa.array([r[2] for r in quarantine], pa.int64()),
                "raw": pa.array([r[3] for r in quarantine], pa.string()),
                "reason": pa.array([r[4] for r in quarantine], pa.string()),
            }
        )
        with registered(con, f"_quarantine_{spec.name}", q):
            con.execute(
                "INSERT INTO bronze.quarantine SELECT ?, file_id, source_file, row_no, raw, reason, ?, ? "
                f"FROM _quarantine_{spec.name}",
                [spec.name, run_id, now],
            )
    counts: dict[int, list[int]] = {file_id: [0, 0, 0] for file_id, _ in to_load}
    if with_rows:
        # File ids only grow: the zone maps keep this to the batch's segments.
        for file_id, loaded, rescued in con.execute(
            f"""SELECT _file_id, count(*), count(_rescued_data) FROM bronze.{spec.table}
                WHERE _file_id BETWEEN ? AND ? GROUP BY _file_id""",
            [with_rows[0][0], with_rows[-1][0]],
        ).fetchall():
            counts[file_id][0], counts[file_id][1] = loaded, rescued
    for r in quarantine:
        counts[r[0]][2] += 1
    return {k: tuple(v) for k, v in counts.items()}
