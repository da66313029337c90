"""The Spark engine against a real standalone cluster (one master, two workers on 127.0.0.1,
started from the pyspark distribution) on the shared reference sample, both ways a run reaches
the cluster, against ONE `churn run` on DuckDB (every asset: bronze to the campaign; it runs
while the cluster starts).

Spark Connect: a Connect server attached to the cluster and ONE `churn run` (every asset) with
CHURN_SPARK_MASTER=sc://... The run's process is a Connect client only: no JVM, no Spark
application of its own (the cluster sees the Connect server's alone). Equal to DuckDB: gold row
for row on every column, the same booster and its predictions, the data-quality counts the
bronze streams report (their batches run beside the server), every dashboard figure and the
page's tiles, the campaign's messages (no personal data in a prompt), and `churn sql` over
Connect. The Spark engine's only test of the figures, the page and the campaign (a Connect
client can do less than a classic driver, not more).

A driver in this process (spark://), bronze to gold and the ml group: gold and silver equal to
DuckDB's row for row, the plain-SQL oracle, the model and its predictions, the training sample,
exactly once (a second run, a re-landed copy, an increment, a worker killed with SIGKILL during
a run's job), and `churn sql` on both engines.

One file, so one cluster and one DuckDB reference: `--dist loadfile` gives each file to a test
worker of its own, and as two files (the Connect test was test_spark_connect.py) they started
two clusters and built DuckDB's side twice. The reference's whole cycle holds everything the
driver's tests compare."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from churn_assets.cli import parent_pid
from churn_assets_tests import reference_oracle
from churn_assets_tests.fake_anthropic import FakeAnthropic
from churn_assets_tests.helpers import (
    AS_OF,
    SAMPLE,
    assert_no_personal_data,
    land_sample,
    materialize,
    needs_sample,
    project_env,
    query,
)
from churn_assets_tests.spark_cluster import QUICK_JVM, Cluster

pyspark = pytest.importorskip("pyspark", reason="the spark extra is not installed (CHURN_EXTRAS=spark scripts/setup)")
pytestmark = [
    needs_sample,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Java 17 is not installed"),
]

BRONZE_TO_GOLD = "*gold/churn_features"
ML = ["ml/churn_model", "ml/churn_model_champion", "gold/churn_prediction"]
PREDICTION_COLUMNS = "user_id, churn_probability, churn_prediction, model_name, model_version"

TIMES: dict[str, float] = {}


def gold_columns() -> str:
    """Every column of gold, in the contract's order."""
    from churn_assets.defs.gold.features import FEATURE_COLUMNS

    return ", ".join(FEATURE_COLUMNS)


# --- The DuckDB reference and the cluster: one of each for the file ------------------------------


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
        # The session's key (conftest.py), which this process's runs use too: gold's e-mail
        # column is its HMAC, and the DuckDB home is the reference of both kinds of run.
        CHURN_PSEUDONYM_KEY=os.environ["CHURN_PSEUDONYM_KEY"],
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


@dataclass
class DuckdbCycle:
    """`churn run` on DuckDB in a subprocess, started and not yet waited for."""

    home: Path
    fake: FakeAnthropic  # its requests: the campaign's API calls
    proc: subprocess.Popen
    started: float = field(default_factory=time.perf_counter)
    done_at: float | None = None

    def done(self) -> Path:
        """The home, once the cycle has succeeded."""
        if self.done_at is None:
            finished(self.proc, self.home)
            self.done_at = time.perf_counter() - self.started
        return self.home


@pytest.fixture(scope="module")
def duckdb_cycle(tmp_path_factory):
    """The reference: the whole cycle on DuckDB, the campaign against a fake Anthropic server."""
    home = tmp_path_factory.mktemp("duckdb")
    (home / "landing").mkdir()
    land_sample(home)
    with FakeAnthropic() as fake:
        cycle = DuckdbCycle(home, fake, churn("run", env=churn_env(home, fake.url)))
        try:
            yield cycle
        finally:
            if cycle.proc.poll() is None:  # a test failed before waiting for it
                cycle.proc.kill()
                cycle.proc.communicate()


@pytest.fixture(scope="module")
def duckdb_home(duckdb_cycle) -> Path:
    return duckdb_cycle.done()


# The file's own: stopped when the file ends, not at the worker's last test (an idle
# application's JVMs would otherwise live on beside the rest of the suite). It asks for the
# DuckDB cycle first, so that the cycle runs while the JVMs start (mostly waiting), not beside a
# Spark run: a loaded server is slower to start the Python workers Connect needs.
@pytest.fixture(scope="module")
def cluster(duckdb_cycle, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("spark-cluster"), java_options=QUICK_JVM)
    # The driver in this process (the spark:// tests) reads these when its application starts.
    saved = {k: os.environ.get(k) for k in ("SPARK_HOME", "SPARK_LOCAL_IP", "PYSPARK_PYTHON", "SPARK_CONF_DIR")}
    os.environ.update({k: c.env[k] for k in saved})
    TIMES["cluster_start_s"] = c.start()
    try:
        yield c
    finally:
        from churn_assets.engine import stop_sessions

        stop_sessions()
        c.stop_connect()
        c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        print(f"\nspark engine timings: {TIMES}")


def applications(cluster: Cluster) -> list[dict]:
    """Every application the cluster's master knows: running and completed."""
    state = cluster.state()
    return state.get("activeapps", []) + state.get("completedapps", [])


# --- Spark Connect: the whole cycle, the run's process a client ---------------------------------

# A figure of wall-clock instants (when each layer last took data in): equal in shape only.
CLOCK_FIGURES = {"layer_freshness"}
CONNECT_SQL = (
    "SELECT f.country, count(*) AS customers, sum(p.churn_prediction) AS at_risk, max(f.last_event) AS last_event "
    "FROM gold.churn_features f JOIN gold.churn_prediction p ON p.user_id = f.user_id "
    "GROUP BY f.country ORDER BY f.country"
)


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


# First in the file: the server's application needs the workers' cores, which this process's
# driver holds from its first spark:// test on, and both workers (the last test kills one).
@pytest.mark.skipif(
    importlib.util.find_spec("grpc_status") is None,
    reason="no Spark Connect client packages (CHURN_EXTRAS=spark scripts/setup)",
)
def test_the_whole_cycle_over_spark_connect_equals_duckdb(cluster, duckdb_cycle, tmp_path):
    from churn_assets.defs.dashboards.metrics import METRICS
    from churn_assets.engine import stop_sessions

    times: dict[str, float] = {}
    t_all = time.perf_counter()
    stop_sessions()  # the server needs the workers' cores: no application of this process holds them
    before = {app["id"] for app in applications(cluster)}
    duck_home, fake_d, spark_home = duckdb_cycle.home, duckdb_cycle.fake, tmp_path / "spark"
    (spark_home / "landing").mkdir(parents=True)
    land_sample(spark_home)
    try:
        with FakeAnthropic() as fake_s:
            # The DuckDB cycle, started with the cluster, may still run while the server starts.
            times["connect_server_start_s"] = cluster.start_connect()
            duckdb_cycle.done()
            times["duckdb_cycle_done_at_s"] = duckdb_cycle.done_at
            connect_env = {"CHURN_ENGINE": "spark", "CHURN_SPARK_MASTER": cluster.connect_url}
            t0 = time.perf_counter()
            out, _ = finished(churn("run", env=churn_env(spark_home, fake_s.url, **connect_env)), spark_home)
            times["spark_connect_cycle_s"] = time.perf_counter() - t0
        assert "succeeded" in out
        # `churn sql` over Connect prints DuckDB's rows (both at once).
        t0 = time.perf_counter()
        q_duck = churn("sql", CONNECT_SQL, "--csv", env=churn_env(duck_home, fake_d.url))
        q_spark = churn("sql", CONNECT_SQL, "--csv", env=churn_env(spark_home, fake_s.url, **connect_env))
        (csv_duck, _), (csv_spark, err_spark) = finished(q_duck, duck_home), finished(q_spark, spark_home)
        times["churn_sql_s"] = time.perf_counter() - t0
        # The only application the cluster ran since this test began is the Connect server's:
        # the run's process was a client, every job ran there.
        assert [app["name"] for app in applications(cluster) if app["id"] not in before] == ["Spark Connect server"]
    finally:
        cluster.stop_connect()
        times["total_s"] = time.perf_counter() - t_all
        print(f"\nspark connect timings: { {k: round(v, 1) for k, v in times.items()} }; load {os.getloadavg()}")

    # Gold, row for row on every column.
    cols = gold_columns()
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


# --- A driver in this process (spark://): bronze to gold, the model, exactly once ---------------


def warehouse_uri(home: Path) -> str:
    """The Spark warehouse as a URI (file://), as an object store's would be: the storage layer's
    URI handling runs end to end; the same folder as the default $CHURN_HOME/spark_warehouse."""
    return f"file://{home}/spark_warehouse"


def spark_env(cluster: Cluster, home: Path) -> dict[str, str]:
    return {
        "CHURN_ENGINE": "spark",
        "CHURN_SPARK_MASTER": cluster.master_url,
        "CHURN_SPARK_WAREHOUSE": warehouse_uri(home),
    }


def run_spark(cluster: Cluster, home: Path, selection: str = BRONZE_TO_GOLD, **env: str):
    t0 = time.perf_counter()
    result = materialize(home, selection, env={**spark_env(cluster, home), **env})
    return result, time.perf_counter() - t0


def spark_rows(cluster: Cluster, home: Path, sql: str) -> list[tuple]:
    return spark_reader(cluster, home)(sql)


def spark_reader(cluster: Cluster, home: Path):
    """A query function over the Spark warehouse's tables as they are now: each query registers
    the tables it names, as the engine's cursor does (registering one lists the table's folder
    and runs a Spark job for its parquet schema; every table for every query cost hundreds)."""
    from churn_assets.engine import named_tables, qualify, register_tables, spark_session

    warehouse = warehouse_uri(home)
    spark = spark_session(cluster.master_url, warehouse)

    def rows(sql: str) -> list[tuple]:
        assert register_tables(spark, warehouse, named_tables(sql)), f"no table of {sql!r} under {warehouse}"
        return [tuple(r) for r in spark.sql(qualify(sql)).collect()]

    return rows


@pytest.fixture(scope="module")
def spark_home(cluster, tmp_path_factory):
    home = tmp_path_factory.mktemp("spark-engine")
    (home / "landing").mkdir()
    land_sample(home)
    result, took = run_spark(cluster, home)
    assert result.success
    TIMES["sample_bronze_to_gold_first_s"] = took
    return home


def test_gold_equals_the_duckdb_engine_row_for_row(cluster, duckdb_home, spark_home):
    cols = gold_columns()
    expected = query(duckdb_home, f"SELECT {cols} FROM gold.churn_features ORDER BY user_id")
    got = spark_rows(cluster, spark_home, f"SELECT {cols} FROM gold.churn_features ORDER BY user_id")
    assert len(expected) == 450
    assert got == expected


def test_silver_equals_the_duckdb_engine(cluster, duckdb_home, spark_home):
    for table, key in (("silver.churn_users", "user_id"), ("silver.churn_orders", "order_id")):
        cols = "*" if table.endswith("users") else "amount, order_id, user_id, item_count, creation_date"
        sql = f"SELECT {cols} FROM {table} ORDER BY {key}"
        expected = query(duckdb_home, sql)
        got = spark_rows(cluster, spark_home, sql.replace("*", _silver_user_columns()))
        if table.endswith("users"):
            expected = [r[:12] for r in expected]  # without _file_id/_row_no (numbered per engine)
        assert got == expected, table


def _silver_user_columns() -> str:
    return (
        "user_id, email, creation_date, last_activity_date, firstname, lastname, address, canal, country, "
        "gender, age_group, churn"
    )


def test_the_plain_sql_oracle_holds(cluster, spark_home):
    cols = ", ".join(reference_oracle.COMPARED)
    expected = (
        reference_oracle.oracle(SAMPLE, AS_OF[:10]).execute(f"SELECT {cols} FROM expected ORDER BY user_id").fetchall()
    )
    got = spark_rows(cluster, spark_home, f"SELECT {cols} FROM gold.churn_features ORDER BY user_id")
    assert len(expected) == 450
    assert got == expected


def test_quality_rows_and_checks_as_on_duckdb(cluster, spark_home):
    rows = {
        (t, x): (p, f, d)
        for t, x, p, f, d in spark_rows(
            cluster, spark_home, "SELECT table_name, expectation, passed, failed, dropped FROM ops.data_quality"
        )
    }
    assert rows[("silver.churn_orders", "order_valid_id")] == (2129, 44, 44)
    assert rows[("silver.churn_orders", "order_valid_user_id")] == (2150, 23, 23)
    assert rows[("bronze.churn_users_bronze", "correct_schema")] == (2086, 0, 0)
    assert rows[("gold.churn_features", "one_row_per_customer")] == (450, 0, 0)


def _churn_sql(home: Path, sql: str, env: dict[str, str]) -> tuple[int, str, str]:
    from churn_assets.cli import main
    from churn_assets.settings import environment_scope

    out, err = io.StringIO(), io.StringIO()
    with environment_scope(CHURN_HOME=str(home), CHURN_AS_OF=AS_OF, **env):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["sql", sql, "--csv"])
    return code, out.getvalue(), err.getvalue()


def test_churn_sql_same_rows_on_both_engines(cluster, duckdb_home, spark_home):
    sql = (
        "SELECT country, count(*) AS customers, sum(order_count) AS orders, max(last_event) AS last_event "
        "FROM gold.churn_features GROUP BY country ORDER BY country"
    )
    code_d, out_d, err_d = _churn_sql(duckdb_home, sql, {})
    code_s, out_s, err_s = _churn_sql(spark_home, sql, spark_env(cluster, spark_home))
    assert (code_d, err_d) == (0, "") and (code_s, err_s) == (0, "")
    assert out_d == out_s
    assert out_d.splitlines()[0] == "country,customers,orders,last_event"
    assert len(out_d.splitlines()) == 4  # FR, SPAIN, USA
    # Nothing that writes.
    code, _, err = _churn_sql(spark_home, "DROP TABLE gold.churn_features", spark_env(cluster, spark_home))
    assert code == 1 and "read-only" in err


def _ml_metadata(meta) -> dict:
    """The training step's figures from its materialization's metadata."""
    keys = ("model_version", "holdout_roc_auc", "holdout_log_loss", "threshold", "rows_train", "rows_holdout")
    return {k: meta[k].value for k in keys}


def _duckdb_cycle_ml_metadata(home: Path) -> dict:
    """The training step's figures as the DuckDB cycle's run recorded them (its Dagster instance)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["ml", "churn_model"]))
    assert event is not None, "the DuckDB cycle trained no model"
    return _ml_metadata(event.asset_materialization.metadata)


def test_model_and_predictions_equal_the_duckdb_engine(cluster, duckdb_home, spark_home):
    """The ml group on Spark against the DuckDB cycle's (the same steps, run by that cycle on the
    same gold): training on the same gold rows (Spark's collected as Arrow) gives the same booster,
    and the cluster's scoring with that champion (an MLflow spark_udf) writes DuckDB's
    predictions row for row."""
    duck = _duckdb_cycle_ml_metadata(duckdb_home)
    spark, took = run_spark(cluster, spark_home, ML)
    TIMES["ml_group_spark_s"] = took
    assert spark.success
    on_spark = _ml_metadata(spark.asset_materializations_for_node("ml__churn_model")[0].metadata)
    assert on_spark == duck
    assert on_spark["model_version"] == "1"
    # The same model: LightGBM's text of the champion's booster, byte for byte.
    (booster_d,), (booster_s,) = ([p.read_text() for p in h.rglob("booster.txt")] for h in (duckdb_home, spark_home))
    assert booster_s == booster_d
    expected = query(duckdb_home, f"SELECT {PREDICTION_COLUMNS} FROM gold.churn_prediction ORDER BY user_id")
    got = spark_rows(cluster, spark_home, f"SELECT {PREDICTION_COLUMNS} FROM gold.churn_prediction ORDER BY user_id")
    assert len(expected) == 450 and len(got) == 450
    assert [(r[0], r[2], r[3], r[4]) for r in got] == [(r[0], r[2], r[3], r[4]) for r in expected]
    assert max(abs(g[1] - e[1]) for g, e in zip(got, expected, strict=True)) <= 1e-9
    assert 0 < sum(r[2] for r in got) < 450  # both tiers present: the comparison compares something
    # The same columns as the DuckDB table.
    from churn_assets.engine import current_dir, spark_session

    warehouse = warehouse_uri(spark_home)
    where = current_dir(warehouse, "gold.churn_prediction")
    spark_cols = spark_session(cluster.master_url, warehouse).read.parquet(where).columns
    duck_cols = [c for (c,) in query(duckdb_home, "SELECT column_name FROM (DESCRIBE gold.churn_prediction)")]
    assert spark_cols == duck_cols
    # Of the same types where DuckDB reads Spark's files (a time zone would make another type).
    files = str(where).removeprefix("file:")
    described = duckdb.connect().execute(f"DESCRIBE SELECT * FROM read_parquet('{files}/*.parquet')").fetchall()
    spark_types = {name: kind for name, kind, *_ in described}
    duck_types = {name: kind for name, kind, *_ in query(duckdb_home, "DESCRIBE gold.churn_prediction")}
    # The features hash is each engine's own (DuckDB's hash, unsigned; Spark's xxhash64, signed).
    assert spark_types.pop("_features_hash") == "BIGINT" and duck_types.pop("_features_hash") == "UBIGINT"
    assert spark_types == duck_types

    # A retrain on Spark: the champion step scores the champion on the holdout read from the
    # cluster, and the new version (the same booster) is not worse: promoted, at DuckDB's AUC.
    t0 = time.perf_counter()
    force = {"ops": {"ml__churn_model": {"config": {"force": True}}}}
    again = materialize(spark_home, ML[:2], env=spark_env(cluster, spark_home), run_config=force)
    TIMES["ml_retrain_spark_s"] = time.perf_counter() - t0
    decision = again.asset_materializations_for_node("ml__churn_model_champion")[0].metadata
    assert decision["decision"].value == "promoted" and decision["champion_version"].value == "2"
    assert decision["champion_holdout_roc_auc"].value == pytest.approx(duck["holdout_roc_auc"], abs=1e-12)


def test_the_training_sample_is_taken_on_the_cluster_as_on_duckdb(cluster, duckdb_home, spark_home):
    """Above CHURN_TRAIN_MAX_ROWS both engines keep the same customers: the one training SQL,
    its md5_number rule transpiled, run where the data is; only the result is collected."""
    import polars as pl

    from churn_assets.defs.ml.features import LABEL, landed_rows, load_features, load_holdout, load_training
    from churn_assets.defs.ml.spark import landed_and_latest
    from churn_assets.engine import EngineResource

    engine = EngineResource(
        name="spark",
        spark_master=cluster.master_url,
        spark_warehouse=warehouse_uri(spark_home),
        spark_python=sys.executable,
    )
    con = duckdb.connect(str(duckdb_home / "warehouse.duckdb"), read_only=True)
    try:
        for cap, holdout_cap in ((0, 0), (100, 0), (0, 50), (100, 50)):
            d, s = load_training(con, cap, holdout_cap), load_training(engine.cursor(), cap, holdout_cap)
            assert (
                (s.rows, s.rows_train_available, s.rows_holdout_available)
                == (
                    d.rows,
                    d.rows_train_available,
                    d.rows_holdout_available,
                )
                == (450, 367, 83)
            )
            assert s.frame["user_id"].to_list() == d.frame["user_id"].to_list()
            # Every value (Python's == across the engines' integer widths).
            assert s.frame.to_dicts() == d.frame.to_dicts()
        # cap 100, holdout cap 50: 100 training customers and 50 of the 83 holdout customers, each
        # label its share (rounded); the champion step's holdout is those 50 on both engines.
        train = s.frame.filter(~pl.col("is_holdout"))
        assert train.height == 100 and s.frame.height == 150
        hold_d, hold_s = load_holdout(con, 50), load_holdout(engine.cursor(), 50)
        assert hold_s.to_dicts() == hold_d.to_dicts() == s.frame.filter(pl.col("is_holdout")).to_dicts()
        available = dict(load_training(con, 0).frame.filter(~pl.col("is_holdout"))[LABEL].value_counts().iter_rows())
        shares = {label: round(100 * n / 367) for label, n in available.items()}
        assert dict(train[LABEL].value_counts().iter_rows()) == shares
        hold_d, hold_s = load_features(con, holdout_only=True), load_features(engine.cursor(), holdout_only=True)
        assert hold_s["user_id"].to_list() == hold_d["user_id"].to_list() and hold_s.height == 83
        # What the retrain policy counts: bronze rows landed (DuckDB's manifest, Spark's bronze tables).
        assert (
            landed_and_latest(engine)[0]
            == landed_rows(con)
            == sum(
                SAMPLE_COUNTS[f"bronze.{t}"] for t in ("churn_users_bronze", "churn_orders_bronze", "churn_app_events")
            )
        )
    finally:
        con.close()


def _counts(cluster, home) -> dict[str, int]:
    return {t: spark_rows(cluster, home, f"SELECT count(*) FROM {t}")[0][0] for t in SAMPLE_COUNTS}


SAMPLE_COUNTS = {
    "bronze.churn_users_bronze": 2086,
    "bronze.churn_orders_bronze": 2173,
    "bronze.churn_app_events": 1125,
    "silver.churn_users": 2086,
    "silver.churn_orders": 2106,
    "gold.churn_features": 450,
}
NEW_USER = "00000000-0000-4000-8000-000000000001"


def _land_increment(home: Path) -> None:
    """One new customer with two orders and one event (4 landed records in 3 files)."""
    user = {
        "id": NEW_USER,
        "firstname": "ada",
        "lastname": "LOVELACE",
        "email": "ada@example.com",
        "address": "1 Main St",
        "canal": "WEBAPP",
        "country": "FR",
        "creation_date": "01-02-2023 10:00:00",
        "last_activity_date": "06-01-2023 10:00:00",
        "gender": 0.0,
        "age_group": 4.0,
        "churn": False,
    }
    (home / "landing" / "users" / "zz-increment.json").write_text(json.dumps(user) + "\n")
    orders = [
        {
            "id": f"00000000-0000-4000-9000-00000000000{i}",
            "user_id": NEW_USER,
            "transaction_date": f"05-0{i}-2023 12:00:00",
            "item_count": 2.0,
            "amount": 37.9,
        }
        for i in (1, 2)
    ]
    (home / "landing" / "orders" / "zz-increment.json").write_text("".join(json.dumps(o) + "\n" for o in orders))
    header = "user_id,event_id,platform,date,action,session_id,url\n"
    (home / "landing" / "events" / "zz-increment.csv").write_text(
        header + f"{NEW_USER},e1,ios,05-03-2023 09:00:00,view,s1,/a\n"
    )


def _kill_a_worker_once_a_job_runs(cluster: Cluster, spark, killed: list[int]) -> None:
    """SIGKILL the last worker (and its executor) as soon as the application runs a job: the
    run's first (the thread starts just before the run, and nothing else uses the application)."""
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        victim = cluster.workers[-1]
        running = tracker.getActiveJobsIds()
        mine = [pid for pid in cluster.executor_pids() if parent_pid(pid) == victim.pid] if running else []
        if mine:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim.pid, signal.SIGKILL)  # the worker's group: the worker and its executor
            killed.extend([victim.pid, *mine])
            return
        time.sleep(0.05)


def test_exactly_once_rerun_copy_increment_and_a_killed_worker(cluster, spark_home):
    """On the sample already built (spark_home): a second run adds nothing; then a copy of a
    landed file under a new name plus an increment and a copy of one of its files, in a run
    during which a worker is killed with SIGKILL and each file is a micro-batch of its own: the
    run succeeds and adds exactly the increment's records. Last in the file: one worker is left."""
    from churn_assets.engine import spark_session

    home = spark_home
    assert _counts(cluster, home) == SAMPLE_COUNTS
    result, took = run_spark(cluster, home)
    assert result.success
    TIMES["sample_rerun_nothing_new_s"] = took
    assert _counts(cluster, home) == SAMPLE_COUNTS

    events = sorted((home / "landing" / "events").glob("*.csv"))[0]
    shutil.copy(events, events.with_name("copy-of-" + events.name))
    _land_increment(home)
    # Landed after the original, so taken in a later micro-batch of the same run (one file each).
    orders = home / "landing" / "orders"
    shutil.copy(orders / "zz-increment.json", orders / "zz-increment-again.json")
    # The application the earlier tests started (the run's too: one per process), its executors
    # up on both workers: the kill lands once the run has a job on them, not while they start
    # (a fresh application for this run cost two executor JVMs more).
    killed: list[int] = []
    spark = spark_session(cluster.master_url, warehouse_uri(home))
    killer = threading.Thread(target=_kill_a_worker_once_a_job_runs, args=(cluster, spark, killed), daemon=True)
    killer.start()
    result, took = run_spark(cluster, home, CHURN_BATCH_BYTES="1")
    killer.join(timeout=5)
    TIMES["increment_run_with_a_worker_killed_s"] = took
    assert killed, "no executor was running to kill: the test tested nothing"
    assert result.success
    after = _counts(cluster, home)
    assert {t: after[t] - SAMPLE_COUNTS[t] for t in SAMPLE_COUNTS} == {
        "bronze.churn_users_bronze": 1,
        "bronze.churn_orders_bronze": 2,
        "bronze.churn_app_events": 1,
        "silver.churn_users": 1,
        "silver.churn_orders": 2,
        "gold.churn_features": 1,
    }
    dup = spark_rows(cluster, home, "SELECT path FROM bronze.ingest_manifest_events WHERE status = 'duplicate'")
    assert [p.rsplit("/", 1)[-1] for (p,) in dup] == ["copy-of-" + events.name]
    taken = spark_rows(
        cluster,
        home,
        "SELECT batch, status FROM bronze.ingest_manifest_orders WHERE path LIKE '%zz-increment%' ORDER BY batch",
    )
    assert [status for _, status in taken] == ["loaded", "duplicate"] and taken[0][0] < taken[1][0], taken
    row = spark_rows(
        cluster,
        home,
        "SELECT firstname, order_count, total_amount, total_item, platform, event_count, days_since_creation "
        f"FROM gold.churn_features WHERE user_id = '{NEW_USER}'",
    )
    # 37.9 truncates to 37 per order (as on DuckDB); 2023-01-02 -> 2023-06-10 is 159 days.
    assert row == [("Ada", 2, 74, 4, "ios", 1, 159)]
    # Built again and again on a file:// warehouse URI (pointers, listings and cleanup through the
    # storage layer): each versioned table keeps one version folder, the one its pointer names.
    root = home / "spark_warehouse"
    for table in ("silver/churn_users", "silver/churn_orders", "gold/churn_features"):
        versions = [p.name for p in (root / table).iterdir() if p.name.startswith("v-")]
        assert versions == [(root / table / "_CURRENT").read_text()], table
