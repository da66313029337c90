"""Landed bytes -> records: reading a file (gzip, BOM, what the reader refuses), then its new
segment line by line with pyarrow's C++ reader.

Records become lines (JSON: ``raw``; CSV: the header's columns) numbered as in the file; the
SQL of ``rows_sql.py`` then decides which fit the schema. Records that cannot be read go to
quarantine with a reason; a file that cannot be read at all (its name, encoding, header,
binary content, a JSON array, a compression the reader does not take) is quarantined whole.
Never the batch, never the source.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from churn_assets.defs.bronze.versions import FileState, consumable_end, plan_change
from churn_assets.landing import LandedFile, SourceSpec

BOM = b"\xef\xbb\xbf"
MAGIC = {b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
GZIP_MAGIC = b"\x1f\x8b"
# A record longer than this is quarantined (the contract's records are < 1 kB); it also
# keeps every line well under the reader's block size.
MAX_RECORD_BYTES = 1 << 20
RAW_KEEP = 4096  # characters of an over-long or binary record kept in quarantine
_NONBLANK = re.compile(rb"\S")  # what bytes.strip() would keep: searched in place, no copy
# Lineage columns beside a file's own: each name holds a comma, which no CSV header name can
# (the header is split at commas), so no column of a landed file collides with them.
ROW_NO, FILE_ID, SOURCE_FILE = ",row_no", ",file_id", ",source_file"


@dataclass
class ParsedFile:
    landed: LandedFile
    content_hash: str  # SHA-256 of the whole content read (decompressed, without a BOM)
    records: int  # records landed in this segment (non-blank lines; CSV header excluded)
    status: str  # loaded | empty | quarantined
    detail: str | None = None
    lines: pa.Table | None = None  # JSON: (raw, ROW_NO); CSV: header columns + ROW_NO
    header: list[str] = field(default_factory=list)
    quarantine: list[tuple[int, str, str]] = field(default_factory=list)  # (row_no, raw, reason)
    event: str = "new"  # new | appended | rewritten | truncated
    version: int = 1
    offset_start: int = 0
    offset_end: int = 0
    prefix_hash: str = ""
    retire: tuple[int, ...] = ()  # file ids of the earlier version this one replaces
    whole: bool = False  # quarantined as a whole file (not record by record)


def _numbered_nonblank(data: bytes, first_no: int) -> list[tuple[int, bytes]]:
    return [(first_no + i, line) for i, line in enumerate(data.split(b"\n")) if line.strip()]


def _shown(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text if len(text) <= RAW_KEEP else text[:RAW_KEEP] + f"... [{len(raw)} bytes]"


def read_content(landed: LandedFile) -> tuple[bytes | None, str | None]:
    """(the file's content, decompressed, without a UTF-8 BOM and with CR-only line breaks
    read as "\n"; None and why when the reader cannot take it). A partial gzip of a file still
    being written reads as None with reason ``"incomplete"``."""
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
        raw = raw[len(BOM) :]
    return cr_lines_as_lf(raw), None


def cr_lines_as_lf(content: bytes) -> bytes:
    """``content`` with its line breaks as "\n" when they are classic-Mac CRs (Excel's "CSV
    (Macintosh)"): the file's first line break is a lone CR. Each lone CR becomes "\n", byte
    for byte, so offsets and line numbers stay the file's; other files are returned as they are."""
    nl = content.find(b"\n")
    cr = content.find(b"\r", 0, len(content) if nl < 0 else nl)
    if cr < 0:
        return content
    after = cr
    while content[after : after + 1] == b"\r":
        after += 1
    if content[after : after + 1] == b"\n":  # CRLF (or CRs before an LF): LF lines
        return content
    return re.sub(rb"\r(?![\r\n])", b"\n", content)


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
        pf = ParsedFile(
            landed,
            digest,
            1,
            "quarantined",
            problem,
            quarantine=[(1, f"<{len(raw)} bytes>", problem)],
            whole=True,
            offset_end=len(raw),
            prefix_hash=digest,
        )
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


def _valid_utf8(data: bytes) -> bool:
    """Arrow's UTF-8 check, in place (decoding to a str would allocate the file's size again);
    Python's decoder then says where a file it refuses goes wrong."""
    one = pa.Array.from_buffers(
        pa.large_string(), 1, [None, pa.py_buffer(np.array([0, len(data)], dtype=np.int64)), pa.py_buffer(data)]
    )
    try:
        one.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _whole_problem(spec: SourceSpec, content: bytes, segment: bytes) -> str | None:
    """Why the file cannot be read at all, or None."""
    nul = segment.find(b"\x00")
    if nul >= 0:
        return f"binary content (NUL byte at offset {nul})"
    if not _valid_utf8(segment):
        try:
            segment.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"file is not valid UTF-8 (byte 0x{segment[exc.start]:02x} at offset {exc.start})"
    if spec.fmt == "json" and content[:4096].lstrip()[:1] == b"[":
        return "a JSON array, not newline-delimited JSON (one object a line)"
    return None


def _parse_segment(
    spec: SourceSpec, landed: LandedFile, content: bytes, start: int, end: int, unreadable: str | None = None
) -> ParsedFile:
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
    if not _NONBLANK.search(content, 0, end):
        return ParsedFile(landed, digest, 0, "empty", "file has no records", **done)
    reason = unreadable or _whole_problem(spec, content, content[start:end])
    if reason is None and spec.fmt == "csv":
        header_line = content[:header_end].decode("utf-8").strip("\r\n")
        header, reason = csv_header(spec, header_line)
    if reason:
        quarantine = [(no, _shown(line), reason) for no, line in _numbered_nonblank(segment, first_no)]
        return ParsedFile(
            landed, digest, len(quarantine), "quarantined", reason, quarantine=quarantine, whole=True, **done
        )
    if not _NONBLANK.search(segment):
        return ParsedFile(landed, digest, 0, "empty", "file has no records", header=header, **done)
    segment, long_lines, spans = _blank_long_lines(segment, first_no)
    if long_lines and not _NONBLANK.search(segment):
        pf = ParsedFile(landed, digest, 0, "loaded", header=header)
    elif spec.fmt == "json":
        pf = _parse_json_lines(landed, digest, segment, first_no, spans)
    else:
        pf = _parse_csv(landed, digest, segment, first_no, header, spans)
    pf.quarantine = long_lines + pf.quarantine
    pf.records += len(long_lines)
    pf.offset_start, pf.offset_end, pf.prefix_hash = start, end, prefix
    return pf


Spans = tuple[np.ndarray, np.ndarray]  # (start, end) offsets of each line, its "\n" excluded


def _line_spans(data: bytes, spans: Spans | None = None) -> Spans:
    """The lines of ``data`` split at "\n" (``spans`` when they were found already)."""
    if spans is not None:
        return spans
    breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return np.concatenate(([0], breaks + 1)), np.concatenate((breaks, [len(data)]))


def _may_hold_long_line(data: bytes) -> bool:
    """Whether a line of ``data`` may be longer than MAX_RECORD_BYTES: such a line holds a whole
    aligned window of half that size, so a "\n" in every window rules it out. A few ``find``s
    that stop at the window's first line break, where finding every line would scan it all."""
    window = MAX_RECORD_BYTES // 2
    return any(data.find(b"\n", at, at + window) < 0 for at in range(0, len(data) - window + 1, window))


def _blank_long_lines(segment: bytes, first_no: int) -> tuple[bytes, list[tuple[int, str, str]], Spans | None]:
    """The segment with over-long lines emptied (line numbers kept), their quarantine records,
    and the segment's line spans when it had to find them and the segment is unchanged."""
    if not _may_hold_long_line(segment):
        return segment, [], None
    starts, ends = _line_spans(segment)
    long = np.flatnonzero(ends - starts > MAX_RECORD_BYTES)
    if not len(long):
        return segment, [], (starts, ends)
    segment, quarantine = _blank_lines(
        segment, (starts, ends), long, first_no, f"line longer than {MAX_RECORD_BYTES} bytes"
    )
    return segment, quarantine, None


def _blank_lines(
    data: bytes, spans: Spans, which: np.ndarray, first_no: int, reason: str
) -> tuple[bytes, list[tuple[int, str, str]]]:
    """``data`` with the lines ``which`` (indices into ``spans``, ascending) emptied, their
    "\n" kept so that every other line keeps its number; and their quarantine records."""
    starts, ends = spans
    pieces, quarantine, pos = [], [], 0
    for i in which:
        s, e = int(starts[i]), int(ends[i])
        pieces.append(data[pos:s])
        quarantine.append((first_no + int(i), _shown(data[s : min(e, s + RAW_KEEP)].rstrip(b"\r")), reason))
        pos = e
    pieces.append(data[pos:])
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


def _nonempty_lines(data: bytes, spans: Spans | None = None) -> tuple[np.ndarray | None, int]:
    """(physical numbers of the lines that are not empty (CRLF's lone CR counts as empty), or
    None when no line but the last is empty; how many they are): a reader that skips empty
    lines counts only these."""
    starts, ends = _line_spans(data, spans)
    buf = np.frombuffer(data, dtype=np.uint8)
    lengths = ends - starts
    empty = lengths == 0
    one = np.flatnonzero(lengths == 1)
    empty[one] = buf[starts[one]] == 13
    if not empty[:-1].any():
        return None, len(empty) - int(empty[-1])
    physical = np.flatnonzero(~empty).astype(np.int64) + 1
    return physical, len(physical)


# Arrow string views address their bytes by (buffer, 32-bit offset): a segment is exposed as
# overlapping buffers of VIEW_CHUNK bytes, each long enough to end every line it starts.
VIEW_CHUNK = 1 << 30
VIEW_INLINE = 12  # a string of up to 12 bytes is held in its view itself


# Arrays built from their buffers, not with pa.array: that asks pyarrow's pandas shim about its
# input, which imports pandas (0.5 s) into every run that ingests a file (continuous mode's latency).
def numbers_array(values: np.ndarray, dtype=np.int64) -> pa.Array:
    """An Arrow integer array of ``values`` (int64 or int32), without a copy when they already are."""
    values = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def text_array(value: str) -> pa.Array:
    """A one-element Arrow string array."""
    data = value.encode("utf-8")
    return pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(np.array([0, len(data)], dtype=np.int32)), pa.py_buffer(data)]
    )


def line_views(data: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Arrow strings ``data[starts[i]:ends[i]]`` as views into ``data``: no byte is copied.
    Every line is at most MAX_RECORD_BYTES long (longer ones were blanked before)."""
    n = len(starts)
    lengths = (ends - starts).astype(np.int32)
    views = np.zeros((n, 4), dtype=np.int32)  # length | prefix or inline bytes | buffer | offset
    views[:, 0] = lengths
    raw_views = views.view(np.uint8)
    buf = np.frombuffer(data, dtype=np.uint8)
    long = np.flatnonzero(lengths > VIEW_INLINE)
    for k in range(4):
        raw_views[long, 4 + k] = buf[starts[long] + k]
    views[long, 2] = starts[long] // VIEW_CHUNK
    views[long, 3] = starts[long] % VIEW_CHUNK
    short = np.flatnonzero((lengths <= VIEW_INLINE) & (lengths > 0))
    for k in range(VIEW_INLINE):
        short = short[lengths[short] > k]
        raw_views[short, 4 + k] = buf[starts[short] + k]
    whole = memoryview(data)
    reach = VIEW_CHUNK + MAX_RECORD_BYTES + 2  # a line and its "\r\n"
    chunks = [pa.py_buffer(whole[at : at + reach]) for at in range(0, max(len(data), 1), VIEW_CHUNK)]
    return pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), *chunks])


def _parse_json_lines(
    landed: LandedFile, digest: str, data: bytes, first_no: int, spans: Spans | None = None
) -> ParsedFile:
    # Every physical line (split at "\n", trailing "\r"s dropped) is one value. ``data`` is
    # valid UTF-8 (checked before) and "\n" never splits a character.
    starts, ends = _line_spans(data, spans)
    ends = ends.copy()  # trimmed below
    buf = np.frombuffer(data, dtype=np.uint8)
    cr = np.flatnonzero(ends > starts)
    cr = cr[buf[ends[cr] - 1] == 13]  # CRLF: at most one "\r" on most lines
    ends[cr] -= 1
    cr = cr[ends[cr] > starts[cr]]
    for i in cr[buf[ends[cr] - 1] == 13]:  # more: a rare line, trimmed on its own
        ends[i] = starts[i] + len(data[starts[i] : ends[i]].rstrip(b"\r"))
    # Blank lines: empty, or white space only (only a line not opening with "{" can be).
    blank = ends == starts
    maybe = np.flatnonzero(~blank)
    maybe = maybe[buf[starts[maybe]] != ord("{")]
    if len(maybe):
        texts = pa.array([data[starts[i] : ends[i]].decode("utf-8") for i in maybe], pa.string())
        blank[maybe] = pc.utf8_is_space(texts).to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(~blank)
    table = pa.table({"raw": line_views(data, starts[keep], ends[keep]), ROW_NO: numbers_array(keep + first_no)})
    return ParsedFile(landed, digest, table.num_rows, "loaded", lines=table)


# One event a line (the contract): a quoted field runs on to the next line only when a line
# ends inside it. A line is closed when it is fields separated by "," (or a CR, which ends a
# record for the reader too), each unquoted, or quoted with "" for a quote and text after
# its closing quote: the reader's own rules, where a quote opens a field only at its start.
_FIELD = rb'(?:"(?:[^"]|"")*"(?!")[^,\r]*|[^,\r"][^,\r]*|)'
_CLOSED_LINE = re.compile(_FIELD + rb"(?:[,\r]" + _FIELD + rb")*")
CSV_BLOCK_BYTES = 1 << 26  # the reader's block: a quoted field across its end puts the reader out of sync
UNCLOSED_QUOTE = "quoted field not closed on its line (the contract has one event a line)"


def unclosed_quote_lines(data: bytes, spans: Spans | None = None) -> np.ndarray:
    """Indices of the lines of ``data`` that end inside a quoted field (only a line holding a
    quote can): the reader would run the lines after them into that field."""
    starts, ends = _line_spans(data, spans)
    quotes = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord('"'))
    maybe = np.unique(np.searchsorted(starts, quotes, side="right") - 1)
    return np.array(
        [i for i in maybe if not _CLOSED_LINE.fullmatch(data, int(starts[i]), int(ends[i]))], dtype=np.int64
    )


def _last_line_unclosed(data: bytes) -> bool:
    """Whether the last non-empty line ends inside a quoted field: it runs over no line after
    it, so the reader's count does not show it. One line searched, from the end."""
    end = len(data)
    while end and data[end - 1] in b"\r\n":
        end -= 1
    start = data.rfind(b"\n", 0, end) + 1
    return data.find(b'"', start, end) >= 0 and not _CLOSED_LINE.fullmatch(data, start, end)


def _read_csv(data: bytes, names: list[str]) -> tuple[pa.Table, list[tuple[int, str, str]], list[int]]:
    """(the rows Arrow's reader keeps, the lines it set aside as quarantine records, the
    reader's numbers of every line it set aside); line numbers as the reader counts them."""
    quarantine: list[tuple[int, str, str]] = []
    skipped: list[int] = []

    def invalid(row):
        skipped.append(row.number or 0)
        if row.text.strip():  # a whitespace-only line is no record
            reason = f"expected {row.expected_columns} columns, found {row.actual_columns}"
            quarantine.append((row.number or 0, row.text, reason))
        return "skip"

    table = pacsv.read_csv(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pacsv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(
            newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True
        ),
    )
    return table, quarantine, skipped


def _parse_csv(
    landed: LandedFile, digest: str, data: bytes, first_no: int, names: list[str], spans: Spans | None = None
) -> ParsedFile:
    try:
        table, quarantine, skipped = _read_csv(data, names)
    except pa.ArrowInvalid:  # out of sync: a quoted field ran across a block boundary
        table = None
    # The reader skips empty lines without counting them: its numbers are of non-empty lines.
    physical, counted = _nonempty_lines(data, spans)
    unclosed: list[tuple[int, str, str]] = []
    if table is None or (table.num_rows + len(skipped) != counted and b'"' in data) or _last_line_unclosed(data):
        # A quoted field ran over line breaks: the lines after its own would be lost in it
        # (or, on the last line, its value would take the line break; an appended tail read
        # later would not run into it, a fresh load would). The lines that open a quote they
        # do not close are quarantined; the rest is read again.
        spans = _line_spans(data, spans)
        data, unclosed = _blank_lines(data, spans, unclosed_quote_lines(data, spans), first_no, UNCLOSED_QUOTE)
        physical, _ = _nonempty_lines(data)
        try:
            table, quarantine, skipped = _read_csv(data, names)
        except pa.ArrowInvalid as exc:  # not expected: every line is closed now; still, no crash
            reason = f"CSV reader failed: {exc}"
            quarantine = [(no, _shown(line), reason) for no, line in _numbered_nonblank(data, first_no)]
            return ParsedFile(
                landed,
                digest,
                len(unclosed) + len(quarantine),
                "quarantined",
                reason,
                header=names,
                quarantine=sorted(unclosed + quarantine),
            )
    table = table.append_column(ROW_NO, numbers_array(_row_numbers(table.num_rows, skipped, first_no, physical)))

    def line_no(n: int) -> int:
        if physical is not None and 0 < n <= len(physical):
            return int(physical[n - 1]) + first_no - 1
        return n + first_no - 1

    quarantine = [(line_no(n), text, reason) for n, text, reason in quarantine]
    if unclosed:
        quarantine = sorted(unclosed + quarantine)
    # Records are what the reader kept plus what it set aside: counted, never asserted.
    return ParsedFile(
        landed, digest, table.num_rows + len(quarantine), "loaded", lines=table, header=names, quarantine=quarantine
    )
