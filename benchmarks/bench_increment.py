"""An hourly increment cycle against the full cycle, as a user runs them.

Usage:  python benchmarks/bench_increment.py [--scale 1] [--increments 3] [--workdir DIR]
            [--lock /work/big.lock] [--from-full] [--steps]

In a fresh CHURN_HOME: ``churn generate --customers <100k x scale>``, the first ``churn run``
(every asset; it trains the first model), then ``--increments`` times ``churn generate
--increment`` (1 % of the volume) and ``churn run`` with no retraining due
(CHURN_RETRAIN_MIN_NEW_ROWS above what the increments add), the same as-of date; then one more
increment on the next as-of date, when every day count moves (gold's day counts and every
prediction are refreshed once a day). Each run is its own process; it prints each run's wall
time, summed step time per layer (each step's with ``--steps``), peak RSS, the load average,
and the increment / full ratio.

With ``--workdir`` the generated history (``history-<scale>``) and the state right after the
full cycle (``full-<scale>``, with its figures) are kept: the next call reuses the history
instead of generating it again, and ``--from-full`` starts the increments from the kept full
cycle (landing files are hard links: the generator and bronze never rewrite one in place).
``--lock`` takes that file's lock around each command, not around the whole benchmark, so
short runs of others get in between; the wait is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scale import layer_of, measured  # noqa: E402
from benchmarks.common import step_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-01T23:00:00"  # the increments' hours stay on this date
NEXT_DAY = "2026-11-02T00:30:00"


def last_run_steps(dagster_home: Path) -> dict[str, float]:
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records(limit=1)
        return step_seconds(instance, record.dagster_run.run_id)


def layers_of(steps: dict[str, float]) -> dict[str, float]:
    layers: dict[str, float] = {}
    for step, secs in steps.items():
        layers[layer_of(step)] = layers.get(layer_of(step), 0.0) + secs
    return layers


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@contextlib.contextmanager
def locked(path: str | None):
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def copy_home(src: Path, dst: Path) -> None:
    """``src`` to ``dst``: landing files as hard links (never rewritten in place), the rest copied."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for child in src.iterdir():
        if child.name == "landing":
            subprocess.run(["cp", "-al", str(child), str(dst / "landing")], check=True)
        elif child.is_dir():
            shutil.copytree(child, dst / child.name, symlinks=True)
        else:
            shutil.copy2(child, dst / child.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--increments", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--lock", default=None, help="a file whose lock each command holds (e.g. /work/big.lock)")
    ap.add_argument("--from-full", action="store_true", help="start from the full cycle kept in --workdir")
    ap.add_argument("--steps", action="store_true", help="print each step's time, not only each layer's")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-increment-"))
    history, full_state = work / f"history-{args.scale:g}", work / f"full-{args.scale:g}"
    home = work / f"scale-{args.scale:g}"
    customers = int(100_000 * args.scale)

    def env_for(h: Path) -> dict:
        env = {
            **os.environ,
            "CHURN_HOME": str(h),
            "CHURN_AS_OF": AS_OF,
            "DAGSTER_HOME": str(h / "dagster_home"),
            "DAGSTER_DISABLE_TELEMETRY": "1",
            # An hourly increment adds ~1 % of the rows: no retraining is due within the benchmark.
            "CHURN_RETRAIN_MIN_NEW_ROWS": str(10 * customers),
        }
        env.pop("ANTHROPIC_API_KEY", None)
        return env

    env = env_for(home)
    churn = [sys.executable, "-m", "churn_assets.cli"]

    def run(cmd: list[str], e: dict) -> tuple[float, float]:
        with locked(args.lock):
            return measured(cmd, e)

    def cycle(label: str, as_of: str = AS_OF) -> dict:
        wall, rss = run([*churn, "run"], {**env, "CHURN_AS_OF": as_of})
        load = load_average()
        steps = last_run_steps(home / "dagster_home")
        layers = layers_of(steps)
        print(
            f"{label}: churn run {wall:.1f}s wall, {sum(steps.values()):.1f}s of steps, {rss:.2f} GB peak, "
            f"load {load} | " + ", ".join(f"{k} {v:.1f}s" for k, v in layers.items()),
            flush=True,
        )
        if args.steps:
            for step, secs in sorted(steps.items(), key=lambda kv: -kv[1]):
                print(f"    {secs:8.2f}s  {step}", flush=True)
        return {"wall": wall, "rss": rss, "load": load, "steps": steps}

    if args.from_full:
        if not (full_state / "full.json").exists():
            raise SystemExit(f"no full cycle kept in {full_state}: run once without --from-full")
        full = json.loads((full_state / "full.json").read_text())
        copy_home(full_state, home)
        # The copy's GBs written out before the first run: their writeback otherwise competes
        # with the runs (every step of the first increments took 1.5-2x longer on this machine).
        os.sync()
        print(f"scale {args.scale:g}: from the full cycle kept in {full_state} ({full['wall']:.1f}s)", flush=True)
    else:
        if (history / "generator" / "state.json").exists():
            print(f"scale {args.scale:g}: reusing the history in {history}", flush=True)
        else:
            shutil.rmtree(history, ignore_errors=True)
            gen, gen_rss = run(
                [*churn, "generate", "--customers", str(customers), "--seed", "42", "--end", "2026-11-01", "--quiet"],
                env_for(history),
            )
            print(
                f"scale {args.scale:g}: generated {customers:,} customers in {gen:.1f}s ({gen_rss:.2f} GB), "
                f"load {load_average()}",
                flush=True,
            )
        copy_home(history, home)
        full = cycle("full cycle")
        if args.workdir:
            copy_home(home, full_state)
            (full_state / "full.json").write_text(json.dumps(full))
            os.sync()  # as above: the kept copy's writeback took 1-2 s of each first increment at 100x

    def land() -> None:
        run([*churn, "generate", "--increment", "--quiet"], env)
        # An hourly run finds files that landed earlier, long written out; the generator's files,
        # written just now, would otherwise be written back during the run it is timing.
        os.sync()

    incs = []
    for k in range(args.increments):
        land()
        incs.append(cycle(f"increment {k + 1}")["wall"])
    land()
    daily = cycle("increment on a new as-of date (daily refresh)", NEXT_DAY)["wall"]
    if incs:
        m = statistics.median(incs)
        total = full["wall"]
        print(
            f"\nINCREMENT scale {args.scale:g}: hourly median {m:.1f}s = {m / total:.1%} "
            f"of the full cycle ({total:.1f}s); "
            f"with the daily refresh: {daily:.1f}s = {daily / total:.1%}; a day of 23 hourly + 1 daily: "
            f"{(23 * m + daily) / 24 / total:.1%} per increment"
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
