"""Search files for the personal values of known customers: e-mails, address lines, first
and last names, wherever and however a file keeps them.

Every file is read as bytes and searched as text (UTF-8), after undoing the escapes a
value picks up on its way out: JSON (``\\n``, ``\\u00e9``, at any depth), HTML (``&#x27;``)
and URL (``%40``) escapes. Containers are opened and searched inside too: gzip and zlib
streams, zip archives, base64 runs (images in metadata, encoded payloads), every cell of
a SQLite database (zlib blobs decompressed, as Dagster keeps its run snapshots), every
value of a DuckDB or Parquet file. The raw bytes are always searched as well, so that
deleted rows left in a SQLite page still count; in them, as in any bytes, only runs of at
least ``MIN_TEXT_RUN`` printable characters are read as text (the ``strings`` rule), so
that compressed or image bytes do not spell a short name by chance.

Matching is by whole tokens (runs of letters and digits), so "Mary" is found in
"Hello Mary," but not in "Maryland". A value of several tokens matches as a sequence,
whatever separates the tokens. E-mails and address lines are matched case-insensitively
(they are long and specific); names case-sensitively, as capitalized in the source and as
silver capitalizes them, because lower-case "will", "page" or "long" are ordinary words.
Names shorter than ``MIN_NAME_LENGTH`` are not searched (see there).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import io
import json
import re
import sqlite3
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Names of 1-2 characters ("Al", "Jo", "Ed") are too short to tell a name from an
# abbreviation or a code fragment ("Al" for aluminium, "Ed" in a hex dump); from 3 on
# ("Amy", "Roy", "Kim", "Cox"), a capitalized whole token equal to a customer's name is
# counted. On the shared sample this leaves out no last name and only a handful of first
# names, each still searched as part of the customer's e-mail and address.
MIN_NAME_LENGTH = 3
# An address line shorter than this ("Apt 1") is a fragment, not an address.
MIN_ADDRESS_LINE_LENGTH = 8

# Printable runs shorter than this in bytes are noise: in random bytes a bounded
# three-letter capitalized token turns up about once every few megabytes.
MIN_TEXT_RUN = 8
# A run this long of base64 characters is decoded and searched as bytes, not as text: its
# letters would otherwise be read as random tokens (a PNG in metadata spells "Orr").
MIN_BASE64_RUN = 64

TOKEN = re.compile(r"[^\W_]+")
PRINTABLE_RUN = re.compile(r"[^\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]{%d,}" % MIN_TEXT_RUN)
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{%d,}={0,2}" % MIN_BASE64_RUN)
_JSON_UNICODE = re.compile(r"\\+u([0-9a-fA-F]{4})")
_JSON_CONTROL = re.compile(r"\\+[nrtbf]")
_JSON_OTHER = re.compile(r"\\+([\"/'\\])")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Needle:
    kind: str  # email | address | first name | last name
    value: str
    tokens: tuple[str, ...]
    fold: bool  # compare case-insensitively


@dataclass(frozen=True)
class Hit:
    where: str  # file, and the part of it (e.g. "runs.db table event_logs row 12")
    kind: str
    value: str
    context: str


@dataclass
class Report:
    files: int = 0
    bytes: int = 0
    views: int = 0  # decoded texts searched (a file, a member, a cell...)
    sqlite_rows: int = 0
    table_rows: int = 0  # DuckDB / Parquet rows
    hits: list[Hit] = field(default_factory=list)


def initcap(name: str) -> str:
    """Silver's capitalization (Spark's initcap): words on spaces, first letter upper."""
    return " ".join(w[:1].upper() + w[1:].lower() for w in name.lower().split(" "))


def _tokens(text: str, fold: bool) -> tuple[str, ...]:
    found = TOKEN.findall(text)
    return tuple(t.casefold() for t in found) if fold else tuple(found)


def needles_for(users: Iterable[dict], min_name_length: int = MIN_NAME_LENGTH) -> tuple[list[Needle], dict[str, int]]:
    """The values to search for, from customer records with ``firstname``, ``lastname``,
    ``email``, ``address``; and how many values of each kind were left out as too short."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    needles: list[Needle] = []
    skipped: dict[str, int] = {}

    def add(kind: str, value: str, fold: bool) -> None:
        tokens = _tokens(value, fold)
        if tokens and (kind, tokens) not in seen:
            seen.add((kind, tokens))
            needles.append(Needle(kind, value, tokens, fold))

    for user in users:
        if user.get("email"):
            add("email", user["email"].strip(), fold=True)
        for line in (user.get("address") or "").splitlines():
            line = line.strip()
            if len(line) >= MIN_ADDRESS_LINE_LENGTH:
                add("address", line, fold=True)
            elif line:
                skipped["address"] = skipped.get("address", 0) + 1
        for kind, column in (("first name", "firstname"), ("last name", "lastname")):
            name = (user.get(column) or "").strip()
            if not name:
                continue
            if len(name) < min_name_length:
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            for variant in {name, initcap(name)}:
                add(kind, variant, fold=False)
    return needles, skipped


class Matcher:
    def __init__(self, needles: list[Needle]):
        self.needles = needles
        self._exact: dict[str, list[Needle]] = {}
        self._folded: dict[str, list[Needle]] = {}
        for n in needles:
            (self._folded if n.fold else self._exact).setdefault(n.tokens[0], []).append(n)

    def find(self, text: str) -> Iterator[tuple[Needle, int, int]]:
        """(needle, start, end) of every whole-token occurrence in ``text``."""
        spans = [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(text)]
        words = [s[0] for s in spans]
        folded = [w.casefold() for w in words]
        for i in range(len(words)):
            for index, seq in ((self._exact, words), (self._folded, folded)):
                for n in index.get(seq[i], ()):
                    k = len(n.tokens)
                    if tuple(seq[i : i + k]) == n.tokens:
                        yield n, spans[i][1], spans[i + k - 1][2]


def unescape(text: str) -> str:
    """Undo JSON escapes (at any nesting depth), HTML entities and URL encoding."""
    text = _JSON_UNICODE.sub(lambda m: chr(int(m.group(1), 16)), text)
    text = _JSON_CONTROL.sub(" ", text)
    text = _JSON_OTHER.sub(r"\1", text)
    text = html.unescape(text)
    if "%" in text:
        text = urllib.parse.unquote_plus(text)
    return text


def _decompressed(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The contents of ``data`` if it is a gzip or zlib stream or a zip archive."""
    if data[:2] == b"\x1f\x8b":
        try:
            yield "gzip", gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            pass
    elif data[:1] == b"\x78":
        try:
            yield "zlib", zlib.decompress(data)
        except zlib.error:
            pass
    elif data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for name in archive.namelist():
                    yield f"zip member {name}", archive.read(name)
        except (zipfile.BadZipFile, OSError):
            pass


class Scanner:
    """``static``: per file label, text the project ships unchanged in that file whatever the
    data (a bundled JavaScript library), removed before the search; it must be present."""

    def __init__(self, needles: list[Needle], static: dict[str, list[str]] | None = None):
        self.matcher = Matcher(needles)
        self.static = static or {}
        self.report = Report()

    # --- entry points ---------------------------------------------------------------------

    def scan_tree(self, root: Path, skip: Iterable[Path] = ()) -> Report:
        """Every file under ``root`` except those under a path of ``skip``."""
        skip = [p.resolve() for p in skip]
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(path.resolve().is_relative_to(s) for s in skip):
                self.scan_file(path, label=str(path.relative_to(root)))
        return self.report

    def scan_file(self, path: Path, label: str | None = None) -> None:
        data = path.read_bytes()
        label = label or str(path)
        self.report.files += 1
        self.report.bytes += len(data)
        for text in self.static.get(label, []):
            blob = text.encode()
            if blob not in data:
                raise ValueError(f"{label} no longer contains the static text it is said to ship")
            data = data.replace(blob, b" ")
        self.scan_bytes(data, label)
        if data.startswith(SQLITE_MAGIC):
            self._scan_sqlite(path, label)
        elif data[8:12] == b"DUCK" or data[:4] == b"PAR1":
            self._scan_duckdb(path, label, parquet=data[:4] == b"PAR1")

    def scan_bytes(self, data: bytes, where: str, depth: int = 0) -> None:
        text = "\n".join(PRINTABLE_RUN.findall(data.decode("utf-8", errors="replace")))
        self.scan_text(text, where, depth)
        if depth < 3:
            for part, inner in _decompressed(data):
                self.scan_bytes(inner, f"{where} ({part})", depth + 1)

    def scan_text(self, text: str, where: str, depth: int = 0) -> None:
        self.report.views += 1
        if depth < 3:
            for run in BASE64_RUN.findall(text):
                try:
                    decoded = base64.b64decode(run + "=" * (-len(run) % 4))
                except (binascii.Error, ValueError):
                    continue
                self.scan_bytes(decoded, f"{where} (base64)", depth + 1)
        text = BASE64_RUN.sub(" ", text)
        for variant in {text, unescape(text)}:
            for needle, start, end in self.matcher.find(variant):
                context = variant[max(0, start - 40) : end + 40].replace("\n", " ")
                hit = Hit(where, needle.kind, needle.value, context)
                if hit not in self.report.hits:
                    self.report.hits.append(hit)

    # --- databases --------------------------------------------------------------------------

    def _scan_sqlite(self, path: Path, label: str) -> None:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for n, row in enumerate(db.execute(f'SELECT * FROM "{table}"')):
                    self.report.sqlite_rows += 1
                    for value in row:
                        where = f"{label} table {table} row {n}"
                        if isinstance(value, bytes):
                            self.scan_bytes(value, where)
                        elif isinstance(value, str):
                            self.scan_text(value, where)
        finally:
            db.close()

    def _scan_duckdb(self, path: Path, label: str, parquet: bool) -> None:
        import duckdb

        con = duckdb.connect()
        try:
            if parquet:
                relations = {"parquet": f"read_parquet('{path}')"}
            else:
                con.execute(f"ATTACH '{path}' AS scanned (READ_ONLY)")
                relations = {
                    f"{s}.{t}": f'scanned."{s}"."{t}"'
                    for s, t in con.execute(
                        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'scanned'"
                    ).fetchall()
                }
            for name, relation in relations.items():
                for n, row in enumerate(con.execute(f"SELECT * FROM {relation}").fetchall()):
                    self.report.table_rows += 1
                    self.scan_text(json.dumps([str(v) for v in row], ensure_ascii=False), f"{label} {name} row {n}")
        finally:
            con.close()


def needles_of_landed_users(users_dir: Path, min_name_length: int = MIN_NAME_LENGTH):
    """Needles from newline-delimited JSON user files as landed (the shared sample)."""
    users = []
    for path in sorted(users_dir.glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                users.append(json.loads(line))
    needles, skipped = needles_for(users, min_name_length)
    return users, needles, skipped
