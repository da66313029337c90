"""``churn``: the project's own commands (data generation, one cycle, a summary).

Dagster's own CLI (``dagster asset materialize``, ``dagster dev``) works on the same
definitions; these commands add what Dagster does not know about: the landing-data
generator and a one-shot run with a human summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

from churn_assets import settings


def _dagster_home() -> Path:
    """``DAGSTER_HOME``, defaulting to a persistent folder inside the data root."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.churn_home() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # The project's instance settings: one run at a time, run monitoring, run retries.
        config.write_text((Path(__file__).parent / "automation" / "dagster.yaml").read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_generate(args: argparse.Namespace) -> int:
    from churn_assets.generator import generate_history, generate_increment

    home = settings.churn_home()
    t0 = time.perf_counter()
    if args.increment:
        report = generate_increment(home, fraction=args.fraction, dirty_rate=args.dirty_rate, progress=not args.quiet)
    else:
        end = date.fromisoformat(args.end) if args.end else None
        report = generate_history(
            home, customers=args.customers, seed=args.seed, end=end, dirty_rate=args.dirty_rate, progress=not args.quiet
        )
    took = time.perf_counter() - t0
    files = sum(len(v) for v in report.files.values())
    print(
        f"wrote {files} files to {home / 'landing'} in {took:.1f}s: "
        + ", ".join(f"{k} {v:,}" for k, v in report.records.items())
        + (f" (malformed on purpose: {sum(report.dirty.values()):,})" if args.dirty_rate else "")
        + f"; generator clock {report.clock}"
    )
    return 0


def run_cycle(selection: str | None = None) -> tuple[bool, float, str]:
    import dagster as dg

    from churn_assets.definitions import defs

    _dagster_home()
    instance = dg.DagsterInstance.get()
    t0 = time.perf_counter()
    quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if selection:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], selection=selection, instance=instance, resources=defs.resources,
            run_config=quiet, raise_on_error=False,
        )
    else:
        result = defs.resolve_job_def("churn_cycle").execute_in_process(instance=instance, raise_on_error=False, run_config=quiet)
    return result.success, time.perf_counter() - t0, result.run_id, _champion_auc(result)


def _champion_auc(result) -> float | None:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "ml/churn_model_champion":
            meta = event.materialization.metadata
            value = meta.get("challenger_holdout_roc_auc") if meta.get("decision") and meta["decision"].value == "promoted" else meta.get("champion_holdout_roc_auc")
            return float(value.value) if value is not None and isinstance(value.value, (int, float)) else None
    return None


def summary(champion_auc: float | None = None) -> str:
    from churn_assets.summary import cycle_summary

    return cycle_summary(settings.churn_home(), champion_auc)


def cmd_run(args: argparse.Namespace) -> int:
    from churn_assets.warehouse import busy_message, when_free, writer_wait_seconds

    path = settings.warehouse_path(settings.churn_home())
    busy = busy_message(path, writer_wait_seconds())
    if busy:  # another process writes: one line, not a lock traceback
        print(busy, file=sys.stderr)
        return 75
    ok, took, run_id, auc = run_cycle(args.select)
    print(f"\nrun {run_id} {'succeeded' if ok else 'FAILED'} in {took:.1f}s")
    print(when_free(lambda: summary(auc), path, writer_wait_seconds()))
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    landing = settings.landing_dir()
    if not any((landing / s).glob("*") for s in settings.SOURCES if (landing / s).exists()):
        gen = argparse.Namespace(
            increment=False, customers=args.customers, seed=42, end=None, dirty_rate=0.0, quiet=False, fraction=0.01
        )
        cmd_generate(gen)
        # Files younger than the settle time are taken as still being written; the
        # demo waits them out rather than ingest the history in two cycles.
        wait = settings.IngestSettings().settle_seconds
        if wait > 0:
            print(f"waiting {wait:.0f}s for the new files to settle (CHURN_SETTLE_SECONDS)")
            time.sleep(wait + 0.5)
    else:
        print(f"landing data found in {landing}; ingesting what is new")
    return cmd_run(argparse.Namespace(select=None))


def cmd_mode(args: argparse.Namespace) -> int:
    import dagster as dg

    from churn_assets.automation import mode as modes

    _dagster_home()
    with dg.DagsterInstance.get() as instance:
        if args.mode:
            on = modes.set_mode(instance, args.mode)
            print(f"cadence: {', '.join(on)} (switched; the daemon of `churn ui` / `dagster dev` applies it)")
        else:
            on = modes.current_modes(instance)
            print(f"cadence: {', '.join(on) or 'none (every trigger is off)'}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` (webserver and daemon) on the project's persistent instance."""
    home = _dagster_home()
    os.environ.setdefault("CHURN_HOME", str(settings.churn_home()))
    print(f"DAGSTER_HOME={home}; the UI on http://{args.host}:{args.port}")
    # The interpreter running this command, so that the venv's dagster is used even when
    # the venv is not activated.
    os.execv(sys.executable, [sys.executable, "-m", "dagster", "dev", "-m", "churn_assets.definitions",
                              "-h", args.host, "-p", str(args.port)])
    return 0


def cmd_summary(_args: argparse.Namespace) -> int:
    print(summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write landing files in the reference formats")
    g.add_argument("--customers", type=int, default=100_000, help="customers in the initial history (default 100,000)")
    g.add_argument("--seed", type=int, default=42, help="random seed: same seed and --end, same files")
    g.add_argument("--end", help="last day of the history, YYYY-MM-DD (default: today, UTC)")
    g.add_argument("--increment", action="store_true", help="one hour of new activity on top of the history")
    g.add_argument("--fraction", type=float, default=0.01, help="increment size as a share of the history (default 0.01)")
    g.add_argument("--dirty-rate", type=float, default=0.0, help="share of records made malformed on purpose")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="run the churn cycle once (every asset) and print a summary")
    r.add_argument("--select", help="an asset selection instead of the whole cycle, e.g. '*gold/churn_features'")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="generate reference-scale data if landing is empty, then run the cycle")
    d.add_argument("--customers", type=int, default=100_000)
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("mode", help="show or switch the cadence: hourly | continuous | auto")
    m.add_argument("mode", nargs="?", choices=["hourly", "continuous", "auto"])
    m.set_defaults(func=cmd_mode)

    u = sub.add_parser("ui", help="the Dagster UI and daemon (dagster dev) on the persistent instance")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=cmd_ui)

    s = sub.add_parser("summary", help="rows per layer and where the outputs are")
    s.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
