"""An hourly increment cycle against the full cycle, as a user runs them.

Usage:  python benchmarks/bench_increment.py [--scale 1] [--increments 3] [--workdir DIR]

In a fresh CHURN_HOME: ``churn generate --customers <100k x scale>``, the first ``churn run``
(every asset; it trains the first model), then ``--increments`` times ``churn generate
--increment`` (1 % of the volume) and ``churn run`` with no retraining due
(CHURN_RETRAIN_MIN_NEW_ROWS above what the increments add), the same as-of date; then one more
increment on the next as-of date, when every day count moves (gold's day counts and every
prediction are refreshed once a day). Each run is its own process; it prints each run's wall
time, summed step time per layer, peak RSS, and the increment / full ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scale import layer_of, measured  # noqa: E402
from benchmarks.common import step_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-01T23:00:00"  # the increments' hours stay on this date
NEXT_DAY = "2026-11-02T00:30:00"


def last_run_layers(dagster_home: Path) -> dict[str, float]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records(limit=1)
        steps = step_seconds(instance, record.dagster_run.run_id)
    layers: dict[str, float] = {}
    for step, secs in steps.items():
        layers[layer_of(step)] = layers.get(layer_of(step), 0.0) + secs
    return layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--increments", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-increment-"))
    home = work / f"scale-{args.scale:g}"
    shutil.rmtree(home, ignore_errors=True)
    customers = int(100_000 * args.scale)
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "CHURN_AS_OF": AS_OF,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        # An hourly increment adds ~1 % of the rows: no retraining is due within the benchmark.
        "CHURN_RETRAIN_MIN_NEW_ROWS": str(10 * customers),
    }
    env.pop("ANTHROPIC_API_KEY", None)
    churn = [sys.executable, "-m", "churn_assets.cli"]
    gen, gen_rss = measured(
        [*churn, "generate", "--customers", str(customers), "--seed", "42", "--end", "2026-11-01", "--quiet"], env
    )
    print(f"scale {args.scale:g}: generated {customers:,} customers in {gen:.1f}s ({gen_rss:.2f} GB)", flush=True)

    def cycle(label: str, as_of: str = AS_OF) -> tuple[float, dict[str, float]]:
        wall, rss = measured([*churn, "run"], {**env, "CHURN_AS_OF": as_of})
        layers = last_run_layers(home / "dagster_home")
        print(
            f"{label}: churn run {wall:.1f}s wall, {sum(layers.values()):.1f}s of steps, {rss:.2f} GB peak | "
            + ", ".join(f"{k} {v:.1f}s" for k, v in layers.items()),
            flush=True,
        )
        return wall, layers

    full, full_layers = cycle("full cycle")
    incs = []
    for k in range(args.increments):
        measured([*churn, "generate", "--increment", "--quiet"], env)
        wall, _ = cycle(f"increment {k + 1}")
        incs.append(wall)
    measured([*churn, "generate", "--increment", "--quiet"], env)
    daily, _ = cycle("increment on a new as-of date (daily refresh)", NEXT_DAY)
    if incs:
        m = statistics.median(incs)
        print(
            f"\nINCREMENT scale {args.scale:g}: hourly median {m:.1f}s = {m / full:.1%} "
            f"of the full cycle ({full:.1f}s); "
            f"with the daily refresh: {daily:.1f}s = {daily / full:.1%}; a day of 23 hourly + 1 daily: "
            f"{(23 * m + daily) / 24 / full:.1%} per increment"
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
