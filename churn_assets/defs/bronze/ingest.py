"""Exactly-once, crash-safe ingestion of landing files into the bronze tables.

How a file moves:
1. ``discover``: data files (an allow-list of extensions) in ``landing/<source>/`` that are
   new or changed since the manifest recorded their size and mtime, and complete: still
   for the settle time, or renamed into place.
2. ``parse_file``: read, hashed (SHA-256), compared with what the manifest holds
   (``plan_change``): a new file or a new version is read whole, an appended tail alone.
   Records that fit the expected schema become typed rows; records that parse but do not
   fit keep their raw text in ``_rescued_data``; records that cannot be read go to
   quarantine with a reason; a file that cannot be read at all (its name, encoding,
   header, binary content, a JSON array, a compression the reader does not take) is
   quarantined whole. Never the batch, never the source.
3. ``load``: the rows, quarantine records and manifest line of a batch of files, and the
   retirement of the earlier version a file replaces, are written in one DuckDB
   transaction, so a crash leaves either all of a file's segment or none of it.

Invariant, per file segment: rows in bronze + quarantined records = records landed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Mapping
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


BOM = b"\xef\xbb\xbf"
# Data files are taken by an allow-list of extensions: anything else in a landing folder (a
# writer's temporary such as .part, .filepart, .partial, .tmp; markers such as _SUCCESS)
# is not data, and a file renamed from such a name into place is read once, complete.
EXTENSIONS = {"json": (".json", ".jsonl", ".ndjson"), "csv": (".csv",)}
GZIP_SUFFIX = ".gz"  # taken: decompressed in memory, then read like the plain file
# Compressions the reader does not take: such a file is quarantined with the reason.
UNSUPPORTED_COMPRESSION = (".zip", ".bz2", ".xz", ".zst", ".7z", ".lz4", ".br")
MAGIC = {b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
GZIP_MAGIC = b"\x1f\x8b"
# A record longer than this is quarantined (the contract's records are < 1 kB); it also
# keeps every line well under the reader's block size.
MAX_RECORD_BYTES = 1 << 20
RAW_KEEP = 4096  # characters of an over-long or binary record kept in quarantine
# A final line without its newline is read only once the file has been still this many
# settle windows (or was renamed into place): before that the writer may still be on it.
OPEN_LINE_FACTOR = 10


def data_kind(name: str, fmt: str) -> str | None:
    """'plain', 'gzip' or 'unsupported' (compressed in a way the reader does not take), or
    None for a name that is not a data file of format ``fmt``."""
    if name.startswith((".", "_")):
        return None  # hidden and underscore files are writers' temporaries and markers
    lower = name.lower()
    exts = EXTENSIONS[fmt]
    if lower.endswith(exts):
        return "plain"
    if lower.endswith(tuple(e + GZIP_SUFFIX for e in exts)):
        return "gzip"
    if lower.endswith(UNSUPPORTED_COMPRESSION):
        return "unsupported"
    return None


@dataclass
class LandedFile:
    path: Path
    relpath: str  # relative to the landing root, e.g. "users/part-0001.json" (always valid UTF-8)
    size: int
    mtime: float
    kind: str = "plain"  # plain | gzip | unsupported
    name_error: str | None = None
    final: bool = True  # may its last line be read without a newline (the writer is done)?


@dataclass(frozen=True)
class FileState:
    """What the manifest recorded for the current version of one path."""

    version: int
    size: int
    mtime: float
    offset_end: int  # bytes of content read so far
    prefix_hash: str  # SHA-256 of those bytes
    status: str  # of the version's latest segment
    file_ids: tuple[int, ...]  # every segment of the version


@dataclass
class ParsedFile:
    landed: LandedFile
    content_hash: str  # SHA-256 of the whole content read (decompressed, without a BOM)
    records: int  # records landed in this segment (non-blank lines; CSV header excluded)
    status: str  # loaded | empty | quarantined
    detail: str | None = None
    lines: pa.Table | None = None  # JSON: (raw, row_no); CSV: header columns + row_no
    header: list[str] = field(default_factory=list)
    quarantine: list[tuple[int, str, str]] = field(default_factory=list)  # (row_no, raw, reason)
    event: str = "new"  # new | appended | rewritten | truncated
    version: int = 1
    offset_start: int = 0
    offset_end: int = 0
    prefix_hash: str = ""
    retire: tuple[int, ...] = ()  # file ids of the earlier version this one replaces
    whole: bool = False  # quarantined as a whole file (not record by record)


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


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _safe_name(name: str) -> tuple[str, str | None]:
    """(a UTF-8 spelling of a directory entry's name, why the real name is not UTF-8 or None)."""
    try:
        name.encode("utf-8")
        return name, None
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, f"file name is not valid UTF-8: {shown}"


def discover(landing_root: Path, source: str, known: Mapping[str, tuple[int, float]], settle_seconds: float,
             now: float | None = None) -> list[LandedFile]:
    """Data files of one source that are new or changed since the manifest saw them, and
    complete: still for ``settle_seconds`` (size and mtime unchanged) or renamed into
    place. ``known`` maps a path to the (size, mtime) last recorded. Oldest name first."""
    folder = landing_root / source
    if not folder.is_dir():
        return []
    fmt = SPECS[source].fmt
    now = now if now is not None else datetime.now().timestamp()
    found = []
    for entry in os.scandir(folder):
        kind = data_kind(entry.name, fmt)
        if kind is None or not entry.is_file(follow_symlinks=False):
            continue
        shown, name_error = _safe_name(entry.name)
        rel = f"{source}/{shown}"
        st = entry.stat()
        seen = known.get(rel) if isinstance(known, Mapping) else None
        if seen is not None and seen[0] == st.st_size and abs(seen[1] - st.st_mtime) < 1e-5:
            continue  # unchanged since it was read
        # A rename changes the inode's ctime, not its mtime: ctime past mtime means the
        # last write was followed by a rename (or chmod) into place, so writing is over.
        renamed = st.st_ctime_ns > st.st_mtime_ns
        still = now - st.st_mtime
        if still < settle_seconds and not renamed:
            continue  # still being written (or just finished): take it next time
        final = renamed or still >= OPEN_LINE_FACTOR * settle_seconds
        found.append(LandedFile(Path(os.fsdecode(entry.path)), rel, st.st_size, st.st_mtime, kind, name_error, final))
    return sorted(found, key=lambda f: f.relpath)


def _numbered_nonblank(data: bytes, first_no: int) -> list[tuple[int, bytes]]:
    return [(first_no + i, line) for i, line in enumerate(data.split(b"\n")) if line.strip()]


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text if len(text) <= RAW_KEEP else text[:RAW_KEEP] + f"... [{len(raw)} bytes]"


def read_content(landed: LandedFile) -> tuple[bytes | None, str | None]:
    """(the file's content, decompressed and without a UTF-8 BOM; None and why when the
    reader cannot take it). A partial gzip of a file still being written reads as None
    with reason ``"incomplete"``."""
    raw = landed.path.read_bytes()
    if landed.kind == "unsupported":
        return None, f"compressed in a format the reader does not take ({Path(landed.relpath).suffix})"
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            return None, "incomplete" if not landed.final else f"not a readable gzip file ({exc})"
    else:
        for magic, name in MAGIC.items():
            if raw.startswith(magic):
                return None, f"compressed as {name}, which the reader does not take"
        if landed.kind == "gzip":
            return None, "named .gz but not gzip-compressed"
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    return raw, None


def consumable_end(content: bytes, start: int, final: bool) -> int:
    """Where reading stops: the end, or after the last newline while the writer may still
    be on the final line."""
    if final or content.endswith(b"\n") or not content:
        return len(content)
    nl = content.rfind(b"\n", start)
    return nl + 1 if nl >= 0 else start


def plan_change(state: FileState | None, content: bytes) -> tuple[str, int, str | None]:
    """(event, offset to read from, reason) for a file the manifest knows as ``state``.

    Events: ``new``, ``unchanged``, ``appended`` (the content read so far is intact and
    ends a line: only the tail is new), ``rewritten`` / ``truncated`` (a new version: the
    earlier one is retired and the whole file is read again).
    """
    if state is None:
        return "new", 0, None
    end = state.offset_end
    intact = len(content) >= end and hashlib.sha256(memoryview(content)[:end]).hexdigest() == state.prefix_hash
    if intact and len(content) == end:
        return "unchanged", end, None
    if state.status in ("quarantined", "duplicate"):
        return "rewritten", 0, f"re-delivered after its version {state.version} was {state.status}"
    if not intact:
        if len(content) < end:
            return "truncated", 0, f"now {len(content)} bytes; {end} were read before"
        return "rewritten", 0, "content read before has changed"
    if end and content[end - 1:end] != b"\n":
        return "rewritten", 0, "its last line, read without a newline, was continued"
    return "appended", end, f"{len(content) - end} bytes appended after byte {end}"


def parse_file(spec: SourceSpec, landed: LandedFile, state: FileState | None = None) -> ParsedFile | None:
    """The next segment of one file to load, or None when there is nothing to load yet."""
    content, problem = read_content(landed)
    if problem == "incomplete":
        return None
    if content is None:
        raw = landed.path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        event, _, why = plan_change(state, raw) if state else ("new", 0, None)
        if event == "unchanged":
            return None
        pf = ParsedFile(landed, digest, 1, "quarantined", problem, quarantine=[(1, f"<{len(raw)} bytes>", problem)],
                        whole=True, offset_end=len(raw), prefix_hash=digest)
        return _versioned(pf, state, "new" if state is None else "rewritten", why)
    event, start, why = plan_change(state, content)
    if event == "unchanged":
        return None
    if event == "appended":
        end = consumable_end(content, start, landed.final)
        if end == start:
            return None  # only an unfinished line so far
        pf = _parse_segment(spec, landed, content, start, end, landed.name_error)
        if not pf.whole:
            pf.event, pf.version, pf.detail = "appended", state.version, pf.detail or why
            return pf
        why = "appended tail makes the whole file unreadable: " + (pf.detail or "")
        event = "rewritten"  # read it whole, as a fresh load would
    end = consumable_end(content, 0, landed.final)
    if end == 0 and content:
        return None
    pf = _parse_segment(spec, landed, content, 0, end, landed.name_error)
    return _versioned(pf, state, event, why)


def _versioned(pf: ParsedFile, state: FileState | None, event: str, why: str | None) -> ParsedFile:
    pf.event = event
    if state is not None:
        pf.version = state.version + 1
        pf.retire = state.file_ids
        pf.detail = why if not pf.detail else f"{why}; {pf.detail}"
    return pf


def _whole_problem(spec: SourceSpec, content: bytes, segment: bytes) -> str | None:
    """Why the file cannot be read at all, or None."""
    nul = segment.find(b"\x00")
    if nul >= 0:
        return f"binary content (NUL byte at offset {nul})"
    try:
        segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"file is not valid UTF-8 (byte 0x{segment[exc.start]:02x} at offset {exc.start})"
    if spec.fmt == "json" and content[:4096].lstrip()[:1] == b"[":
        return "a JSON array, not newline-delimited JSON (one object a line)"
    return None


def _parse_segment(spec: SourceSpec, landed: LandedFile, content: bytes, start: int, end: int,
                   unreadable: str | None = None) -> ParsedFile:
    """The records of ``content[start:end]`` (a whole file from 0, else an appended tail);
    ``unreadable`` quarantines them all with that reason."""
    h = hashlib.sha256(memoryview(content)[:end])
    prefix = h.hexdigest()
    if end != len(content):
        h.update(memoryview(content)[end:])
    digest = h.hexdigest()
    header_lines = 1 if spec.fmt == "csv" else 0
    header: list[str] = []
    data_start = header_end = start
    if spec.fmt == "csv":
        header_end = content.find(b"\n")
        header_end = len(content) if header_end < 0 else header_end + 1
        data_start = max(start, min(header_end, end))
    segment = content[data_start:end]
    first_no = content.count(b"\n", 0, data_start) - header_lines + 1
    done = dict(offset_start=start, offset_end=end, prefix_hash=prefix)
    if not content[:end].strip():
        return ParsedFile(landed, digest, 0, "empty", "file has no records", **done)
    reason = unreadable or _whole_problem(spec, content, content[start:end])
    if reason is None and spec.fmt == "csv":
        header_line = content[:header_end].decode("utf-8").strip("\r\n")
        header, reason = csv_header(spec, header_line)
    if reason:
        quarantine = [(no, _shown(line), reason) for no, line in _numbered_nonblank(segment, first_no)]
        return ParsedFile(landed, digest, len(quarantine), "quarantined", reason, quarantine=quarantine, whole=True,
                          **done)
    if not segment.strip():
        return ParsedFile(landed, digest, 0, "empty", "file has no records", header=header, **done)
    segment, long_lines = _blank_long_lines(segment, first_no)
    if not segment.strip():
        pf = ParsedFile(landed, digest, 0, "loaded", header=header)
    elif spec.fmt == "json":
        pf = _parse_json_lines(landed, digest, segment, first_no)
    else:
        pf = _parse_csv(landed, digest, segment, first_no, header)
    pf.quarantine = long_lines + pf.quarantine
    pf.records += len(long_lines)
    pf.offset_start, pf.offset_end, pf.prefix_hash = start, end, prefix
    return pf


def _blank_long_lines(segment: bytes, first_no: int) -> tuple[bytes, list[tuple[int, str, str]]]:
    """The segment with over-long lines emptied (line numbers kept), and their quarantine records."""
    if len(segment) <= MAX_RECORD_BYTES:
        return segment, []
    ends = np.flatnonzero(np.frombuffer(segment, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], ends + 1))
    ends = np.concatenate((ends, [len(segment)]))
    long = np.flatnonzero(ends - starts > MAX_RECORD_BYTES)
    if not len(long):
        return segment, []
    reason = f"line longer than {MAX_RECORD_BYTES} bytes"
    pieces, quarantine, pos = [], [], 0
    for i in long:
        s, e = int(starts[i]), int(ends[i])
        pieces.append(segment[pos:s])
        quarantine.append((first_no + int(i), _shown(segment[s:s + RAW_KEEP]), reason))
        pos = e
    pieces.append(segment[pos:])
    return b"".join(pieces), quarantine


def csv_header(spec: SourceSpec, header_line: str) -> tuple[list[str], str | None]:
    """(column names of a CSV header, why the file cannot be read by them or None)."""
    header = [h.strip().strip('"') for h in header_line.split(",")]
    if not set(header) & set(spec.column_names):
        return header, "CSV header has none of the expected columns: " + header_line[:200]
    names = [h or f"_c{i}" for i, h in enumerate(header)]
    lowered: dict[str, str] = {}
    for name in names:
        if name.lower() in lowered:
            # SQL names are case-insensitive: which of the two is the column is unknowable.
            return names, f"CSV header names differ only in case: {lowered[name.lower()]!r} and {name!r}"
        lowered[name.lower()] = name
    return names, None


def _row_numbers(kept: int, skipped: list[int], first_no: int, physical: np.ndarray | None = None) -> np.ndarray:
    """Line numbers of the rows the reader kept: every line it counted but the ones its
    handler skipped, mapped to physical lines when it did not count empty ones."""
    if skipped:
        counted = np.arange(1, kept + len(skipped) + 1, dtype=np.int64)
        numbers = np.setdiff1d(counted, np.asarray(skipped, dtype=np.int64))
    else:
        numbers = np.arange(1, kept + 1, dtype=np.int64)
    if len(numbers) != kept:  # the reader counted otherwise: keep the order, not the numbers
        numbers = np.arange(1, kept + 1, dtype=np.int64)
    if physical is not None and (len(numbers) == 0 or numbers[-1] <= len(physical)):
        numbers = physical[numbers - 1]
    return numbers + (first_no - 1)


def _nonempty_lines(data: bytes) -> np.ndarray | None:
    """Physical numbers of the lines that are not empty (CRLF's lone CR counts as empty),
    or None when no line is empty: a reader that skips empty lines counts only these."""
    if b"\n\n" not in data and b"\n\r\n" not in data and data[:1] not in (b"\n", b"\r"):
        return None
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], ends + 1))
    ends = np.concatenate((ends, [len(data)]))
    lengths = ends - starts
    crlf_empty = np.zeros(len(starts), dtype=bool)
    one = np.flatnonzero(lengths == 1)
    if len(one):
        buf = np.frombuffer(data, dtype=np.uint8)
        crlf_empty[one] = buf[starts[one]] == 13
    keep = (lengths > 0) & ~crlf_empty
    return np.flatnonzero(keep).astype(np.int64) + 1


def _parse_json_lines(landed: LandedFile, digest: str, data: bytes, first_no: int) -> ParsedFile:
    quarantine: list[tuple[int, str, str]] = []
    skipped: list[int] = []

    def invalid(row):  # only a line holding the \x01 separator lands here
        skipped.append(row.number or 0)
        quarantine.append(((row.number or 0) + first_no - 1, row.text, "control character \\x01 in record"))
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
    table = table.append_column("row_no", pa.array(_row_numbers(table.num_rows, skipped, first_no)))
    blank = pc.equal(pc.utf8_trim_whitespace(table["raw"]), "")
    table = table.filter(pc.invert(blank))
    records = table.num_rows + len(quarantine)
    return ParsedFile(landed, digest, records, "loaded", lines=table, quarantine=quarantine)


def _parse_csv(landed: LandedFile, digest: str, data: bytes, first_no: int, names: list[str]) -> ParsedFile:
    quarantine: list[tuple[int, str, str]] = []
    skipped: list[int] = []

    def invalid(row):
        skipped.append(row.number or 0)
        if row.text.strip():  # a whitespace-only line is no record
            reason = f"expected {row.expected_columns} columns, found {row.actual_columns}"
            quarantine.append((row.number or 0, row.text, reason))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 26, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True
        ),
    )
    # The reader skips empty lines without counting them: its numbers are of non-empty lines.
    physical = _nonempty_lines(data)
    table = table.append_column("row_no", pa.array(_row_numbers(table.num_rows, skipped, first_no, physical)))

    def line_no(n: int) -> int:
        if physical is not None and 0 < n <= len(physical):
            return int(physical[n - 1]) + first_no - 1
        return n + first_no - 1

    quarantine = [(line_no(n), text, reason) for n, text, reason in quarantine]
    # Records are what the reader kept plus what it set aside: counted, never asserted.
    return ParsedFile(landed, digest, table.num_rows + len(quarantine), "loaded", lines=table, header=names,
                      quarantine=quarantine)


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


MANIFEST_COLUMNS = (
    "file_id", "source", "path", "size_bytes", "mtime", "content_hash", "records", "rows_loaded", "rows_rescued",
    "rows_quarantined", "status", "detail", "run_id", "ingested_at", "version", "event", "offset_start",
    "offset_end", "prefix_hash", "dedup_key",
)
CHANGE_EVENTS = ("appended", "rewritten", "truncated")


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
                      coalesce(prefix_hash, content_hash) AS prefix_hash,
                      status, max(coalesce(version, 1)) OVER (PARTITION BY path) AS current
               FROM bronze.ingest_manifest WHERE source = ?)
           SELECT path, version, list(file_id ORDER BY file_id), arg_max(size_bytes, file_id), arg_max(mtime, file_id),
                  arg_max(offset_end, file_id), arg_max(prefix_hash, file_id), arg_max(status, file_id)
           FROM m WHERE version = current GROUP BY path, version""",
        [source],
    ).fetchall()
    states = {
        path: FileState(version, size or 0, mtime or 0.0, end or 0, prefix or "", status, tuple(ids))
        for path, version, ids, size, mtime, end, prefix, status in rows
    }
    current = {st.prefix_hash: path for path, st in states.items() if st.status != "duplicate" and st.prefix_hash}
    used = {k for (k,) in con.execute(
        "SELECT dedup_key FROM bronze.ingest_manifest WHERE source = ? AND dedup_key IS NOT NULL", [source]).fetchall()}
    return Known(states, current, used)


def ingest_source(
    con: duckdb.DuckDBPyConnection,
    landing_root: Path,
    source: str,
    run_id: str,
    settle_seconds: float = 2.0,
    batch_bytes: int = 256 * 1024 * 1024,
) -> IngestResult:
    """Ingest every new or changed complete file of one source. Safe to call again after any crash."""
    spec = SPECS[source]
    result = IngestResult(source)
    known = known_files(con, source)
    seen = {path: (st.size, st.mtime) for path, st in known.states.items()}
    files = discover(landing_root, source, seen, settle_seconds)
    result.files_seen = len(files)
    batch: list[LandedFile] = []
    size = 0
    for landed in files:
        batch.append(landed)
        size += landed.size
        if size >= batch_bytes:
            _load_batch(con, spec, batch, known, run_id, result)
            batch, size = [], 0
    if batch:
        _load_batch(con, spec, batch, known, run_id, result)
    return result


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


def _load_batch(con, spec: SourceSpec, batch: list[LandedFile], known: Known, run_id: str,
                result: IngestResult) -> None:
    # Parsing is pyarrow's C++ (GIL released): files of a batch are parsed side by side.
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        parsed = [pf for pf in pool.map(lambda f: parse_file(spec, f, known.states.get(f.relpath)), batch) if pf]
    result.files_waiting += len(batch) - len(parsed)
    if not parsed:
        return
    fault_point("after_parse")
    now = _utcnow()
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
            manifest.append([
                file_id, spec.name, pf.landed.relpath, pf.landed.size,
                datetime.fromtimestamp(pf.landed.mtime, timezone.utc).replace(tzinfo=None),
                pf.content_hash, records, loaded, rescued, quarantined, state, detail, run_id, now,
                pf.version, pf.event, pf.offset_start, pf.offset_end, pf.prefix_hash, key,
            ])
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


def file_changes(con: duckdb.DuckDBPyConnection, source: str | None = None) -> list[dict]:
    """Every appended tail and new version the manifest recorded, newest first:
    source, path, version, event, detail (the reason), ingested_at, file_id."""
    rows = con.execute(
        f"""SELECT source, path, version, event, detail, ingested_at, file_id FROM bronze.ingest_manifest
            WHERE event IN ({', '.join(repr(e) for e in CHANGE_EVENTS)}) AND (? IS NULL OR source = ?)
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
    return [i for (i,) in con.execute(
        """SELECT file_id FROM (SELECT file_id, coalesce(version, 1) AS v,
                                       max(coalesce(version, 1)) OVER (PARTITION BY path) AS current
                                FROM bronze.ingest_manifest WHERE source = ?) WHERE v < current ORDER BY 1""",
        [source],
    ).fetchall()]


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
