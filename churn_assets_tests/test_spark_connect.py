"""The whole cycle over Spark Connect: a real standalone cluster (one master, two workers on
127.0.0.1) with a Spark Connect server attached, all from the pyspark distribution, and ONE
`churn run` (every asset: bronze to the campaign) with CHURN_SPARK_MASTER=sc://... on the
shared sample, beside the same `churn run` on DuckDB. The run's process is a Connect client
only: no JVM, no Spark application of its own (the cluster sees the Connect server's alone).

Equal to DuckDB: gold row for row on every column, the same booster and its predictions, the
data-quality counts the bronze streams report (their batches run beside the server), every
dashboard figure and the page's tiles, the campaign's messages (no personal data in a prompt),
and `churn sql` over Connect. The Spark engine's only test of the figures and the campaign."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from churn_assets_tests.helpers import assert_no_personal_data, land_sample, needs_sample, project_env, query
from churn_assets_tests.spark_cluster import QUICK_JVM, Cluster

pyspark = pytest.importorskip("pyspark", reason="the spark extra is not installed (CHURN_EXTRAS=spark scripts/setup)")
pytest.importorskip("grpc_status", reason="no Spark Connect client packages (CHURN_EXTRAS=spark scripts/setup)")
pytestmark = [
    needs_sample,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Java 17 is not installed"),
]

# A figure of wall-clock instants (when each layer last took data in): equal in shape only.
CLOCK_FIGURES = {"layer_freshness"}
PREDICTION_COLUMNS = "user_id, churn_probability, churn_prediction, model_name, model_version"
SQL = (
    "SELECT f.country, count(*) AS customers, sum(p.churn_prediction) AS at_risk, max(f.last_event) AS last_event "
    "FROM gold.churn_features f JOIN gold.churn_prediction p ON p.user_id = f.user_id "
    "GROUP BY f.country ORDER BY f.country"
)


def churn_env(home: Path, anthropic_url: str, **extra: str) -> dict[str, str]:
    """A clean environment for `churn` on ``home``: no Spark variables (a Connect client needs
    none), the fake Anthropic server for the campaign."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHURN_", "DAGSTER_HOME", "MLFLOW_", "ANTHROPIC_", "SPARK_", "PYSPARK_"))
    }
    env.update(
        project_env(home),
        DAGSTER_HOME=str(home / "dagster_home"),
        DAGSTER_DISABLE_TELEMETRY="1",
        # One pseudonym key for both homes: gold's e-mail column is its HMAC.
        CHURN_PSEUDONYM_KEY="spark-connect-" + "7" * 50,
        ANTHROPIC_API_KEY="test-key-not-a-secret",
        ANTHROPIC_BASE_URL=anthropic_url,
        **extra,
    )
    return env


def churn(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "churn_assets.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen, home: Path, timeout: float = 900) -> tuple[str, str]:
    """(stdout, stderr) of a `churn` command that succeeded."""
    out, err = proc.communicate(timeout=timeout)
    log = home / "logs" / "last-run.log"
    tail = log.read_text()[-4000:] if log.is_file() else ""
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}\n{tail}"
    return out, err


def spark_table(home: Path, table: str, sql: str = "SELECT * FROM t") -> list[tuple]:
    """A Spark warehouse table as it is now, read by DuckDB from its parquet files (an oracle
    independent of the engine's own reader)."""
    from churn_assets.engine import current_dir

    where = current_dir(str(home / "spark_warehouse"), table)
    assert where is not None, f"{table} was not written"
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{where}/**/*.parquet', hive_partitioning = false)")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def row_key(row: tuple) -> tuple:
    """Rows in an order both engines agree on: text first, floats rounded (equal only to 1e-9)."""
    return tuple((0, round(v, 6)) if isinstance(v, float) else (1, repr(v)) for v in row)


def same_row(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(
        g == pytest.approx(w, rel=1e-9, abs=1e-12) if isinstance(w, float) else g == w
        for g, w in zip(got, want, strict=True)
    )


def outboxed(home: Path) -> list[str]:
    return sorted(json.loads(line)["user_id"] for f in (home / "outbox").glob("*.jsonl") for line in f.open())


def test_the_whole_cycle_over_spark_connect_equals_duckdb(tmp_path):
    from churn_assets.defs.dashboards.metrics import METRICS
    from churn_assets.defs.gold.features import FEATURE_COLUMNS
    from churn_assets_tests.fake_anthropic import FakeAnthropic

    times: dict[str, float] = {}
    t_all = time.perf_counter()
    cluster = Cluster(tmp_path / "cluster", java_options=QUICK_JVM)
    duck_home, spark_home = tmp_path / "duckdb", tmp_path / "spark"
    for home in (duck_home, spark_home):
        (home / "landing").mkdir(parents=True)
        land_sample(home)
    try:
        with FakeAnthropic() as fake_d, FakeAnthropic() as fake_s:
            # The DuckDB cycle runs while the cluster starts (JVMs mostly waiting), not beside the
            # Spark cycle: a loaded server is slower to start the Python workers Connect needs.
            t0 = time.perf_counter()
            on_duck = churn("run", env=churn_env(duck_home, fake_d.url))
            times["cluster_start_s"] = cluster.start()
            times["connect_server_start_s"] = cluster.start_connect()
            finished(on_duck, duck_home)
            times["duckdb_cycle_done_at_s"] = time.perf_counter() - t0
            spark_env = {"CHURN_ENGINE": "spark", "CHURN_SPARK_MASTER": cluster.connect_url}
            t0 = time.perf_counter()
            out, _ = finished(churn("run", env=churn_env(spark_home, fake_s.url, **spark_env)), spark_home)
            times["spark_connect_cycle_s"] = time.perf_counter() - t0
        assert "succeeded" in out
        # `churn sql` over Connect prints DuckDB's rows (both at once).
        t0 = time.perf_counter()
        q_duck = churn("sql", SQL, "--csv", env=churn_env(duck_home, fake_d.url))
        q_spark = churn("sql", SQL, "--csv", env=churn_env(spark_home, fake_s.url, **spark_env))
        (csv_duck, _), (csv_spark, err_spark) = finished(q_duck, duck_home), finished(q_spark, spark_home)
        times["churn_sql_s"] = time.perf_counter() - t0
        # The only application the cluster ran is the Connect server's: the run's process was a
        # client, every job ran there.
        state = cluster.state()
        apps = [a["name"] for a in state.get("activeapps", []) + state.get("completedapps", [])]
        assert apps == ["Spark Connect server"]
    finally:
        cluster.stop_connect()
        cluster.stop()
        times["total_s"] = time.perf_counter() - t_all
        print(f"\nspark connect timings: { {k: round(v, 1) for k, v in times.items()} }; load {os.getloadavg()}")

    # Gold, row for row on every column.
    cols = ", ".join(FEATURE_COLUMNS)
    expected = query(duck_home, f"SELECT {cols} FROM gold.churn_features ORDER BY user_id")
    assert len(expected) == 450
    assert spark_table(spark_home, "gold.churn_features", f"SELECT {cols} FROM t ORDER BY user_id") == expected

    # The bronze streams' batches ran beside the server; what they took in came back to the
    # run through their manifests, as the data-quality rows show (DuckDB's counts).
    quality = "SELECT table_name, expectation, passed, failed, dropped FROM {} WHERE layer = 'bronze' ORDER BY 1, 2"
    bronze_quality = spark_table(spark_home, "ops.data_quality", quality.format("t"))
    assert bronze_quality == query(duck_home, quality.format("ops.data_quality"))
    assert ("bronze.churn_users_bronze", "correct_schema", 2086, 0, 0) in bronze_quality

    # The same model (LightGBM's text of the booster, byte for byte), version 1 on both, and its
    # scores computed on the cluster by the MLflow UDF equal DuckDB's.
    (booster_d,), (booster_s,) = ([p.read_text() for p in h.rglob("booster.txt")] for h in (duck_home, spark_home))
    assert booster_s == booster_d
    sql = f"SELECT {PREDICTION_COLUMNS} FROM {{}} ORDER BY user_id"
    want = query(duck_home, sql.format("gold.churn_prediction"))
    got = spark_table(spark_home, "gold.churn_prediction", sql.format("t"))
    assert len(want) == len(got) == 450
    assert [(r[0], r[2], r[3], r[4]) for r in got] == [(r[0], r[2], r[3], r[4]) for r in want]
    assert {r[4] for r in got} == {"1"}
    assert max(abs(g[1] - e[1]) for g, e in zip(got, want, strict=True)) <= 1e-9
    at_risk = sum(r[2] for r in got)
    assert 0 < at_risk < 450  # both tiers present: the comparison compares something
    # `churn run`'s summary counted the Spark warehouse's tables, not the (empty) DuckDB file's.
    assert "churn_features 450, churn_prediction 450" in out and f"customers at risk {at_risk:,}" in out

    # The dashboard's KPIs, computed on the cluster.
    kpis_duck = {name: value for name, value, *_ in query(duck_home, "SELECT * FROM dashboard.kpis")}
    kpis_spark = {name: value for name, value, *_ in spark_table(spark_home, "dashboard.kpis")}
    assert kpis_duck["customers"] == 2086
    assert kpis_spark == pytest.approx(kpis_duck, rel=1e-12)

    # Every figure computed on the cluster equals DuckDB's (the scores agree to 1e-9, so do the
    # figures' floats), and the page is drawn from them.
    for metric in METRICS:
        if metric.name in CLOCK_FIGURES:
            sql = "SELECT * FROM {} ORDER BY 1"
            want_rows = [r[0] for r in query(duck_home, sql.format(f"dashboard.{metric.name}"))]
            on_spark = spark_table(spark_home, f"dashboard.{metric.name}", sql.format("t"))
            got_rows = [r[0] for r in on_spark if r[1] is not None]
            assert got_rows == want_rows, metric.name
            continue
        want_rows = sorted(query(duck_home, f"SELECT * FROM dashboard.{metric.name}"), key=row_key)
        got_rows = sorted(spark_table(spark_home, f"dashboard.{metric.name}"), key=row_key)
        assert len(got_rows) == len(want_rows) > 0, metric.name
        for g, w in zip(got_rows, want_rows, strict=True):
            assert same_row(g, w), (metric.name, g, w)
    page = (spark_home / "dashboard" / "index.html").read_text()
    tiles = {k: float(v) for k, v in re.findall(r'data-kpi="(\w+)" data-value="([^"]+)"', page)}
    assert tiles == pytest.approx(kpis_duck, rel=1e-9)

    # The campaign read the Spark tables: the same messages to the same customers, the same
    # number of API calls, and no personal data in a prompt.
    sent = "SELECT user_id, channel, offer, status FROM campaigns.retention_messages ORDER BY user_id"
    messages = query(spark_home, sent)
    assert len(messages) == kpis_duck["customers_at_risk"] > 0 and messages == query(duck_home, sent)
    assert outboxed(spark_home) == outboxed(duck_home) == sorted(m[0] for m in messages)
    assert len(fake_s.requests) == len(fake_d.requests) > 0
    people_sql = "SELECT id, firstname, lastname, email, address FROM t"
    people = spark_table(spark_home, "bronze.churn_users_bronze", people_sql)
    assert len(people) == 2086
    assert_no_personal_data(fake_s.requests, people)

    # `churn sql` over Connect: the same CSV as on DuckDB.
    assert csv_spark == csv_duck
    assert err_spark == ""  # the Connect client adds nothing to the output (no pandas-3 FutureWarning)
    lines = csv_duck.splitlines()
    assert lines[0] == "country,customers,at_risk,last_event" and len(lines) == 4  # FR, SPAIN, USA
    assert sum(int(line.split(",")[2]) for line in lines[1:]) == at_risk
