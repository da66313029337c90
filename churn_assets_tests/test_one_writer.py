"""One writer, visibly: a second process waits a bounded time for the warehouse, then
says in one line who holds it; two cycles at once never load a file twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from churn_assets.generator import generate_history
from churn_assets.warehouse import connect, ensure_schema
from churn_assets_tests.helpers import query
from churn_assets_tests.landing_state import accounting, differences, snapshot

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

DATA = "*gold/churn_features"
# One e-mail pseudonym key for every home: the two-cycle home is compared with one loaded alone.
SHARED_KEY = "one-writer-" + "7" * 53


def churn_run(home: Path, wait: float, select: str = DATA) -> subprocess.Popen:
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "CHURN_SETTLE_SECONDS": "0",
        "CHURN_AS_OF": "2026-11-02T00:00:00",
        "CHURN_WAREHOUSE_WAIT_SECONDS": str(wait),
        "CHURN_PSEUDONYM_KEY": SHARED_KEY,
    }
    env.pop("CHURN_TEST_KILL_AT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "churn_assets.cli", "run", "--select", select],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_writer_exits_with_one_line_naming_the_holder(tmp_path):
    (tmp_path / "landing").mkdir()
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(con)
    con.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from churn_assets.warehouse import connect_writer
        con = connect_writer({str(tmp_path / "warehouse.duckdb")!r}, wait_seconds=0, holder="run holder-run-1")
        print("holding", flush=True)
        time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        second = churn_run(tmp_path, wait=2)
        out, err = second.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 75
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"held by pid {holder.pid} (run holder-run-1" in lines[0]
    assert "waiting 2s" in lines[0] and "Traceback" not in err and "IO Error" not in err
    assert took >= 2


def test_two_cycles_at_once_load_each_file_once(tmp_path_factory):
    home = tmp_path_factory.mktemp("two")
    generate_history(home, customers=1_500, seed=4, end=date(2026, 11, 1), progress=False, rows_per_file=500)
    fresh = tmp_path_factory.mktemp("alone")
    subprocess.run(["cp", "-r", str(home / "landing"), str(fresh / "landing")], check=True)
    assert churn_run(fresh, wait=0).wait(240) == 0
    # The Dagster instance exists already (the daemon's, in the story): two processes creating
    # a fresh instance's SQLite storage at the same moment race in Dagster's own migrations.
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster_home")}
    (home / "dagster_home").mkdir()
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_runs()"], env=env, check=True
    )
    first, second = churn_run(home, wait=180), churn_run(home, wait=180)
    codes = (first.wait(400), second.wait(400))
    # Both complete (one waited for the other); never a lock traceback.
    errors = [
        line
        for p in (first, second)
        for line in p.stderr.read().splitlines()
        if "ERROR" in line or "Error" in line or "busy" in line
    ]
    assert codes == (0, 0), errors[-20:]
    assert differences(snapshot(home), snapshot(fresh)) == {}
    assert accounting(home) == []
    rows, paths, duplicates = query(
        home,
        "SELECT count(*), count(DISTINCT path), count(*) FILTER (status = 'duplicate') FROM bronze.ingest_manifest",
    )[0]
    assert rows == paths == len(list((home / "landing").rglob("*.*"))) and duplicates == 0


def test_the_manifest_refuses_a_file_version_twice(tmp_path):
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(con)
    row = (
        "(1, 'users', 'users/a.json', 10, now()::TIMESTAMP, 'h', 1, 1, 0, 0, 'loaded', NULL, 'r', now()::TIMESTAMP, "
        "1, 'new', 0, 10, 'h', 'h')"
    )
    cols = (
        "file_id, source, path, size_bytes, mtime, content_hash, records, rows_loaded, rows_rescued, "
        "rows_quarantined, status, detail, run_id, ingested_at, version, event, offset_start, offset_end, "
        "prefix_hash, dedup_key"
    )
    con.execute(f"INSERT INTO bronze.ingest_manifest ({cols}) VALUES {row}")
    same_segment = row.replace("(1,", "(2,", 1).replace("'h')", "NULL)")
    same_file_id = row.replace("'users/a.json'", "'users/b.json'")
    same_first_content = row.replace("(1,", "(3,", 1).replace("'users/a.json'", "'users/c.json'")
    for clash in (same_segment, same_file_id, same_first_content):
        with pytest.raises(duckdb.ConstraintException):
            con.execute(f"INSERT INTO bronze.ingest_manifest ({cols}) VALUES {clash}")
    con.close()
