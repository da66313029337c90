"""A live Dagster deployment for end-to-end tests and benchmarks: the real webserver and
daemon (``dg dev``) on 127.0.0.1, on a persistent instance configured like
production (the project's dagster.yaml), with a webhook receiver for alerts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webhook:
    """Records every JSON body POSTed to it, and when it came (``received_at``, epoch seconds)."""

    def __init__(self):
        self.received: list[dict] = []
        self.received_at: list[float] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                hook.received_at.append(time.time())
                hook.received.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def wait_until_serving(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the webserver on ``port`` answers; a clear error with the log's tail if it never does."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the Dagster webserver did not come up: " + log.read_text()[-3000:]) from None
            time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and all it started."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class LiveDagster:
    def __init__(self, churn_home: Path, env: dict | None = None, instance_yaml: str = "dagster.yaml"):
        self.churn_home = churn_home
        self.dagster_home = churn_home / "dagster_home"
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        # The project's instance config: dagster.yaml (SQLite) or dagster.postgres.yaml (its env in ``env``).
        shutil.copy(REPO / "churn_assets" / "defs" / "automation" / instance_yaml, self.dagster_home / "dagster.yaml")
        self.port = free_port()
        self.webhook = Webhook()
        self.env = {
            **os.environ,
            "CHURN_HOME": str(churn_home),
            "DAGSTER_HOME": str(self.dagster_home),
            "CHURN_SETTLE_SECONDS": "0.5",
            "CHURN_SENSOR_INTERVAL_SECONDS": "2",
            "CHURN_ALERT_WEBHOOK": self.webhook.url,
            "CHURN_UI_URL": f"http://127.0.0.1:{self.port}",
            "DAGSTER_DISABLE_TELEMETRY": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = open(churn_home / "dagster-dev.log", "wb")

    def __enter__(self) -> LiveDagster:
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dg")),
                "dev",
                "-m",
                "churn_assets.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO,
            env={**self.env, "VIRTUAL_ENV": sys.prefix},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_serving(self.port, self.proc, self.churn_home / "dagster-dev.log")
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        return self

    def __exit__(self, *exc):
        if self.proc:
            stop(self.proc)
        self.webhook.close()
        self.log.close()

    # --- talking to it -----------------------------------------------------------------------------

    def graphql(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.port)

    def submit(self, run_config: dict | None = None, tags: dict | None = None) -> str:
        return self.graphql().submit_job_execution("churn_cycle", run_config=run_config or {}, tags=tags)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def churn(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "churn_assets.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    def wait_run(self, run_id: str, timeout: float = 240) -> dg.DagsterRunStatus:
        done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        deadline = time.time() + timeout
        with self.instance() as instance:
            while time.time() < deadline:
                run = instance.get_run_by_id(run_id)
                if run and run.status in done:
                    return run.status
                time.sleep(1)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s")

    def wait_for(self, predicate, timeout: float = 240, every: float = 1.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(
            f"condition not met in {timeout}s; log tail: {(self.churn_home / 'dagster-dev.log').read_text()[-3000:]}"
        )

    def runs(self, **tags) -> list:
        with self.instance() as instance:
            return instance.get_run_records(dg.RunsFilter(job_name="churn_cycle", tags=tags or None))
