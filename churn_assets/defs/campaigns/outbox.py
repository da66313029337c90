"""The outbox: every ready message is handed to the downstream sender in exactly one file,
through kills at any point and step retries.

A file is handed over once it exists under its final name in the outbox folder. The
protocol, each step durable before the next:
1. create the hidden marker ``.<file>.tmp`` (exclusive) and fsync the folder;
2. record in the warehouse, in one transaction, the file name (``campaigns.outbox_files``,
   not yet handed over) and that name on each of its messages (``outbox`` column);
3. write the messages into the marker, fsync it, rename it to ``<file>``, fsync the folder;
4. record the file as handed over.
Before writing anything new, a run reconciles files an earlier attempt left not handed
over: if the marker is gone, the rename happened (the file is there, or the sender took it
away): it is handed over and never written again; if the marker is still there, the file
is written again from the warehouse, with the same messages and message ids. Messages get
a name at step 2 only, so a message is never recorded in two files, and a file name is
never reused, so a file with handed-over rows is never overwritten. The message id stays
the same across rewrites: a sender can de-duplicate on it as a second line of defence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from churn_assets.faults import fault_point
from churn_assets.timeutil import utcnow
from churn_assets.warehouse import ensure_campaign_tables, transaction

FIELDS = "message_id, user_id, channel, style, languages, offer, subject, texts, created_at"


def fsync_dir(folder: Path) -> None:
    """Make a create, rename or unlink in ``folder`` survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def marker_path(folder: Path, name: str) -> Path:
    return folder / f".{name}.tmp"


def outbox_line(row: dict) -> str:
    return (
        json.dumps(
            {
                "message_id": row["message_id"],
                "user_id": row["user_id"],
                "channel": row["channel"],
                "style": row["style"],
                "languages": row["languages"].split(","),
                "offer": row["offer"],
                "subject": row["subject"],
                "texts": json.loads(row["texts"]),
                "created_at": row["created_at"].isoformat(),
            },
            ensure_ascii=False,
        )
        + "\n"
    )


def _write_file(con, folder: Path, name: str) -> int:
    """Steps 3 and 4 for a recorded file: its messages, from the warehouse, under its name."""
    cur = con.execute(
        f"SELECT {FIELDS} FROM campaigns.retention_messages WHERE outbox = ? ORDER BY created_at, message_id", [name]
    )
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    final, marker = folder / name, marker_path(folder, name)
    # One process writes the warehouse (DuckDB's lock), so nobody creates this name meanwhile.
    if final.exists():
        raise FileExistsError(f"outbox file {final} already exists: refusing to overwrite a handed-over file")
    with open(marker, "w", encoding="utf-8") as fh:
        fh.writelines(outbox_line(r) for r in rows)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("outbox_file_written")
    os.replace(marker, final)
    fsync_dir(folder)
    fault_point("outbox_renamed")
    con.execute("UPDATE campaigns.outbox_files SET handed_over_at = ? WHERE file_name = ?", [utcnow(), name])
    return len(rows)


def reconcile(con, folder: Path) -> tuple[int, int]:
    """Finish what an earlier attempt left: (files confirmed as handed over, files written
    again). Markers no file was recorded for are removed."""
    pending = [
        r[0]
        for r in con.execute(
            "SELECT file_name FROM campaigns.outbox_files WHERE handed_over_at IS NULL ORDER BY recorded_at, file_name"
        ).fetchall()
    ]
    confirmed = rewritten = 0
    for name in pending:
        if marker_path(folder, name).exists() and not (folder / name).exists():
            _write_file(con, folder, name)
            rewritten += 1
        else:
            marker_path(folder, name).unlink(missing_ok=True)
            con.execute("UPDATE campaigns.outbox_files SET handed_over_at = ? WHERE file_name = ?", [utcnow(), name])
            confirmed += 1
    known = set(pending)
    for marker in folder.glob(".*.tmp"):
        if marker.name[1:-4] not in known:  # killed before step 2: nothing refers to it
            marker.unlink()
    return confirmed, rewritten


def _new_name(con, folder: Path, run_id: str) -> str:
    taken = {
        r[0] for r in con.execute("SELECT file_name FROM campaigns.outbox_files WHERE run_id = ?", [run_id]).fetchall()
    }
    n = len(taken) + 1
    while True:
        # The run's first file is <run id>.jsonl; a step retry that has more adds <run id>.<n>.jsonl.
        name = f"{run_id}.jsonl" if n == 1 else f"{run_id}.{n}.jsonl"
        if name not in taken and not (folder / name).exists() and not marker_path(folder, name).exists():
            return name
        n += 1


def write_outbox(con, folder: Path, run_id: str) -> tuple[str | None, int, int]:
    """Reconcile, then hand every ready message that has no file yet (this run's and any a
    killed run left) over in one new file. Returns (the new file, its messages, files an
    earlier attempt left that this call finished)."""
    ensure_campaign_tables(con)  # campaigns.outbox_files among them
    folder.mkdir(parents=True, exist_ok=True)
    confirmed, rewritten = reconcile(con, folder)
    ids = [
        r[0]
        for r in con.execute(
            "SELECT message_id FROM campaigns.retention_messages WHERE status = 'ready' AND outbox IS NULL "
            "ORDER BY created_at, message_id"
        ).fetchall()
    ]
    if not ids:
        return None, 0, confirmed + rewritten
    name = _new_name(con, folder, run_id)
    marker = marker_path(folder, name)
    with open(marker, "x", encoding="utf-8"):
        pass
    fsync_dir(folder)
    with transaction(con):
        con.execute("INSERT INTO campaigns.outbox_files VALUES (?, ?, ?, ?, NULL)", [name, run_id, len(ids), utcnow()])
        con.execute(
            "UPDATE campaigns.retention_messages SET outbox = ? "
            "WHERE outbox IS NULL AND message_id IN (SELECT unnest(?))",
            [name, ids],
        )
    fault_point("outbox_recorded")
    written = _write_file(con, folder, name)
    return str(folder / name), written, confirmed + rewritten
