"""The production instance: Dagster's storage on a real PostgreSQL server (dagster-postgres),
started by the test on 127.0.0.1, configured by the project's dagster.postgres.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from churn_assets.generator import generate_history
from churn_assets_tests import pg_server
from churn_assets_tests.helpers import REPO, materialize

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test


@pytest.fixture
def postgres():
    if not pg_server.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("no PostgreSQL server binaries")
    with pg_server.postgres_server() as port:
        yield port


def test_runs_and_events_are_stored_in_postgres(postgres, tmp_path, monkeypatch):
    import psycopg2

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "churn_assets" / "defs" / "automation" / "dagster.postgres.yaml", home / "dagster.yaml")
    for k, v in pg_server.dagster_env(postgres).items():
        monkeypatch.setenv(k, v)
    churn_home = tmp_path / "churn"
    generate_history(churn_home, customers=1_500, seed=8, end=date(2026, 11, 1), progress=False)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize(churn_home, "*gold/churn_features", as_of="2026-11-01", instance=instance)
        assert result.success
        assert instance.get_latest_materialization_event(dg.AssetKey(["gold", "churn_features"])) is not None
    with psycopg2.connect(host="127.0.0.1", port=postgres, dbname="dagster", user="dagster") as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", [result.run_id])
        assert cur.fetchone()[0] == "SUCCESS"
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            [result.run_id],
        )
        assert cur.fetchone()[0] == 6  # three bronze, two silver, one gold


def test_multiprocess_executor_on_the_postgres_instance(postgres, tmp_path, monkeypatch):
    import psycopg2

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "churn_assets" / "defs" / "automation" / "dagster.postgres.yaml", home / "dagster.yaml")
    churn_home = tmp_path / "churn"
    generate_history(churn_home, customers=1_500, seed=9, end=date(2026, 11, 1), progress=False)
    # What a deployment sets for every process (webserver, daemon, run worker, step).
    env = {
        **os.environ,
        **pg_server.dagster_env(postgres),
        "DAGSTER_HOME": str(home),
        "CHURN_HOME": str(churn_home),
        "CHURN_AS_OF": "2026-11-01",
        "CHURN_SETTLE_SECONDS": "0",
        "CHURN_EXECUTOR": "multiprocess",
    }
    # The documented CLI, in a fresh process: the definitions read CHURN_EXECUTOR as they load.
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "launch", "--assets", "*gold/churn_features"],
        env={**env, "VIRTUAL_ENV": sys.prefix},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for k in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(k, env[k])

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (record,) = instance.get_run_records()
        run_id = record.dagster_run.run_id
        pids, engine = {}, []
        for entry in instance.all_logs(run_id):
            ev = entry.dagster_event
            if ev is not None and ev.event_type_value == "STEP_START":
                pids[ev.step_key] = ev.pid
            if ev is not None and ev.event_type_value == "ENGINE_EVENT":
                engine.append(entry.message)
    # Each step ran in a process of its own, started by the multiprocess executor.
    assert len(pids) == 7  # six assets and the gold check
    assert len(set(pids.values())) == 7
    assert any("multiprocess" in m.lower() for m in engine), engine[:5]
    with psycopg2.connect(host="127.0.0.1", port=postgres, dbname="dagster", user="dagster") as db, db.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", [run_id])
        assert cur.fetchone()[0] == "SUCCESS"
    import duckdb

    con = duckdb.connect(str(churn_home / "warehouse.duckdb"), read_only=True)
    try:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT user_id) FROM gold.churn_features").fetchall()[0]
    finally:
        con.close()
    assert rows == distinct > 500
