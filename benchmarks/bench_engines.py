"""The cycle bronze -> silver -> gold -> ml on the DuckDB engine and on a Spark standalone cluster, side by side.

Usage:  python benchmarks/bench_engines.py [--scale 1 10] [--workers 2] [--worker-memory 2g] [--workdir DIR]

Starts one standalone cluster (a master and ``--workers`` workers on 127.0.0.1, from the
pyspark distribution: ``churn_assets_tests.spark_cluster.Cluster``, the one the Spark test
starts). For each scale: ``churn generate`` once (seed 42), then ``churn run --select`` of the
prediction and everything upstream, once with ``CHURN_ENGINE=duckdb`` and once with
``CHURN_ENGINE=spark`` against the cluster, each in its own process and a fresh home over
hard links of the same landing files. Per layer: the summed step durations of the run (its
event log, as bench_scale). Memory: the peak of the summed RSS of the run's process tree
(Python + the Spark driver JVM), sampled from /proc, and the same for the workers' trees
(worker daemons, executor JVMs, their Python workers). Parity is asserted: gold's row count,
a checksum of every column and the rows themselves (EXCEPT ALL both ways), and the
predictions. Then a table per scale with Spark / DuckDB per layer and the throughput per core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scale import AS_OF, REPO, layer_of, measured  # noqa: E402
from benchmarks.common import step_seconds  # noqa: E402
from churn_assets.cli import descendants  # noqa: E402
from churn_assets_tests.spark_cluster import Cluster  # noqa: E402

SELECTION = "*gold/churn_prediction"  # bronze -> silver -> gold -> training, champion, scoring
LAYERS = ("bronze", "silver", "gold", "training", "scoring")
PAGE = os.sysconf("SC_PAGE_SIZE")
# One e-mail pseudonym key for both homes: else each makes its own and the e-mail column differs.
PSEUDONYM_KEY = "bench-engines-pseudonym-key-0123456789abcdef"


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _trees(roots: set[int]) -> set[int]:
    """The roots and every process below them, now."""
    return set(roots) | descendants(*roots)


class PeakRSS:
    """Samples the summed RSS of process trees every ``every`` seconds, in a thread."""

    def __init__(self, groups: dict[str, set[int]], every: float = 0.25):
        self.groups, self.every = groups, every
        self.peak = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, roots in self.groups.items():
                self.peak[name] = max(self.peak[name], sum(_rss(p) for p in _trees(roots)))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_engine(engine: str, data: Path, home: Path, cluster: Cluster) -> dict:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copytree(data / "landing", home / "landing", copy_function=os.link)
    env = {
        **cluster.env,  # SPARK_CONF_DIR: the application's executor/driver memory and shuffle partitions
        "CHURN_HOME": str(home),
        "CHURN_AS_OF": AS_OF,
        "CHURN_ENGINE": engine,
        "CHURN_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CHURN_SPARK_MASTER": cluster.master_url,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    env.pop("ANTHROPIC_API_KEY", None)
    cmd = [sys.executable, "-m", "churn_assets.cli", "run", "--select", SELECTION]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with PeakRSS({"driver": {proc.pid}, "workers": {w.pid for w in cluster.workers}}) as peak:
        out, _ = proc.communicate()
    wall = time.perf_counter() - t0

    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        (record,) = instance.get_run_records(limit=1)
        ok = record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        steps = step_seconds(instance, record.dagster_run.run_id)
    if not ok:
        raise SystemExit(f"{engine} run failed (exit {proc.returncode}):\n{out.decode()[-4000:]}")
    if proc.returncode != 0:  # the run succeeded; what follows it (the summary) did not
        print(f"note: {engine}: `churn run` exited {proc.returncode} after a successful run:\n{out.decode()[-1500:]}")
    layers = dict.fromkeys(LAYERS, 0.0)
    for step, secs in steps.items():
        layers[layer_of(step)] = layers.get(layer_of(step), 0.0) + secs
    return {
        **layers,
        "steps": sum(steps.values()),
        "wall": wall,
        "rss_driver": peak.peak["driver"] / 1e9,
        "rss_workers": peak.peak["workers"] / 1e9,
    }


def spark_overhead(cluster: Cluster) -> dict:
    """A Spark application's fixed cost here: start (driver JVM, registration, executors) and one trivial job."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from pyspark.sql import SparkSession\n"
        f"s = SparkSession.builder.master({cluster.master_url!r}).getOrCreate()\n"
        "s.range(1).count(); t1 = time.perf_counter()\n"
        "s.range(1000).count(); t2 = time.perf_counter()\n"
        "s.stop(); print(t1 - t0, t2 - t1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, check=True, text=True)
    start, job = map(float, out.stdout.split()[-2:])
    return {"app_start_s": start, "trivial_job_s": job}


def parity(duck_home: Path, spark_home: Path) -> dict:
    """Gold and predictions equal between the engines; raises AssertionError otherwise."""
    import duckdb

    from churn_assets.defs.gold.features import FEATURE_COLUMNS
    from churn_assets.engine import current_dir
    from churn_assets.landing import SPECS

    warehouse = str(spark_home / "spark_warehouse")
    con = duckdb.connect()
    con.execute(f"ATTACH '{duck_home / 'warehouse.duckdb'}' AS d (READ_ONLY)")

    def spark_table(table: str) -> str:
        return f"read_parquet('{current_dir(warehouse, table)}/**/*.parquet', hive_partitioning = false)"

    def as_text(cols) -> str:
        return ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in cols)

    sums = ", ".join(f"count({c}), sum(hash(CAST({c} AS VARCHAR)))" for c in FEATURE_COLUMNS)
    duck = con.execute(f"SELECT count(*), {sums} FROM d.gold.churn_features").fetchone()
    spark = con.execute(f"SELECT count(*), {sums} FROM {spark_table('gold.churn_features')}").fetchone()
    assert duck == spark, f"gold checksums differ: {duck} != {spark}"
    cols = as_text(FEATURE_COLUMNS)
    a, b = f"SELECT {cols} FROM d.gold.churn_features", f"SELECT {cols} FROM {spark_table('gold.churn_features')}"
    (only_duck,) = con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()
    (only_spark,) = con.execute(f"SELECT count(*) FROM ({b} EXCEPT ALL {a})").fetchone()
    assert only_duck == only_spark == 0, f"gold rows differ: {only_duck} only on DuckDB, {only_spark} only on Spark"
    pred = con.execute(
        f"SELECT count(*), count(s.user_id), sum(CASE WHEN d.churn_prediction = s.churn_prediction "
        "AND d.model_version = s.model_version THEN 1 ELSE 0 END), max(abs(d.churn_probability - s.churn_probability)) "
        f"FROM d.gold.churn_prediction d LEFT JOIN {spark_table('gold.churn_prediction')} s USING (user_id)"
    ).fetchone()
    (spark_pred,) = con.execute(f"SELECT count(*) FROM {spark_table('gold.churn_prediction')}").fetchone()
    assert pred[0] == pred[1] == pred[2] == spark_pred == duck[0], f"predictions differ: {pred}, spark {spark_pred}"
    assert pred[3] <= 1e-9, f"probabilities differ by up to {pred[3]}"
    bronze = sum(con.execute(f"SELECT count(*) FROM d.bronze.{spec.table}").fetchone()[0] for spec in SPECS.values())
    con.close()
    return {"gold_rows": duck[0], "max_prob_diff": pred[3], "bronze_rows": bronze}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-cores", type=int, default=1)
    ap.add_argument("--worker-memory", default="2g", help="memory a worker offers its executors")
    ap.add_argument("--executor-memory", default=None, help="an executor's heap (default: the worker's less 25 %%)")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--shuffle-partitions", type=int, default=None, help="default: 2 x the cluster's cores")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = args.workers * args.worker_cores
    executor_memory = args.executor_memory or _three_quarters(args.worker_memory)
    cluster = Cluster(
        work / "cluster",
        worker_memory=args.worker_memory,
        worker_cores=args.worker_cores,
        executor_memory=executor_memory,
        driver_memory=args.driver_memory,
        shuffle_partitions=args.shuffle_partitions or 2 * cores,
    )
    started = cluster.start(args.workers)
    try:
        overhead = spark_overhead(cluster)
        print(
            f"cluster: {args.workers} workers x {args.worker_cores} core(s), worker memory {args.worker_memory}, "
            f"executors {executor_memory}, driver {args.driver_memory}; started in {started:.1f}s; "
            f"a Spark application starts in {overhead['app_start_s']:.1f}s, a trivial job then takes "
            f"{overhead['trivial_job_s']:.2f}s; DuckDB has the machine's {os.cpu_count()} cores",
            flush=True,
        )
        for scale in args.scale:
            bench_scale(scale, work, cluster, cores)
    finally:
        cluster.stop()


def _three_quarters(memory: str) -> str:
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    mb = float(memory[:-1]) * units[memory[-1].lower()]
    return f"{int(mb * 0.75)}m"


def bench_scale(scale: float, work: Path, cluster: Cluster, spark_cores: int) -> None:
    data = work / f"data-{scale:g}"
    customers = int(100_000 * scale)
    if not (data / "landing").is_dir():
        env = {**os.environ, "CHURN_HOME": str(data), "CHURN_AS_OF": AS_OF, "DAGSTER_HOME": str(data / "dh")}
        gen, _ = measured(
            [sys.executable, "-m", "churn_assets.cli", "generate", "--customers", str(customers), "--seed", "42"]
            + ["--end", "2026-11-01", "--quiet"],
            env,
        )
        print(f"scale {scale:g}: generated {customers:,} customers in {gen:.1f}s", flush=True)
    landing_bytes = sum(p.stat().st_size for p in (data / "landing").rglob("*") if p.is_file())
    res = {}
    for engine in ("duckdb", "spark"):
        res[engine] = run_engine(engine, data, work / f"{engine}-{scale:g}", cluster)
        print(f"scale {scale:g} {engine}: {res[engine]}", flush=True)
    check = parity(work / f"duckdb-{scale:g}", work / f"spark-{scale:g}")
    d, s = res["duckdb"], res["spark"]
    duck_cores = os.cpu_count() or 1
    print(
        f"\n**{scale:g}x** ({customers:,} customers, {check['bronze_rows']:,} landed records, "
        f"{landing_bytes / 1e6:.0f} MB of landing files; {check['gold_rows']:,} gold rows): parity held (gold "
        f"{check['gold_rows']:,} rows equal, every column; predictions equal, max |dp| {check['max_prob_diff']:.1e})\n"
    )
    print("| layer | DuckDB | Spark | Spark / DuckDB |")
    print("| --- | --- | --- | --- |")
    for layer in (*LAYERS, "steps", "wall"):
        name = {"steps": "**sum of steps**", "wall": "run wall (process start to exit)"}.get(layer, layer)
        print(f"| {name} | {d[layer]:.1f} s | {s[layer]:.1f} s | {s[layer] / max(d[layer], 1e-9):.2f}x |")
    print(f"| peak RSS, run process tree | {d['rss_driver']:.2f} GB | {s['rss_driver']:.2f} GB | |")
    print(f"| peak RSS, workers' trees | - | {s['rss_workers']:.2f} GB | |")
    print(f"\nthroughput per core-second (DuckDB {duck_cores} cores, Spark {spark_cores} executor cores):")
    print("| layer | rows in | DuckDB rows/core-s | Spark rows/core-s |")
    print("| --- | --- | --- | --- |")
    for layer in LAYERS:
        rows = check["bronze_rows"] if layer in ("bronze", "silver") else check["gold_rows"]
        rd = rows / (d[layer] * duck_cores)
        rs = rows / (s[layer] * spark_cores)
        print(f"| {layer} | {rows:,} | {rd:,.0f} | {rs:,.0f} |")
    print(flush=True)


if __name__ == "__main__":
    main()
