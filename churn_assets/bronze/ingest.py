"""Exactly-once, crash-safe ingestion of landing files into the bronze tables.

How a file moves:
1. ``discover``: files in ``landing/<source>/`` that the manifest does not know, that are
   complete (not hidden/temporary, mtime older than the settle time).
2. ``parse_file``: read once, hashed (SHA-256), split into records. Records that fit the
   expected schema become typed rows; records that parse but do not fit keep their raw
   text in ``_rescued_data``; records that cannot be parsed go to quarantine with a reason.
   A file that is not UTF-8 is quarantined whole.
3. ``load``: rows, quarantine records and the manifest line of a batch of files are
   written in one DuckDB transaction, so a crash leaves either all of a file or none of it.

Invariant, per file: rows in bronze + quarantined records = records landed.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from churn_assets.warehouse import registered, scalar, transaction

TIMESTAMP_REGEX = r"\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}"
# Accepted JSON types per declared column type (json_type names); NULL always fits.
JSON_FITS = {
    "VARCHAR": ("VARCHAR",),
    "DOUBLE": ("DOUBLE", "BIGINT", "UBIGINT"),
    "BOOLEAN": ("BOOLEAN",),
}


@dataclass(frozen=True)
class SourceSpec:
    name: str  # landing folder
    table: str  # bronze table
    fmt: str  # "json" (newline-delimited) or "csv" (with header)
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) in file order
    timestamps: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


SPECS = {
    "users": SourceSpec(
        "users",
        "churn_users_bronze",
        "json",
        (
            ("id", "VARCHAR"), ("firstname", "VARCHAR"), ("lastname", "VARCHAR"),
            ("email", "VARCHAR"), ("address", "VARCHAR"), ("canal", "VARCHAR"),
            ("country", "VARCHAR"), ("creation_date", "VARCHAR"),
            ("last_activity_date", "VARCHAR"), ("gender", "DOUBLE"),
            ("age_group", "DOUBLE"), ("churn", "BOOLEAN"),
        ),
        ("creation_date", "last_activity_date"),
    ),
    "orders": SourceSpec(
        "orders",
        "churn_orders_bronze",
        "json",
        (
            ("user_id", "VARCHAR"), ("id", "VARCHAR"), ("transaction_date", "VARCHAR"),
            ("item_count", "DOUBLE"), ("amount", "DOUBLE"),
        ),
        ("transaction_date",),
    ),
    "events": SourceSpec(
        "events",
        "churn_app_events",
        "csv",
        (
            ("user_id", "VARCHAR"), ("event_id", "VARCHAR"), ("platform", "VARCHAR"),
            ("date", "VARCHAR"), ("action", "VARCHAR"), ("session_id", "VARCHAR"),
            ("url", "VARCHAR"),
        ),
        ("date",),
    ),
}


@dataclass
class LandedFile:
    path: Path
    relpath: str  # relative to the landing root, e.g. "users/part-0001.json"
    size: int
    mtime: float


@dataclass
class ParsedFile:
    landed: LandedFile
    content_hash: str
    records: int  # records landed (non-blank lines; CSV header excluded)
    status: str  # loaded | empty | quarantined
    detail: str | None = None
    lines: pa.Table | None = None  # JSON: (row_no, raw); CSV: header columns + row_no
    header: list[str] = field(default_factory=list)
    quarantine: list[tuple[int, str, str]] = field(default_factory=list)  # (row_no, raw, reason)


@dataclass
class IngestResult:
    source: str
    files_seen: int = 0
    files_loaded: int = 0
    files_duplicate: int = 0
    files_empty: int = 0
    files_quarantined: int = 0
    records: int = 0
    rows_loaded: int = 0
    rows_rescued: int = 0
    rows_quarantined: int = 0
    file_ids: list[int] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: ``CHURN_TEST_KILL_AT=name[:n]`` makes the process SIGKILL itself the
    n-th time (default first) it passes here.

    The crash-safety tests use it to stop ingestion at exact points; it does nothing
    unless that variable names this point.
    """
    target = os.environ.get("CHURN_TEST_KILL_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def is_candidate_name(name: str) -> bool:
    # Hidden and underscore files are writers' temporaries or markers (_SUCCESS, .crc,
    # .part-0001.json.tmp); they are never data.
    return not (name.startswith(".") or name.startswith("_") or name.endswith((".tmp", ".crc", ".inprogress")))


def discover(landing_root: Path, source: str, known_paths: set[str], settle_seconds: float, now: float | None = None) -> list[LandedFile]:
    """New, complete files of one source, oldest name first."""
    folder = landing_root / source
    if not folder.is_dir():
        return []
    now = now if now is not None else datetime.now().timestamp()
    found = []
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False) or not is_candidate_name(entry.name):
            continue
        rel = f"{source}/{entry.name}"
        if rel in known_paths:
            continue
        st = entry.stat()
        if now - st.st_mtime < settle_seconds:
            continue  # still being written (or just finished): take it next time
        found.append(LandedFile(Path(entry.path), rel, st.st_size, st.st_mtime))
    return sorted(found, key=lambda f: f.relpath)


def _nonblank_lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def parse_file(spec: SourceSpec, landed: LandedFile) -> ParsedFile:
    data = landed.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        return ParsedFile(landed, digest, 0, "empty", "file has no records")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lines = _nonblank_lines(data)
        if spec.fmt == "csv":
            lines = lines[1:]
        reason = f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        quarantine = [(i + 1, line.decode("utf-8", "backslashreplace"), reason) for i, line in enumerate(lines)]
        return ParsedFile(landed, digest, len(lines), "quarantined", reason, quarantine=quarantine)
    if spec.fmt == "json":
        return _parse_json_lines(landed, digest, data)
    return _parse_csv(spec, landed, digest, data)


def _parse_json_lines(landed: LandedFile, digest: str, data: bytes) -> ParsedFile:
    quarantine: list[tuple[int, str, str]] = []

    def invalid(row):  # only a line holding the \x01 separator lands here
        quarantine.append((row.number or 0, row.text, "control character \\x01 in record"))
        return "skip"

    # pyarrow's C++ line splitter: one column, no quoting, so every line is one value.
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=["raw"], block_size=1 << 26, use_threads=False),
        parse_options=pacsv.ParseOptions(
            delimiter="\x01", quote_char=False, escape_char=False, newlines_in_values=False,
            ignore_empty_lines=False, invalid_row_handler=invalid,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={"raw": pa.string()}, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    table = table.append_column("row_no", pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64)))
    blank = pc.equal(pc.utf8_trim_whitespace(table["raw"]), "")
    table = table.filter(pc.invert(blank))
    records = table.num_rows + len(quarantine)
    return ParsedFile(landed, digest, records, "loaded", lines=table, quarantine=quarantine)


def _parse_csv(spec: SourceSpec, landed: LandedFile, digest: str, data: bytes) -> ParsedFile:
    header_line = data.split(b"\n", 1)[0].decode("utf-8").strip("\r")
    header = [h.strip().strip('"') for h in header_line.split(",")]
    records_total = len(_nonblank_lines(data)) - 1
    if not set(header) & set(spec.column_names):
        reason = "CSV header has none of the expected columns: " + header_line[:200]
        lines = [line.decode("utf-8") for line in _nonblank_lines(data)[1:]]
        return ParsedFile(landed, digest, len(lines), "quarantined", reason,
                          quarantine=[(i + 1, line, reason) for i, line in enumerate(lines)])
    # Duplicate or empty header names would break the column mapping: make them unique.
    names, seen = [], {}
    for i, h in enumerate(header):
        h = h or f"_c{i}"
        seen[h] = seen.get(h, 0) + 1
        names.append(h if seen[h] == 1 else f"{h}_{seen[h]}")
    quarantine: list[tuple[int, str, str]] = []

    def invalid(row):
        quarantine.append(
            (row.number or 0, row.text, f"expected {row.expected_columns} columns, found {row.actual_columns}")
        )
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 26, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True
        ),
    )
    table = table.append_column("row_no", pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64)))
    # pyarrow counts the header it skipped; report data-line numbers like the JSON path.
    quarantine = [(n - 1 if n else 0, text, reason) for n, text, reason in quarantine]
    assert table.num_rows + len(quarantine) == records_total, "CSV record accounting is off"
    return ParsedFile(landed, digest, records_total, "loaded", lines=table, header=names, quarantine=quarantine)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def json_select_sql(spec: SourceSpec, view: str) -> tuple[str, str]:
    """SQL turning a (row_no, raw) view of JSON lines into bronze rows, and into quarantine."""
    struct = "{" + ", ".join(f'"{c}": "{t}"' for c, t in spec.columns) + "}"
    paths = "[" + ", ".join(f"'$.\"{c}\"'" for c in spec.column_names) + "]"
    fits = []
    for i, (c, t) in enumerate(spec.columns, start=1):
        allowed = ", ".join(f"'{x}'" for x in JSON_FITS[t] + ("NULL",))
        cond = f"(t[{i}] IS NULL OR t[{i}] IN ({allowed}))"
        if c in spec.timestamps:
            cond += f" AND (s.{_q(c)} IS NULL OR regexp_full_match(s.{_q(c)}, '{TIMESTAMP_REGEX}'))"
        fits.append((c, cond))
    # No key outside the schema: as many keys as expected paths found.
    all_fit = " AND ".join(f"f_{i}" for i in range(len(fits))) + " AND len(k) = len(list_filter(t, lambda x: x IS NOT NULL))"
    parsed = f"""
        SELECT row_no, raw, s, t, k, {", ".join(f"{cond} AS f_{i}" for i, (_, cond) in enumerate(fits))}
        FROM (
            SELECT row_no, raw, from_json(raw, '{struct}') AS s, json_type(raw, {paths}) AS t, json_keys(raw) AS k
            FROM {view}
            WHERE CASE WHEN json_valid(raw) THEN json_type(raw) = 'OBJECT' ELSE false END
        )"""
    cols = ", ".join(f"CASE WHEN f_{i} THEN s.{_q(c)} END AS {_q(c)}" for i, (c, _) in enumerate(fits))
    rows = f"SELECT {cols}, CASE WHEN NOT ({all_fit}) THEN raw END AS _rescued_data, row_no FROM ({parsed})"
    bad = f"""
        SELECT row_no, raw, CASE WHEN json_valid(raw) THEN 'JSON value is not an object' ELSE 'malformed JSON' END AS reason
        FROM {view}
        WHERE NOT CASE WHEN json_valid(raw) THEN json_type(raw) = 'OBJECT' ELSE false END"""
    return rows, bad


def csv_select_sql(spec: SourceSpec, header: list[str], view: str) -> str:
    present = set(header)
    cols = []
    fit_conds = []
    for c, _ in spec.columns:
        if c not in present:
            cols.append(f"NULL AS {_q(c)}")
            fit_conds.append("false")  # a column the file lacks: every record is rescued
        elif c in spec.timestamps:
            ok = f"({_q(c)} IS NULL OR regexp_full_match({_q(c)}, '{TIMESTAMP_REGEX}'))"
            cols.append(f"CASE WHEN {ok} THEN {_q(c)} END AS {_q(c)}")
            fit_conds.append(ok)
        else:
            cols.append(_q(c))
    extras = [h for h in header if h not in set(spec.column_names)]
    fit_conds += [f"{_q(h)} IS NULL" for h in extras]
    fit = " AND ".join(fit_conds) if fit_conds else "true"
    record = "to_json(struct_pack(" + ", ".join(f"{_q(h)} := {_q(h)}" for h in header) + "))"
    return f"SELECT {', '.join(cols)}, CASE WHEN NOT ({fit}) THEN {record} END AS _rescued_data, row_no FROM {view}"


def known_files(con: duckdb.DuckDBPyConnection, source: str) -> tuple[set[str], dict[str, str]]:
    rows = con.execute(
        "SELECT path, content_hash, status FROM bronze.ingest_manifest WHERE source = ?", [source]
    ).fetchall()
    paths = {p for p, _, _ in rows}
    hashes = {h: p for p, h, s in rows if h is not None and s != "duplicate"}
    return paths, hashes


def ingest_source(
    con: duckdb.DuckDBPyConnection,
    landing_root: Path,
    source: str,
    run_id: str,
    settle_seconds: float = 2.0,
    batch_bytes: int = 256 * 1024 * 1024,
) -> IngestResult:
    """Ingest every new complete file of one source. Safe to call again after any crash."""
    spec = SPECS[source]
    result = IngestResult(source)
    paths, hashes = known_files(con, source)
    new_files = discover(landing_root, source, paths, settle_seconds)
    result.files_seen = len(new_files)
    batch: list[LandedFile] = []
    size = 0
    for landed in new_files:
        batch.append(landed)
        size += landed.size
        if size >= batch_bytes:
            _load_batch(con, spec, batch, hashes, run_id, result)
            batch, size = [], 0
    if batch:
        _load_batch(con, spec, batch, hashes, run_id, result)
    return result


def _load_batch(con, spec: SourceSpec, batch: list[LandedFile], hashes: dict[str, str], run_id: str, result: IngestResult) -> None:
    parsed = [parse_file(spec, landed) for landed in batch]
    now = _utcnow()
    batch_hashes = dict(hashes)
    with transaction(con):
        next_id = (scalar(con, "SELECT max(file_id) FROM bronze.ingest_manifest") or 0) + 1
        for pf in parsed:
            file_id = next_id
            next_id += 1
            status, detail = pf.status, pf.detail
            loaded = rescued = quarantined = 0
            if pf.content_hash in batch_hashes:
                # Same bytes under another name: the content is in already; record, add nothing.
                status, detail = "duplicate", f"same content as {batch_hashes[pf.content_hash]}"
            else:
                batch_hashes[pf.content_hash] = pf.landed.relpath
                loaded, rescued, quarantined = _insert_file(con, spec, pf, file_id, run_id, now)
                if status == "loaded" and loaded == 0 and quarantined:
                    status = "quarantined"
            con.execute(
                "INSERT INTO bronze.ingest_manifest VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    file_id, spec.name, pf.landed.relpath, pf.landed.size,
                    datetime.fromtimestamp(pf.landed.mtime, timezone.utc).replace(tzinfo=None),
                    pf.content_hash, pf.records if status != "duplicate" else 0, loaded, rescued,
                    quarantined, status, detail, run_id, now,
                ],
            )
            fault_point("after_file_before_commit")
            result.files_loaded += status == "loaded"
            result.files_duplicate += status == "duplicate"
            result.files_empty += status == "empty"
            result.files_quarantined += status == "quarantined"
            result.records += pf.records if status != "duplicate" else 0
            result.rows_loaded += loaded
            result.rows_rescued += rescued
            result.rows_quarantined += quarantined
            result.file_ids.append(file_id)
    hashes.update(batch_hashes)
    fault_point("after_commit")


def _insert_file(con, spec: SourceSpec, pf: ParsedFile, file_id: int, run_id: str, now: datetime) -> tuple[int, int, int]:
    quarantine = list(pf.quarantine)
    loaded = rescued = 0
    if pf.lines is not None and pf.lines.num_rows:
        view = f"_landing_{spec.name}_{file_id}"
        with registered(con, view, pf.lines):
            if spec.fmt == "json":
                rows_sql, bad_sql = json_select_sql(spec, view)
                quarantine += [tuple(r) for r in con.execute(bad_sql).fetchall()]
            else:
                rows_sql = csv_select_sql(spec, pf.header, view)
            con.execute(
                f"""INSERT INTO bronze.{spec.table}
                    SELECT * EXCLUDE (row_no), ? AS _source_file, ? AS _file_id, row_no AS _row_no, ? AS _ingested_at
                    FROM ({rows_sql})""",
                [pf.landed.relpath, file_id, now],
            )
            # file ids only grow, so the zone maps make this count read one segment.
            loaded, rescued = con.execute(
                f"SELECT count(*), count(_rescued_data) FROM bronze.{spec.table} WHERE _file_id = ?", [file_id]
            ).fetchall()[0]
    if quarantine:
        q = pa.table(
            {
                "row_no": pa.array([r[0] for r in quarantine], pa.int64()),
                "raw": pa.array([r[1] for r in quarantine], pa.string()),
                "reason": pa.array([r[2] for r in quarantine], pa.string()),
            }
        )
        view = f"_quarantine_{spec.name}_{file_id}"
        with registered(con, view, q):
            con.execute(
                f"INSERT INTO bronze.quarantine SELECT ?, ?, ?, row_no, raw, reason, ?, ? FROM {view}",
                [spec.name, file_id, pf.landed.relpath, run_id, now],
            )
    fault_point("after_rows_before_manifest")
    return loaded, rescued, len(quarantine)
