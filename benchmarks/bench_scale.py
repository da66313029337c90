"""The whole cycle at 1x and 10x the reference volume: time per layer and peak memory.

Usage:  python benchmarks/bench_scale.py [--scales 1 10] [--workdir DIR]

For each scale, in a fresh CHURN_HOME: ``churn generate --customers <100k x scale>``, then
``churn run`` (every asset, offline copywriter, in its own process, as a user runs it).
Prints generation time, each layer's summed step time (from the run's event log), the
run's wall time and the peak resident memory of each process, then 10x against 1x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import step_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-01T06:00:00"
LAYERS = {  # first part of the step key (or the whole key) -> column
    "bronze": "bronze",
    "silver": "silver",
    "gold__churn_features": "gold",
    "gold__churn_features_churn_features_valid": "gold",
    "ml__churn_model": "training",
    "ml__churn_model_champion": "training",
    "gold__churn_prediction": "scoring",
    "dashboard": "dashboard",
    "campaigns": "campaign",
}


def layer_of(step: str) -> str:
    if step in LAYERS:
        return LAYERS[step]
    return LAYERS.get(step.split("__")[0], "other")


def measured(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024  # ru_maxrss is in KiB on Linux


def run_scale(scale: float, work: Path) -> dict:
    home = work / f"scale-{scale:g}"
    shutil.rmtree(home, ignore_errors=True)
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "CHURN_AS_OF": AS_OF,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    env.pop("ANTHROPIC_API_KEY", None)  # the offline copywriter, as the main command
    churn = [sys.executable, "-m", "churn_assets.cli"]
    customers = int(100_000 * scale)
    gen_wall, gen_rss = measured(
        [*churn, "generate", "--customers", str(customers), "--seed", "42", "--end", "2026-11-01", "--quiet"], env
    )
    run_wall, run_rss = measured([*churn, "run"], env)

    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        (record,) = instance.get_run_records(limit=1)
        steps = step_seconds(instance, record.dagster_run.run_id)
    layers: dict[str, float] = {}
    for step, secs in steps.items():
        layers[layer_of(step)] = layers.get(layer_of(step), 0.0) + secs
    out = {
        "customers": customers,
        "generate": gen_wall,
        "run": run_wall,
        "rss_generate": gen_rss,
        "rss_run": run_rss,
        **layers,
    }
    print(
        f"scale {scale:g} ({customers:,} customers): generate {gen_wall:.1f}s ({gen_rss:.2f} GB) | churn run "
        f"{run_wall:.1f}s ({run_rss:.2f} GB peak) | " + ", ".join(f"{k} {v:.1f}s" for k, v in layers.items()),
        flush=True,
    )
    shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {s: run_scale(s, work) for s in args.scales}
    cols = ["bronze", "silver", "gold", "training", "scoring", "dashboard", "campaign", "generate", "run"]
    print("\n| scale | " + " | ".join(cols) + " | cycle total | peak RSS (generate / run) |")
    print("| --- " * (len(cols) + 3) + "|")
    for s, r in results.items():
        total = r["generate"] + r["run"]
        print(
            f"| {s:g}x | "
            + " | ".join(f"{r.get(c, 0):.1f} s" for c in cols)
            + f" | {total:.1f} s | {r['rss_generate']:.2f} / {r['rss_run']:.2f} GB |"
        )
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        a, b = results[lo], results[hi]
        print(
            f"\n{hi:g}x / {lo:g}x: generate + run {(b['generate'] + b['run']) / (a['generate'] + a['run']):.2f}x, "
            f"run alone {b['run'] / a['run']:.2f}x; peak memory {max(b['rss_generate'], b['rss_run']):.2f} GB"
        )


if __name__ == "__main__":
    main()
