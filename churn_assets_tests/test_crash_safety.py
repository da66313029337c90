"""SIGKILL anywhere in bronze while new files load: after a re-run nothing is missing and
nothing is there twice (changed files, silver and gold: test_crash_safety_changes.py).

Each kill is checked to have landed where the test meant (the fault point writes its name
to a marker file just before the SIGKILL) before the outcome is asserted."""

from __future__ import annotations

import shutil
import signal
import time
from datetime import date
from pathlib import Path

import pytest

from churn_assets.generator import generate_history
from churn_assets_tests.helpers import killed_at, one, run_cycle

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

TABLES = ("bronze.churn_users_bronze", "bronze.churn_orders_bronze", "bronze.churn_app_events", "bronze.quarantine")


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
