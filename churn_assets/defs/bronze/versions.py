"""What of a landed file is new since the manifest last read it: pure decisions, no I/O.

A file is read once, but a writer may append to it, rewrite it or truncate it. The manifest
keeps, per path, how many bytes were read and their hash (``FileState``); ``plan_change``
compares that with the content found now: unchanged, an appended tail to read alone, or a new
version that retires the earlier one and is read whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

# Events that mean a file changed after it was read (files are immutable by contract).
CHANGE_EVENTS = ("appended", "rewritten", "truncated")


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
    # Its last segment stopped before the end of the content (at the last newline, the writer
    # maybe still on the final line): offered again once that line is final.
    open_tail: bool = False
    # A duplicate whose content's loaded copy has since been retired: its records are in no table.
    copy_retired: bool = False


def retired_copies(states: Mapping[str, FileState], held: set[str]) -> set[str]:
    """Paths recorded as ``duplicate`` whose content is gone from the tables: ``held`` is the
    content (prefix) hash of every segment of a current version that is no duplicate, so a
    copy that was appended to still holds it, one rewritten or truncated since does not. A
    duplicate read only up to its last newline is read again whole anyway (``open_tail``)."""
    return {
        path
        for path, st in states.items()
        if st.status == "duplicate" and not st.open_tail and st.prefix_hash not in held
    }


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
    earlier one is retired and the whole file is read again), ``restored`` (a duplicate,
    unchanged, whose content's loaded copy was retired: read whole as a new version).
    """
    if state is None:
        return "new", 0, None
    end = state.offset_end
    intact = len(content) >= end and hashlib.sha256(memoryview(content)[:end]).hexdigest() == state.prefix_hash
    if intact and len(content) == end:
        if state.copy_retired:
            return "restored", 0, f"its version {state.version} was a duplicate of a version since retired"
        return "unchanged", end, None
    if state.status in ("quarantined", "duplicate"):
        return "rewritten", 0, f"re-delivered after its version {state.version} was {state.status}"
    if not intact:
        if len(content) < end:
            return "truncated", 0, f"now {len(content)} bytes; {end} were read before"
        return "rewritten", 0, "content read before has changed"
    if end and content[end - 1 : end] != b"\n":
        return "rewritten", 0, "its last line, read without a newline, was continued"
    return "appended", end, f"{len(content) - end} bytes appended after byte {end}"
