"""File-to-prediction latency in continuous mode, with the real webserver and daemon.

Usage:  python benchmarks/bench_latency.py [--customers 100000] [--drops 10]

Reference-scale history, one full cycle, then ``churn mode continuous`` and ``--drops``
hourly increments (1 % of the volume each), one after the other. For each drop: the time
from the last file of the increment being complete in landing to the end of the run that
scored the predictions with it, split into sensor pick-up, launch and run. Default
settings (a sensor tick listens up to 3 s for new files; a file written in place settles
2 s, one renamed into place is taken at once). The baseline is the hourly cadence, where
a file waits on average half an hour for the next tick.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from churn_assets.generator import generate_history, generate_increment  # noqa: E402
from churn_assets_tests.live import LiveDagster  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--drops", type=int, default=10)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="churn-bench-latency-"))
    generate_history(home, customers=args.customers, seed=42, end=date(2026, 11, 1), progress=False)
    env = {
        "CHURN_SETTLE_SECONDS": os.environ.get("CHURN_SETTLE_SECONDS", "2"),
        "CHURN_SENSOR_INTERVAL_SECONDS": os.environ.get("CHURN_SENSOR_INTERVAL_SECONDS", "3"),
    }
    with LiveDagster(home, env=env) as live:
        first = live.submit()
        assert live.wait_run(first, timeout=600) == dg.DagsterRunStatus.SUCCESS
        live.churn("mode", "continuous")
        rows = []
        seen: set[str] = set()
        for i in range(args.drops):
            report = generate_increment(home, fraction=0.01)
            dropped = max((home / "landing" / f).stat().st_mtime for fs in report.files.values() for f in fs)

            def done(dropped=dropped):  # bound now: a new one each drop
                for r in live.runs(**{"churn/trigger": "landing_sensor"}):
                    if r.dagster_run.run_id in seen or r.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
                        continue
                    if float(r.dagster_run.tags.get("churn/newest_file_mtime", 0)) >= dropped - 1e-3:
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
                    "skipped": record.dagster_run.tags.get("churn/skipped"),
                }
            )
            r = rows[-1]
            print(
                f"drop {i + 1:2d} (+{sum(report.records.values()):,} records): "
                f"{r['total']:5.1f}s = pick-up {r['pickup']:4.1f}s"
                f" + launch {r['launch']:4.1f}s + run {r['run']:4.1f}s (skipped: {r['skipped']})"
            )
            time.sleep(1)
    totals = [r["total"] for r in rows]
    p50, p95 = statistics.median(totals), pct(totals, 0.95)
    print(
        f"\nLATENCY   {len(rows)} drops, file complete -> predictions scored: "
        f"p50 {p50:.1f}s, p95 {p95:.1f}s, max {max(totals):.1f}s "
        f"(pick-up p50 {statistics.median(r['pickup'] for r in rows):.1f}s, "
        f"launch p50 {statistics.median(r['launch'] for r in rows):.1f}s, "
        f"run p50 {statistics.median(r['run'] for r in rows):.1f}s)"
    )
    print(
        f"BASELINE  hourly cadence: a file waits 1,800 s on average for the next tick -> "
        f"continuous is {1800 / p50:.0f}x faster at p50"
    )


if __name__ == "__main__":
    main()
