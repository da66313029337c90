"""SIGKILL anywhere in bronze, silver or gold, new files, an appended tail or a new version
of a file: after a re-run nothing is missing and nothing is there twice.

Each kill is checked to have landed where the test meant (the fault point writes its name
to a marker file just before the SIGKILL) before the outcome is asserted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from churn_assets.generator import generate_history
from churn_assets_tests.helpers import one, query
from churn_assets_tests.landing_state import accounting, differences, snapshot

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

TABLES = ("bronze.churn_users_bronze", "bronze.churn_orders_bronze", "bronze.churn_app_events", "bronze.quarantine")
DATA = "*gold/churn_features"
# One e-mail pseudonym key for every home: a killed-and-rerun home is compared with a fresh load.
SHARED_KEY = "crash-safety-" + "3" * 51


def run_cycle(home: Path, kill_at: str | None = None, select: str = "group:bronze") -> subprocess.Popen:
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "CHURN_SETTLE_SECONDS": "0",
        "CHURN_AS_OF": "2026-11-02T00:00:00",
        # Many small transactions, so kills land between and inside them.
        "CHURN_BATCH_BYTES": "200000",
        "CHURN_TEST_KILL_MARKER": str(home / "killed_at"),
        "CHURN_PSEUDONYM_KEY": SHARED_KEY,
    }
    env.pop("CHURN_TEST_KILL_AT", None)
    if kill_at:
        env["CHURN_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, "-m", "churn_assets.cli", "run", "--select", select],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def killed_at(home: Path) -> str | None:
    marker = home / "killed_at"
    return marker.read_text().strip() if marker.exists() else None


def state(home: Path) -> dict:
    out = {t: one(home, f"SELECT count(*) FROM {t}") for t in TABLES}
    for t in TABLES[:3]:
        out[t + ":distinct"] = one(home, f"SELECT count(DISTINCT (_file_id, _row_no)) FROM {t}")
        out[t + ":contents"] = one(home, f"SELECT count(DISTINCT (_source_file, _row_no)) FROM {t}")
    out["manifest_paths"] = one(home, "SELECT count(DISTINCT path) FROM bronze.ingest_manifest")
    out["manifest_rows"] = one(home, "SELECT count(*) FROM bronze.ingest_manifest")
    return out


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> tuple[Path, dict]:
    """A landing folder with dirty data and the state a clean, uninterrupted run reaches."""
    src = tmp_path_factory.mktemp("landed")
    generate_history(
        src, customers=4_000, seed=5, end=date(2026, 11, 1), dirty_rate=0.01, progress=False, rows_per_file=1_000
    )

    clean = tmp_path_factory.mktemp("clean")
    shutil.copytree(src / "landing", clean / "landing")
    assert run_cycle(clean).wait(120) == 0
    return src, state(clean)


@pytest.mark.parametrize(
    "kill_at",
    [
        "after_parse:2",
        "after_rows_before_manifest:1",
        "after_file_before_commit:3",
        "after_commit:2",
        "after_rows_before_manifest:7",
    ],
)
def test_kill_at_a_point_then_rerun(landed, tmp_path, kill_at):
    src, expected = landed
    shutil.copytree(src / "landing", tmp_path / "landing")
    proc = run_cycle(tmp_path, kill_at)
    assert proc.wait(120) == -signal.SIGKILL
    assert killed_at(tmp_path) == kill_at
    partial = state(tmp_path) if (tmp_path / "warehouse.duckdb").exists() else None
    if partial:
        # Whatever survived the kill is whole files only.
        assert partial["manifest_rows"] < expected["manifest_rows"]
    assert run_cycle(tmp_path).wait(120) == 0
    assert state(tmp_path) == expected
    assert (
        one(tmp_path, "SELECT sum(records) - sum(rows_loaded) - sum(rows_quarantined) FROM bronze.ingest_manifest") == 0
    )


@pytest.mark.parametrize("delay", [0.5, 1.5, 2.5])
def test_kill_at_a_random_moment_then_rerun(landed, tmp_path, delay):
    src, expected = landed
    shutil.copytree(src / "landing", tmp_path / "landing")
    proc = run_cycle(tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert run_cycle(tmp_path).wait(120) == 0
    assert state(tmp_path) == expected


# --- kills while changed files are handled, and in silver and gold ------------------------------------


@pytest.fixture(scope="module")
def changing(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(landing before, landing after, fresh load of the after folder).

    Before -> after: the last file of each source grows by an appended tail, the first is
    rewritten (records changed and dropped)."""
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
    return before / "landing", after / "landing", snapshot(fresh)


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
    shutil.copytree(before, tmp_path / "landing")
    assert run_cycle(tmp_path, select=DATA).wait(240) == 0
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
