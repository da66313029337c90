"""A real Spark standalone cluster on 127.0.0.1 from the pyspark distribution (one master,
workers via `bin/spark-class`): what the Spark engine test and the engine benchmark start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from churn_assets.cli import parent_pid

# JVM options for the tests' short runs on a small sample: the client compiler only (C1) and
# the serial collector. A test's JVMs live a few minutes; the C2 compiler's threads and G1's
# background threads spend CPU there that a few thousand rows never pay back: alone on this
# 2-core machine, test_spark_engine.py took 128 s of CPU instead of 200 (192 s instead of 268),
# test_spark_connect.py 180 s instead of 325 (145 s instead of 218), 2026-11-24. Neither
# changes a result (Java's floating point is strict since 17). The benchmark keeps the JVM's
# defaults (its runs are long); the Spark timings the README quotes from the tests were taken
# with the defaults too.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A standalone master and workers, each a `spark-class` process of the pyspark distribution.

    The defaults are the test's (small executors, a few shuffle partitions for the sample)."""

    def __init__(
        self,
        root: Path,
        worker_memory: str = "1g",
        worker_cores: int = 1,
        executor_memory: str = "512m",
        driver_memory: str = "1g",
        shuffle_partitions: int = 4,
        java_options: str = "",
    ):
        import pyspark

        self.root = root
        self.worker_memory, self.worker_cores = worker_memory, worker_cores
        self.spark_home = Path(pyspark.__file__).parent
        self.port, self.ui_port = _free_port(), _free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.workers: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "SPARK_HOME": str(self.spark_home),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOG_DIR": str(root / "logs"),
            "SPARK_CONF_DIR": str(root / "conf"),
            # The master's and the workers' own JVMs (not their executors).
            **({"SPARK_DAEMON_JAVA_OPTS": java_options} if java_options else {}),
        }
        (root / "conf").mkdir(parents=True, exist_ok=True)
        # The application's side (read by every driver that points SPARK_CONF_DIR here).
        (root / "conf" / "spark-defaults.conf").write_text(
            f"spark.executor.memory {executor_memory}\n"
            f"spark.executor.cores {worker_cores}\n"
            "spark.driver.host 127.0.0.1\n"
            f"spark.driver.memory {driver_memory}\n"
            f"spark.sql.shuffle.partitions {shuffle_partitions}\n"
            "spark.ui.enabled false\n"
            + (
                f"spark.driver.extraJavaOptions {java_options}\nspark.executor.extraJavaOptions {java_options}\n"
                if java_options
                else ""
            )
        )

    def _spawn(self, cls: str, *args: str, log: str) -> subprocess.Popen:
        out = open(self.root / f"{log}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [str(self.spark_home / "bin" / "spark-class"), cls, *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, workers: int = 2) -> float:
        t0 = time.perf_counter()
        self.master = self._spawn(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
            log="master",
        )
        for i in range(workers):
            self.add_worker(i)
        self.wait_alive(workers)
        return time.perf_counter() - t0

    def add_worker(self, i: int) -> subprocess.Popen:
        work = self.root / f"worker-{i}"
        work.mkdir(exist_ok=True)
        proc = self._spawn(
            "org.apache.spark.deploy.worker.Worker",
            "--host",
            "127.0.0.1",
            "--cores",
            str(self.worker_cores),
            "--memory",
            self.worker_memory,
            "--work-dir",
            str(work),
            "--webui-port",
            str(_free_port()),
            self.master_url,
            log=f"worker-{i}",
        )
        self.workers.append(proc)
        return proc

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
            return json.load(r)

    def wait_alive(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self.state().get("aliveworkers", 0) >= n:
                    return
            time.sleep(0.3)
        raise AssertionError(f"{n} workers not alive after {timeout}s; see {self.root}")

    def executor_pids(self) -> list[int]:
        """Executor JVMs the workers started (children of the worker processes)."""
        workers = {w.pid for w in self.workers}
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in cmdline and parent_pid(int(proc.name)) in workers:
                found.append(int(proc.name))
        return found

    def stop(self) -> None:
        for proc in [*self.workers, self.master]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        # One grace period for all of them, not one each: stopping takes at most 20 s.
        deadline = time.monotonic() + 20
        for proc in [*self.workers, self.master]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # --- Spark Connect ---------------------------------------------------------------------------

    def start_connect(self, timeout: float = 240) -> float:
        """A Spark Connect server on a free port of 127.0.0.1: the driver of one application on
        this cluster (so it needs the workers' cores free), a foreground `spark-submit` in its own
        process group. Clients set ``connect_url``; ``stop_connect`` ends it. Returns seconds to ready."""
        t0 = time.perf_counter()
        self.connect_port = _free_port()
        self.connect_url = f"sc://127.0.0.1:{self.connect_port}"
        log = self.root / "connect.log"
        out = open(log, "wb")  # noqa: SIM115 - closed with the process
        self.connect = subprocess.Popen(
            [
                str(self.spark_home / "bin" / "spark-submit"),
                "--class",
                "org.apache.spark.sql.connect.service.SparkConnectServer",
                "--name",
                "Spark Connect server",
                "--master",
                self.master_url,
                "--conf",
                f"spark.connect.grpc.binding.port={self.connect_port}",
                "--conf",
                "spark.connect.grpc.binding.address=127.0.0.1",
            ],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connect.poll() is not None:
                raise AssertionError(f"the Spark Connect server exited ({self.connect.returncode}); see {log}")
            try:
                socket.create_connection(("127.0.0.1", self.connect_port), timeout=1).close()
                return time.perf_counter() - t0
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"no Spark Connect server on port {self.connect_port} after {timeout}s; see {log}")

    def stop_connect(self) -> None:
        proc = getattr(self, "connect", None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
