"""One batch of landed files into bronze, in one DuckDB transaction: the rows, the quarantine
records and the manifest lines of its files, and the retirement of the earlier versions they
replace. A crash leaves either all of a file's segment or none of it.

Invariant, per file segment: rows in bronze + quarantined records = records landed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, fields
from datetime import datetime
from itertools import chain, count

import duckdb
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

    def add(self, other: IngestResult) -> None:
        for f in fields(self):
            if f.name != "source":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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


def parsed_in_order(
    spec: SourceSpec, files: list[LandedFile], known: Known, ahead_bytes: int
) -> Iterator[ParsedFile | None]:
    """Each file read and parsed (None: nothing to load from it yet), in order. PARSE_THREADS
    threads run ahead of the consumer by up to ``ahead_bytes`` of landed files, so reading and
    parsing overlap DuckDB's writes, within a batch and across batches. Reads only
    ``known.states``, which no load of the run changes."""
    # Parsing is pyarrow's C++ and numpy (GIL released): files are parsed side by side.
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        pending: deque[tuple[int, Future]] = deque()
        queued = 0
        todo = iter(files)
        try:
            while True:
                while queued < ahead_bytes or not pending:
                    landed = next(todo, None)
                    if landed is None:
                        break
                    state = known.states.get(landed.relpath)
                    pending.append((landed.size, pool.submit(parse_file, spec, landed, state)))
                    queued += landed.size
                if not pending:
                    return
                size, parsed = pending.popleft()
                queued -= size
                yield parsed.result()
        finally:
            for _, parsed in pending:
                parsed.cancel()


class _Careful(Exception):
    """The quick JSON rows query met a line it cannot take (not JSON, or not an object)."""


def load_batch(
    con,
    spec: SourceSpec,
    batch: list[LandedFile],
    parsed: Iterator[ParsedFile | None],
    known: Known,
    run_id: str,
    result: IngestResult,
    *,
    careful: bool = False,
) -> bool:
    """Write what a batch adds in one transaction, each file's rows as soon as ``parsed``
    (the batch's files parsed, in order) yields it; ``result`` counts it, ``known`` learns the
    batch's contents once the transaction commits. JSON lines go through the quick rows query
    unless ``careful``; when it meets a line it cannot take, the transaction is rolled back and
    the batch read again and written carefully. Returns whether the batch was written
    carefully (the caller keeps to it for the rest of the pass)."""
    waiting = 0
    for first in parsed:
        if first is not None:
            break
        waiting += 1
    else:  # every file still being written: no transaction
        result.files_waiting += waiting
        return careful
    try:
        added = _write_batch(con, spec, chain([None] * waiting, [first], parsed), known, run_id, careful=careful)
    except _Careful:
        added = None
    if added is None:  # rolled back; read again outside the handler, so nothing of the first try stays alive
        for _ in parsed:  # the rest of the batch, parsed ahead: dropped
            pass
        with closing(parsed_in_order(spec, batch, known, sum(f.size for f in batch))) as again:
            added = _write_batch(con, spec, again, known, run_id, careful=True)
        careful = True
    result.add(added)
    return careful


def decide(pf: ParsedFile, current: dict[str, str], used: set[str]) -> tuple[str, str | None, str | None]:
    """A file's (status, detail, dedup key) given the contents loaded so far (``current``:
    content hash -> path, without this file's own earlier version) and the keys ever claimed."""
    if pf.event == "appended":
        return pf.status, pf.detail, None
    if pf.content_hash in current:
        # Same bytes under another name: the content is in already; record, add nothing.
        return "duplicate", f"same content as {current[pf.content_hash]}", None
    # The first arrival of a content claims its key: the unique index refuses a second.
    whole_read = pf.content_hash == pf.prefix_hash
    return pf.status, pf.detail, pf.content_hash if whole_read and pf.content_hash not in used else None


def _write_batch(
    con, spec: SourceSpec, parsed: Iterator[ParsedFile | None], known: Known, run_id: str, *, careful: bool
) -> IngestResult:
    """One attempt at a batch's transaction; what it added, counted (nothing when it raises)."""
    fault_point("after_parse")
    result = IngestResult(spec.name)
    now = utcnow()
    current = dict(known.current)
    used = set(known.used_keys)
    # file_id -> (its parsed file, status, detail, dedup key), in arrival order
    planned: dict[int, tuple[ParsedFile, str, str | None, str | None]] = {}
    with transaction(con):
        ids = count((scalar(con, "SELECT max(file_id) FROM bronze.ingest_manifest") or 0) + 1)

        def loading() -> Iterator[tuple[int, ParsedFile]]:
            """The files whose rows load, each decided as it arrives (in order: the first
            arrival of a content claims it)."""
            nonlocal current
            for pf in parsed:
                if pf is None:
                    result.files_waiting += 1
                    continue
                file_id = next(ids)
                path = pf.landed.relpath
                current = {h: p for h, p in current.items() if p != path}
                state, detail, key = decide(pf, current, used)
                planned[file_id] = (pf, state, detail, key)
                if state == "duplicate":
                    continue
                if key:
                    used.add(key)
                current[pf.prefix_hash] = path
                if pf.lines is not None and pf.lines.num_rows:
                    yield file_id, pf
                    # Its lines are DuckDB's now: memory freed as the batch goes, not at its end
                    # (but on the careful JSON path, which reads its batch twice).
                    pf.lines = None

        quarantine = _insert_lines(con, spec, loading(), now, careful)
        # An earlier version's rows go once the new rows are in: they are told apart by file id.
        for pf, *_ in planned.values():
            if pf.retire:
                result.rows_retired += _retire(con, spec, pf.retire)
                fault_point("new_version_after_retire")
        quarantine += [
            (file_id, pf.landed.relpath, *q)
            for file_id, (pf, state, *_) in planned.items()
            if state != "duplicate"
            for q in pf.quarantine
        ]
        counts = _write_quarantine_and_count(con, spec, planned, quarantine, run_id, now)
        fault_point("after_rows_before_manifest")
        if any(pf.event == "appended" for pf, *_ in planned.values()):
            fault_point("appended_rows_before_manifest")
        manifest = []
        for file_id, (pf, state, detail, key) in planned.items():
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
        if manifest:
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
    return result


def _with_lineage(pf: ParsedFile, file_id: int) -> pa.Table:
    n = pf.lines.num_rows
    return pf.lines.append_column(FILE_ID, numbers_array(np.full(n, file_id, dtype=np.int64))).append_column(
        SOURCE_FILE,
        pa.DictionaryArray.from_arrays(
            numbers_array(np.zeros(n, dtype=np.int32), np.int32), text_array(pf.landed.relpath)
        ),
    )


class _Feed:
    """The record batches of a stream of tables, pulled by DuckDB as it inserts them: counts
    the rows, and keeps an error raised while producing them (DuckDB would report it as its own)."""

    def __init__(self, schema: pa.Schema, tables: Iterator[pa.Table]) -> None:
        self.schema, self.tables, self.rows, self.error = schema, tables, 0, None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for table in self.tables:
                if not table.schema.equals(self.schema):
                    table = table.cast(self.schema)
                self.rows += table.num_rows
                yield from table.to_batches()
                del table  # not held while the next file is parsed
        except Exception as exc:  # re-raised by the caller once DuckDB has stopped
            self.error = exc


def _insert_lines(
    con, spec: SourceSpec, loading: Iterator[tuple[int, ParsedFile]], now: datetime, careful: bool
) -> list[tuple]:
    """Insert the lines of the files ``loading`` yields as they arrive; the quarantine records
    the careful JSON query finds (lines that are not JSON objects). CSV files are inserted by
    runs of one header (their column mapping); JSON files all read alike."""
    head = next(loading, None)
    quarantine: list[tuple] = []
    while head is not None:
        header = head[1].header
        after: list[tuple[int, ParsedFile]] = []

        def same_header(first=head, header=header, after=after) -> Iterator[pa.Table]:
            yield _with_lineage(first[1], first[0])
            for file_id, pf in loading:
                if pf.header != header:
                    after.append((file_id, pf))
                    return
                yield _with_lineage(pf, file_id)

        view = f"_landing_{spec.name}_{head[0]}"
        tables = same_header()
        if spec.fmt == "json" and careful:
            # Read twice (rows, then the lines left out): a table, not a stream.
            table = pa.concat_tables(list(tables))
            with registered(con, view, table):
                rows_sql, bad_sql = json_select_sql(spec, view)
                inserted = _insert(con, spec, rows_sql, now)
                if inserted < table.num_rows:
                    quarantine += [tuple(r) for r in con.execute(bad_sql).fetchall()]
        else:
            first = next(tables)
            feed = _Feed(first.schema, chain([first], tables))
            with registered(con, view, pa.RecordBatchReader.from_batches(first.schema, iter(feed))):
                rows_sql = (
                    json_select_sql(spec, view, careful=False)[0]
                    if spec.fmt == "json"
                    else csv_select_sql(spec, list(header), view)
                )
                del first
                try:
                    inserted = _insert(con, spec, rows_sql, now)
                except duckdb.Error as exc:
                    # Raised from None: DuckDB's message may quote a landed line (personal data).
                    if feed.error is not None:
                        raise feed.error from None
                    if spec.fmt == "json" and isinstance(exc, duckdb.InvalidInputException):
                        raise _Careful from None  # DuckDB refused a line: from_json raises on one that is not JSON
                    raise
                if feed.error is not None:
                    raise feed.error
            if spec.fmt == "json" and inserted < feed.rows:
                raise _Careful  # a line that does not open with "{": the careful query says why
        head = after[0] if after else None
    return quarantine


def _insert(con, spec: SourceSpec, rows_sql: str, now: datetime) -> int:
    (inserted,) = con.execute(f"INSERT INTO bronze.{spec.table} SELECT *, ? FROM ({rows_sql})", [now]).fetchone()
    return inserted


def _write_quarantine_and_count(
    con, spec: SourceSpec, planned: dict, quarantine: list[tuple], run_id: str, now: datetime
) -> dict[int, tuple[int, int, int]]:
    """Write the batch's quarantine records; per file (rows loaded, rescued, quarantined)."""
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
    counts: dict[int, list[int]] = {file_id: [0, 0, 0] for file_id in planned}
    if planned:
        # File ids only grow: the zone maps keep this to the batch's segments.
        for file_id, loaded, rescued in con.execute(
            f"""SELECT _file_id, count(*), count(_rescued_data) FROM bronze.{spec.table}
                WHERE _file_id BETWEEN ? AND ? GROUP BY _file_id""",
            [min(planned), max(planned)],
        ).fetchall():
            counts[file_id][0], counts[file_id][1] = loaded, rescued
    for r in quarantine:
        counts[r[0]][2] += 1
    return {k: tuple(v) for k, v in counts.items()}
