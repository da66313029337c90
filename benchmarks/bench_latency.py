"""File-to-prediction latency in continuous mode, with the real webserver and daemon.

Usage:  python benchmarks/bench_latency.py [--customers 100000] [--drops 10]

Reference-scale history, one full cycle, then ``churn mode continuous`` and ``--drops``
hourly increments (1 % of the volume each), one after the other. For each drop: the time
from the last file of the increment being complete in landing to the end of the run that
scored the predictions with it, split into sensor pick-up, launch and run. Default
settings (a sensor tick listens for new files through Dagster's whole 5-s sensor loop; a file
written in place settles 2 s, one renamed into place is taken at once). The baseline is the hourly cadence, where
a file waits on average half an hour for the next tick.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from churn_assets import run_tags  # noqa: E402
from churn_assets.generator import generate_history, generate_increment  # noqa: E402
from churn_assets_tests import pg_server  # noqa: E402
from churn_assets_tests.live import LiveDagster  # noqa: E402


def launch_split(live: LiveDagster, record) -> dict:
    """Launch, from the run's own events: queue (created -> dequeued, RUN_STARTING), worker (the
    run worker process started: Python and Dagster imported, "Started process for run"), load
    (the worker loads the code location -> RUN_START); and whether a refresh run of
    ``churn_refresh_sensor`` was running or starting while this one waited in the queue."""
    created = record.create_timestamp.timestamp()
    with live.instance() as instance:
        events = instance.all_logs(
            record.dagster_run.run_id, of_type={dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.ENGINE_EVENT}
        )
        refreshes = instance.get_run_records(dg.RunsFilter(tags={run_tags.TRIGGER: run_tags.AUTOMATION_CONDITION}))
    dequeued = next(e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.RUN_STARTING)
    worker = next(e.timestamp for e in events if (e.message or "").startswith("Started process for run"))
    behind = any(r.start_time and r.start_time < dequeued and (r.end_time or dequeued) > created for r in refreshes)
    return {
        "queue": dequeued - created,
        "worker": worker - dequeued,
        "load": record.start_time - worker,
        "behind_refresh": behind,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--drops", type=int, default=10)
    ap.add_argument(
        "--storage",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Dagster's instance: the embedded default (dagster.yaml, SQLite files) or the production one "
        "(dagster.postgres.yaml, on a PostgreSQL server this benchmark starts on 127.0.0.1)",
    )
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="churn-bench-latency-"))
    generate_history(home, customers=args.customers, seed=42, end=date(2026, 11, 1), progress=False)
    env = {
        "CHURN_SETTLE_SECONDS": os.environ.get("CHURN_SETTLE_SECONDS", "2"),
        "CHURN_SENSOR_INTERVAL_SECONDS": os.environ.get("CHURN_SENSOR_INTERVAL_SECONDS", "3"),
    }
    with contextlib.ExitStack() as stack:
        instance_yaml = "dagster.yaml"
        if args.storage == "postgres":
            pg = pg_server.dagster_env(stack.enter_context(pg_server.postgres_server()))
            env.update(pg)
            os.environ.update(pg)  # this process reads the instance too
            instance_yaml = "dagster.postgres.yaml"
        live = stack.enter_context(LiveDagster(home, env=env, instance_yaml=instance_yaml))
        print(f"instance: {instance_yaml}", flush=True)
        first = live.submit()
        assert live.wait_run(first, timeout=600) == dg.DagsterRunStatus.SUCCESS
        live.churn("mode", "continuous")
        rows = []
        seen: set[str] = set()
        for i in range(args.drops):
            report = generate_increment(home, fraction=0.01)
            dropped = max((home / "landing" / f).stat().st_mtime for fs in report.files.values() for f in fs)

            def done(dropped=dropped):  # bound now: a new one each drop
                for r in live.runs(**{run_tags.TRIGGER: run_tags.LANDING_SENSOR}):
                    if r.dagster_run.run_id in seen or r.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
                        continue
                    if float(r.dagster_run.tags.get(run_tags.NEWEST_FILE_MTIME, 0)) >= dropped - 1e-3:
                        return r
                return None

            record = live.wait_for(done, timeout=300, every=0.5)
            seen.add(record.dagster_run.run_id)
            created = record.create_timestamp.timestamp()
            rows.append(
                {
                    "total": record.end_time - dropped,
                    "pickup": created - dropped,
                    "launch": record.start_time - created,
                    "run": record.end_time - record.start_time,
                    "skipped": record.dagster_run.tags.get(run_tags.SKIPPED),
                    **launch_split(live, record),
                }
            )
            r = rows[-1]
            print(
                f"drop {i + 1:2d} (+{sum(report.records.values()):,} records): "
                f"{r['total']:5.1f}s = pick-up {r['pickup']:4.1f}s"
                f" + launch {r['launch']:4.1f}s (queue {r['queue']:.1f}, worker {r['worker']:.1f},"
                f" load {r['load']:.1f})"
                f" + run {r['run']:4.1f}s (skipped: {r['skipped']})"
                + (" [waited behind a dashboard refresh run]" if r["behind_refresh"] else "")
            )
            time.sleep(1)
    totals = [r["total"] for r in rows]
    p50, p95 = statistics.median(totals), pct(totals, 0.95)
    print(
        f"\nLATENCY   {len(rows)} drops ({args.storage} instance), file complete -> predictions scored: "
        f"p50 {p50:.1f}s, p95 {p95:.1f}s, max {max(totals):.1f}s "
        f"(pick-up p50 {statistics.median(r['pickup'] for r in rows):.1f}s, "
        f"launch p50 {statistics.median(r['launch'] for r in rows):.1f}s, "
        f"run p50 {statistics.median(r['run'] for r in rows):.1f}s)"
    )
    print(
        f"LAUNCH    p50: queue {statistics.median(r['queue'] for r in rows):.1f}s, "
        f"worker start {statistics.median(r['worker'] for r in rows):.1f}s, "
        f"code location load {statistics.median(r['load'] for r in rows):.1f}s; "
        f"{sum(r['behind_refresh'] for r in rows)} drops waited behind a dashboard refresh run"
    )
    load = os.getloadavg()
    print(f"LOAD      average at the end: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min), {load[2]:.1f} (15 min)")
    print(
        f"BASELINE  hourly cadence: a file waits 1,800 s on average for the next tick -> "
        f"continuous is {1800 / p50:.0f}x faster at p50"
    )


if __name__ == "__main__":
    main()
