"""What the benchmarks share."""

from __future__ import annotations

import resource
import time
from datetime import date
from pathlib import Path


def peak_gb() -> float:
    """This process's peak resident set so far, in GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def history(src: Path, customers: int) -> None:
    """The benchmarks' generated history in ``src`` (seed 42, up to 2026-11-01); one already
    there (a kept ``--workdir``) is reused: the same data, no generation cost."""
    from churn_assets.generator import generate_history

    if (src / "generator").is_dir():
        print(f"reusing the history generated in {src}")
        return
    t0 = time.perf_counter()
    report = generate_history(src, customers=customers, seed=42, end=date(2026, 11, 1), progress=False)
    records = sum(report.records.values())
    print(f"generated {customers:,} customers, {records:,} records in {time.perf_counter() - t0:.1f}s")


def step_windows(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's start and end in a run (wall-clock seconds), from the run's event log
    (STEP_START to STEP_SUCCESS)."""
    starts, out = {}, {}
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = record.timestamp
        elif ev.event_type_value == "STEP_SUCCESS":
            out[ev.step_key] = (starts[ev.step_key], record.timestamp)
    return out


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Each step's duration in a run, from the run's event log (STEP_START to STEP_SUCCESS)."""
    return {step: end - start for step, (start, end) in step_windows(instance, run_id).items()}
