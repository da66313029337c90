"""SIGKILL while changed files (an appended tail, a new version of a file) are handled, and in
silver and gold: after a re-run the warehouse equals a fresh load of the final landing folder.

Each kill is checked to have landed where the test meant (the fault point writes its name
to a marker file just before the SIGKILL) before the outcome is asserted."""

from __future__ import annotations

import shutil
import signal
from datetime import date
from pathlib import Path

import pytest

from churn_assets.generator import generate_history
from churn_assets_tests.helpers import killed_at, query, run_cycle
from churn_assets_tests.landing_state import accounting, differences, snapshot

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

DATA = "*gold/churn_features"


@pytest.fixture(scope="module")
def changing(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(a home that loaded the before folder, landing after, fresh load of the after folder).

    Before -> after: the last file of each source grows by an appended tail, the first is
    rewritten (records changed and dropped). The before load is the same for every kill
    point: run once here, each test starts from a copy of its home."""
    after = tmp_path_factory.mktemp("after")
    generate_history(after, customers=2_000, seed=9, end=date(2026, 11, 1), progress=False, rows_per_file=500)
    before = tmp_path_factory.mktemp("before")
    shutil.copytree(after / "landing", before / "landing")
    for source in ("users", "orders", "events"):
        files = sorted((before / "landing" / source).iterdir())
        last = files[-1].read_bytes().splitlines(keepends=True)
        files[-1].write_bytes(b"".join(last[: len(last) // 2]))
        first = files[0].read_bytes().splitlines(keepends=True)
        header = first[:1] if source == "events" else []
        body = first[len(header) :]
        # Changed records: "-4" is in every (version 4) id and in no date, so no date moves past the as-of.
        files[0].write_bytes(b"".join(header + body[10:] + [x.replace(b"-4", b"-5") for x in body[:3]]))
    fresh = tmp_path_factory.mktemp("fresh")
    shutil.copytree(after / "landing", fresh / "landing")
    assert run_cycle(fresh, select=DATA).wait(240) == 0
    assert run_cycle(before, select=DATA).wait(240) == 0
    return before, after / "landing", snapshot(fresh)


@pytest.mark.parametrize(
    "kill_at",
    [
        "appended_rows_before_manifest:1",
        "new_version_after_retire:1",
        "after_file_before_commit:2",
        "silver_after_retire:1",
        "silver_before_commit:2",
        "gold_before_commit:1",
    ],
)
def test_kill_while_changed_files_are_handled(changing, tmp_path, kill_at):
    before, after, fresh = changing
    # The whole home: landing (mtimes kept), warehouse, manifest and Dagster home, as the before run left them.
    shutil.copytree(before, tmp_path, dirs_exist_ok=True)
    assert killed_at(tmp_path) is None
    for source in ("users", "orders", "events"):
        for path in sorted((after / source).iterdir()):
            dest = tmp_path / "landing" / source / path.name
            if dest.read_bytes() != path.read_bytes():
                dest.write_bytes(path.read_bytes())
    proc = run_cycle(tmp_path, kill_at, select=DATA)
    assert proc.wait(240) == -signal.SIGKILL
    assert killed_at(tmp_path) == kill_at
    assert run_cycle(tmp_path, select=DATA).wait(240) == 0
    assert differences(snapshot(tmp_path), fresh) == {}
    assert accounting(tmp_path) == []
    events = query(
        tmp_path,
        "SELECT split_part(path, '/', 1), event, count(*) FROM bronze.ingest_manifest "
        "WHERE event <> 'new' GROUP BY ALL ORDER BY ALL",
    )
    assert events == sorted((s, e, 1) for s in ("users", "orders", "events") for e in ("appended", "rewritten"))
