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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from churn_assets.faults import fault_point
from churn_assets.warehouse import registered, scalar, transaction

TIMESTAMP_REGEX = r"\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}"
# Valid JSON whose first character is "{" is an object; json_valid is the one full parse.
IS_OBJECT = "CASE WHEN json_valid(raw) THEN ltrim(raw)[1] = '{' ELSE false END"
PARSE_THREADS = 2
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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
        SELECT row_no, file_id, source_file, raw, s, t, k, {", ".join(f"{cond} AS f_{i}" for i, (_, cond) in enumerate(fits))}
        FROM (
            SELECT row_no, file_id, source_file, raw, from_json(raw, '{struct}') AS s, json_type(raw, {paths}) AS t, json_keys(raw) AS k
            FROM {view}
            WHERE {IS_OBJECT}
        )"""
    cols = ", ".join(f"CASE WHEN f_{i} THEN s.{_q(c)} END AS {_q(c)}" for i, (c, _) in enumerate(fits))
    rows = f"SELECT {cols}, CASE WHEN NOT ({all_fit}) THEN raw END AS _rescued_data, row_no, file_id, source_file FROM ({parsed})"
    bad = f"""
        SELECT file_id, source_file, row_no, raw,
               CASE WHEN json_valid(raw) THEN 'JSON value is not an object' ELSE 'malformed JSON' END AS reason
        FROM {view}
        WHERE NOT ({IS_OBJECT})"""
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
    return (
        f"SELECT {', '.join(cols)}, CASE WHEN NOT ({fit}) THEN {record} END AS _rescued_data, row_no, file_id, source_file "
        f"FROM {view}"
    )


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
    # Parsing is pyarrow's C++ (GIL released): files of a batch are parsed side by side.
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        parsed = list(pool.map(lambda landed: parse_file(spec, landed), batch))
    now = _utcnow()
    batch_hashes = dict(hashes)
    with transaction(con):
        first_id = (scalar(con, "SELECT max(file_id) FROM bronze.ingest_manifest") or 0) + 1
        to_load: list[tuple[int, ParsedFile]] = []
        status: dict[int, tuple[str, str | None]] = {}
        for file_id, pf in enumerate(parsed, start=first_id):
            if pf.content_hash in batch_hashes:
                # Same bytes under another name: the content is in already; record, add nothing.
                status[file_id] = ("duplicate", f"same content as {batch_hashes[pf.content_hash]}")
                continue
            batch_hashes[pf.content_hash] = pf.landed.relpath
            status[file_id] = (pf.status, pf.detail)
            to_load.append((file_id, pf))
        counts = _insert_rows(con, spec, to_load, run_id, now)
        fault_point("after_rows_before_manifest")
        manifest = []
        for file_id, pf in enumerate(parsed, start=first_id):
            state, detail = status[file_id]
            loaded, rescued, quarantined = counts.get(file_id, (0, 0, 0))
            if state == "loaded" and loaded == 0 and quarantined:
                state = "quarantined"
            records = 0 if state == "duplicate" else pf.records
            manifest.append([
                file_id, spec.name, pf.landed.relpath, pf.landed.size,
                datetime.fromtimestamp(pf.landed.mtime, timezone.utc).replace(tzinfo=None),
                pf.content_hash, records, loaded, rescued, quarantined, state, detail, run_id, now,
            ])
            result.files_loaded += state == "loaded"
            result.files_duplicate += state == "duplicate"
            result.files_empty += state == "empty"
            result.files_quarantined += state == "quarantined"
            result.records += records
            result.rows_loaded += loaded
            result.rows_rescued += rescued
            result.rows_quarantined += quarantined
        con.executemany("INSERT INTO bronze.ingest_manifest VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", manifest)
        fault_point("after_file_before_commit")
    hashes.update(batch_hashes)
    fault_point("after_commit")


def _with_lineage(pf: ParsedFile, file_id: int) -> pa.Table:
    n = pf.lines.num_rows
    return pf.lines.append_column("file_id", pa.array(np.full(n, file_id, dtype=np.int64))).append_column(
        "source_file", pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([pf.landed.relpath]))
    )


def _insert_rows(con, spec: SourceSpec, to_load: list[tuple[int, ParsedFile]], run_id: str, now: datetime) -> dict[int, tuple[int, int, int]]:
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
            if spec.fmt == "json":
                rows_sql, bad_sql = json_select_sql(spec, view)
                quarantine += [tuple(r) for r in con.execute(bad_sql).fetchall()]
            else:
                rows_sql = csv_select_sql(spec, list(header), view)
            con.execute(
                f"""INSERT INTO bronze.{spec.table}
                    SELECT * EXCLUDE (row_no, file_id, source_file), source_file, file_id, row_no, ?
                    FROM ({rows_sql})""",
                [now],
            )
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
                f"INSERT INTO bronze.quarantine SELECT ?, file_id, source_file, row_no, raw, reason, ?, ? FROM _quarantine_{spec.name}",
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
