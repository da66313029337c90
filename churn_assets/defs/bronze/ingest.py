"""Exactly-once, crash-safe ingestion of landing files into the bronze tables.

How a file moves:
1. ``landing.discover``: data files (an allow-list of extensions) in ``landing/<source>/``
   and its sub-folders that are new or changed since the manifest recorded their size and
   mtime (or left an unfinished last line now final, or duplicated a content since
   retired), and complete: still for the settle time, or renamed into place.
2. ``parse.parse_file``: read, hashed (SHA-256), compared with what the manifest holds
   (``versions.plan_change``): a new file or a new version is read whole, an appended tail
   alone. Records that fit the expected schema become typed rows (``rows_sql``); records that
   parse but do not fit keep their raw text in ``_rescued_data``; records that cannot be
   read go to quarantine with a reason; a file that cannot be read at all is quarantined
   whole. Never the batch, never the source.
3. ``load.load_batch``: the rows, quarantine records and manifest line of a batch of files
   (``batches``: up to ``batch_bytes`` of landed bytes), and the retirement of the earlier
   version a file replaces, are written in one DuckDB transaction, so a crash leaves either
   all of a file's segment or none of it.

Invariant, per file segment: rows in bronze + quarantined records = records landed.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import duckdb

from churn_assets.defs.bronze.load import IngestResult, load_batch, parsed_in_order
from churn_assets.defs.bronze.manifest import known_files
from churn_assets.landing import SPECS, LandedFile, SourceSpec, discover


def batches(files: list[LandedFile], batch_bytes: int) -> Iterator[list[LandedFile]]:
    """Files in order, cut into batches once a batch holds ``batch_bytes`` (a batch is one transaction)."""
    batch: list[LandedFile] = []
    size = 0
    for landed in files:
        batch.append(landed)
        size += landed.size
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ingest_source(
    con: duckdb.DuckDBPyConnection,
    landing_root: Path,
    source: str,
    run_id: str,
    *,
    settle_seconds: float,
    batch_bytes: int,
) -> IngestResult:
    """Ingest every new or changed complete file of one source. Safe to call again after any crash.
    ``settle_seconds`` and ``batch_bytes`` come from the settings (their defaults live there)."""
    spec = SPECS[source]
    result = IngestResult(source)
    # A new version retires the earlier one, and with it the content that duplicates of it
    # skipped: a second pass, from the committed manifest, takes those as files of their own.
    for _ in range(2):
        retired = result.files_new_version
        _ingest_pass(con, landing_root, spec, run_id, settle_seconds, batch_bytes, result)
        if result.files_new_version == retired:
            break
    return result


def _ingest_pass(
    con: duckdb.DuckDBPyConnection,
    landing_root: Path,
    spec: SourceSpec,
    run_id: str,
    settle_seconds: float,
    batch_bytes: int,
    result: IngestResult,
) -> None:
    known = known_files(con, spec.name)
    # A retired content's duplicates are offered as if unseen; a file whose last line was left
    # unread is offered again once that line is final.
    seen = {path: (st.size, st.mtime, st.open_tail) for path, st in known.states.items() if not st.copy_retired}
    files = discover(landing_root, spec.name, seen, settle_seconds)
    result.files_seen += len(files)
    # One batch more in memory (CHURN_BATCH_BYTES): the files parsed ahead.
    parsed = parsed_in_order(spec, files, known, batch_bytes)
    careful = False
    try:
        for batch in batches(files, batch_bytes):
            careful = load_batch(con, spec, batch, islice(parsed, len(batch)), known, run_id, result, careful=careful)
    finally:
        parsed.close()
