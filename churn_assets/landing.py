"""The landing contract, in one place: which sources land, in which folder and format, with
which fields, and how a complete data file is told from one still being written.

``SPECS`` is the one statement of the landing schema: the bronze DDL
(``churn_assets.warehouse``), the parser (``defs/bronze``) and the generator
(``churn_assets.generator``) all read it. ``discover`` is what sensors and bronze use to find
files. This module imports the standard library and ``timeutil`` only, so a sensor tick that
looks for files loads neither pyarrow, DuckDB nor Polars.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from churn_assets.timeutil import LANDING_TS_FORMAT


@dataclass(frozen=True)
class SourceSpec:
    name: str  # landing folder
    table: str  # bronze table
    fmt: str  # "json" (newline-delimited, one object a line) or "csv" (with header)
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) in file order
    timestamps: tuple[str, ...]  # VARCHAR columns written as LANDING_TS_FORMAT

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def extension(self) -> str:
        """The extension a file of this source is written with (the first one accepted)."""
        return EXTENSIONS[self.fmt][0]


SPECS = {
    "users": SourceSpec(
        "users",
        "churn_users_bronze",
        "json",
        (
            ("id", "VARCHAR"),
            ("firstname", "VARCHAR"),
            ("lastname", "VARCHAR"),
            ("email", "VARCHAR"),
            ("address", "VARCHAR"),
            ("canal", "VARCHAR"),
            ("country", "VARCHAR"),
            ("creation_date", "VARCHAR"),
            ("last_activity_date", "VARCHAR"),
            ("gender", "DOUBLE"),
            ("age_group", "DOUBLE"),
            ("churn", "BOOLEAN"),
        ),
        ("creation_date", "last_activity_date"),
    ),
    "orders": SourceSpec(
        "orders",
        "churn_orders_bronze",
        "json",
        (
            ("user_id", "VARCHAR"),
            ("id", "VARCHAR"),
            ("transaction_date", "VARCHAR"),
            ("item_count", "DOUBLE"),
            ("amount", "DOUBLE"),
        ),
        ("transaction_date",),
    ),
    "events": SourceSpec(
        "events",
        "churn_app_events",
        "csv",
        (
            ("user_id", "VARCHAR"),
            ("event_id", "VARCHAR"),
            ("platform", "VARCHAR"),
            ("date", "VARCHAR"),
            ("action", "VARCHAR"),
            ("session_id", "VARCHAR"),
            ("url", "VARCHAR"),
        ),
        ("date",),
    ),
}
SOURCES = tuple(SPECS)  # the landing folders, in the order the cycle reads them


def timestamp_regex(fmt: str) -> str:
    """A regular expression a value written with the strftime format ``fmt`` fully matches
    (numeric codes only: the landing format has no names of months or days)."""
    special = ".^$*+?()[]{}|\\"
    widths = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            out.append(r"\d{%d}" % widths[fmt[i + 1]])  # a code it does not know is a KeyError, not a guess
            i += 2
        else:
            out.append("\\" + fmt[i] if fmt[i] in special else fmt[i])
            i += 1
    return "".join(out)


# What a landed timestamp looks like, derived from the one format (``06-02-2023 06:49:21``).
TIMESTAMP_REGEX = timestamp_regex(LANDING_TS_FORMAT)

# Data files are taken by an allow-list of extensions: anything else in a landing folder (a
# writer's temporary such as .part, .filepart, .partial, .tmp; markers such as _SUCCESS)
# is not data, and a file renamed from such a name into place is read once, complete.
EXTENSIONS = {"json": (".json", ".jsonl", ".ndjson"), "csv": (".csv",)}
GZIP_SUFFIX = ".gz"  # taken: decompressed in memory, then read like the plain file
# The allow-list in words, for the reports that name files it left unread.
ACCEPTED = "; ".join(
    f"{', '.join(s.name for s in SPECS.values() if s.fmt == fmt)}: {' '.join(exts)} (+{GZIP_SUFFIX})"
    for fmt, exts in EXTENSIONS.items()
)
# Compressions the reader does not take: such a file is quarantined with the reason.
UNSUPPORTED_COMPRESSION = (".zip", ".bz2", ".xz", ".zst", ".7z", ".lz4", ".br")
# Names writers give a file before renaming it into place (or beside it): never data, and not
# worth a report either. Hidden and underscore names are the others (``is_temporary``).
WRITER_SUFFIXES = (".tmp", ".part", ".filepart", ".partial", ".crc", "~")
# A final line without its newline is read only once the file has been still this many
# settle windows (or was renamed into place): before that the writer may still be on it.
OPEN_LINE_FACTOR = 10


def is_temporary(name: str) -> bool:
    """A writer's temporary, a hidden file or a marker (``_SUCCESS``): ignored without a report."""
    return name.startswith((".", "_")) or name.lower().endswith(WRITER_SUFFIXES)


def data_kind(name: str, fmt: str) -> str | None:
    """'plain', 'gzip' or 'unsupported' (compressed in a way the reader does not take), or
    None for a name that is not a data file of format ``fmt``."""
    if is_temporary(name):
        return None
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


def _safe_name(name: str) -> tuple[str, str | None]:
    """(a UTF-8 spelling of a directory entry's name, why the real name is not UTF-8 or None)."""
    try:
        name.encode("utf-8")
        return name, None
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, f"file name is not valid UTF-8: {shown}"


def _walk(folder: str, rel: str, name_error: str | None = None) -> Iterator[tuple[os.DirEntry, str, str | None]]:
    """Every regular file under ``folder`` as (entry, path relative to the landing root, why its
    name is not UTF-8 or None), sub-folders included: exports are often partitioned by date
    (``orders/dt=2026-11-24/part-0.json``). Temporary folders are writers' work areas
    (``_temporary``, ``.staging``): not entered. Symbolic links are not followed."""
    for entry in os.scandir(folder):
        shown, error = _safe_name(entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not is_temporary(entry.name):
                yield from _walk(entry.path, f"{rel}/{shown}", name_error or error)
        elif entry.is_file(follow_symlinks=False):
            yield entry, f"{rel}/{shown}", name_error or error


def discover(
    landing_root: Path,
    source: str,
    known: Mapping[str, tuple],
    settle_seconds: float,
    now: float | None = None,
) -> list[LandedFile]:
    """Data files of one source, sub-folders included, that are new or changed since the
    manifest saw them, and complete: still for ``settle_seconds`` (size and mtime unchanged)
    or renamed into place. ``known`` maps a path to the (size, mtime) last recorded and,
    third, whether its last line was left unread (the writer may have been on it): such a file
    is offered again, unchanged, once that line is final. Oldest name first."""
    folder = landing_root / source
    if not folder.is_dir():
        return []
    fmt = SPECS[source].fmt
    now = now if now is not None else datetime.now().timestamp()
    found = []
    for entry, rel, name_error in _walk(os.fsdecode(folder), source):
        kind = data_kind(entry.name, fmt)
        if kind is None:
            continue
        st = entry.stat(follow_symlinks=False)
        # A rename changes the inode's ctime, not its mtime: ctime past mtime means the
        # last write was followed by a rename (or chmod) into place, so writing is over.
        renamed = st.st_ctime_ns > st.st_mtime_ns
        still = now - st.st_mtime
        final = renamed or still >= OPEN_LINE_FACTOR * settle_seconds
        seen = known.get(rel) if isinstance(known, Mapping) else None
        if seen is not None and seen[0] == st.st_size and abs(seen[1] - st.st_mtime) < 1e-5:
            open_tail = len(seen) > 2 and seen[2]
            if not (open_tail and final):
                continue  # unchanged since it was read (and nothing left unread it may take now)
        if still < settle_seconds and not renamed:
            continue  # still being written (or just finished): take it next time
        found.append(LandedFile(Path(os.fsdecode(entry.path)), rel, st.st_size, st.st_mtime, kind, name_error, final))
    return sorted(found, key=lambda f: f.relpath)


def unrecognized_files(landing_root: Path, source: str) -> list[str]:
    """Files of a source folder (sub-folders included) that are neither data files of its
    format nor writers' temporaries (``is_temporary``): never read, so reported by name
    (``orders/export.txt``, ``events/day.tsv``, ``users/a.json.1``)."""
    folder = landing_root / source
    if not folder.is_dir():
        return []
    fmt = SPECS[source].fmt
    return sorted(
        rel
        for entry, rel, _ in _walk(os.fsdecode(folder), source)
        if data_kind(entry.name, fmt) is None and not is_temporary(entry.name)
    )
