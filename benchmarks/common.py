"""What the benchmarks share."""

from __future__ import annotations


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Each step's duration in a run, from the run's event log (STEP_START to STEP_SUCCESS)."""
    starts, out = {}, {}
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = record.timestamp
        elif ev.event_type_value == "STEP_SUCCESS":
            out[ev.step_key] = record.timestamp - starts[ev.step_key]
    return out
