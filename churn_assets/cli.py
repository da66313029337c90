"""churn: the project's own commands (data generation, one cycle, a summary).

Dagster's own CLI (dg launch, dg dev) works on the same definitions; these commands add
what Dagster does not know about: the landing-data generator, settings checked before
anything runs, and a one-shot run with a human summary.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from churn_assets.preflight import PreflightError
from churn_assets.preflight import problems as preflight_problems
from churn_assets.settings import SOURCES, Settings, environment_with


def _dagster_home() -> Path:
    """``DAGSTER_HOME``, defaulting to a persistent folder inside the data root (which preflight
    found to exist), with the project's instance settings the first time."""
    home = Settings.load().dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # One run at a time, run monitoring, run retries. Written aside and linked into place,
        # so two commands starting at once never see half a file.
        tmp = home / f".dagster.yaml.{os.getpid()}"
        tmp.write_text((Path(__file__).parent / "defs" / "automation" / "dagster.yaml").read_text())
        try:
            os.link(tmp, config)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return home


def _instance():
    """The persistent instance `churn ui` serves (not whatever DAGSTER_HOME a shell exported)."""
    import dagster as dg

    return dg.DagsterInstance.from_config(str(_dagster_home()))


def cmd_generate(args: argparse.Namespace) -> int:
    from churn_assets.generator import generate_history, generate_increment

    home = Settings.load().home
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


def _failures(result) -> list[str]:
    """One line per failed check (with what failed) and per other failed step (the innermost
    error's first line)."""
    lines = []
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            key = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            lines.append(f"check {key} did not pass: {evaluation.description or 'see the log'}")
    for event in result.get_step_failure_events():
        if lines and "AssetCheckFailedError" in str(event.step_failure_data.error.cls_name):
            continue  # said above, with the reason
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        message = (error.message if error else "").strip().splitlines() or ["(no message)"]
        lines.append(f"step {event.step_key} failed: {message[0]}")
    return lines


@contextlib.contextmanager
def _output_to(path: Path | None, fds: tuple[int, ...] = (1, 2)):
    """Everything written to these file descriptors (Dagster's log, MLflow's and tqdm's output,
    by this process or its children) goes to ``path`` for the block; None: left as it is."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(path, "wb") as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def run_cycle(selection: str | None = None, verbose: bool = False):
    """One run in this process: (success, seconds, run id, champion ROC AUC, failure lines).

    Dagster's log goes to the terminal with ``verbose``, else to ``$CHURN_HOME/logs/last-run.log``.
    """
    log = None if verbose else Settings.load().logs_dir / "last-run.log"
    with _output_to(log, fds=(2,)):
        return _run_cycle(selection)


def _run_cycle(selection: str | None):
    import dagster as dg

    from churn_assets.definitions import defs as load_defs

    defs = load_defs()
    instance = _instance()
    t0 = time.perf_counter()
    logs = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if selection:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            instance=instance,
            resources=defs.resources,
            run_config=logs,
            raise_on_error=False,
        )
    else:
        job = defs.resolve_job_def("churn_cycle")
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=logs)
    return result.success, time.perf_counter() - t0, result.run_id, _champion_auc(result), _failures(result)


def _champion_auc(result) -> float | None:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "ml/churn_model_champion":
            meta = event.materialization.metadata
            promoted = meta.get("decision") and meta["decision"].value == "promoted"
            value = meta.get("challenger_holdout_roc_auc") if promoted else meta.get("champion_holdout_roc_auc")
            return float(value.value) if value is not None and isinstance(value.value, (int, float)) else None
    return None


def summary(champion_auc: float | None = None, run_id: str | None = None) -> str:
    from churn_assets.summary import cycle_summary

    return cycle_summary(Settings.load(), champion_auc, run_id)


def cmd_run(args: argparse.Namespace) -> int:
    from churn_assets.warehouse import busy_message, when_free

    settings = Settings.load()
    path, wait = settings.warehouse_path, settings.warehouse_wait_seconds
    busy = busy_message(path, wait)
    if busy:  # another process writes: one line, not a lock traceback
        print(busy, file=sys.stderr)
        return 75
    what = f"the selection {args.select}" if args.select else "the churn cycle"
    log = "" if args.verbose else f" (Dagster's log: {Settings.load().logs_dir / 'last-run.log'}, or --verbose)"
    print(f"running {what}{log} ...", flush=True)
    ok, took, run_id, auc, failures = run_cycle(args.select, verbose=args.verbose)
    print(f"\nrun {run_id} {'succeeded' if ok else 'FAILED'} in {took:.1f}s", flush=True)
    for line in failures:
        print(line, file=sys.stderr, flush=True)
    print(when_free(lambda: summary(auc, run_id), path, wait))
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    landing = Settings.load().landing_dir
    if not any((landing / s).glob("*") for s in SOURCES if (landing / s).exists()):
        gen = argparse.Namespace(
            increment=False, customers=args.customers, seed=42, end=None, dirty_rate=0.0, quiet=True, fraction=0.01
        )
        cmd_generate(gen)
        # Files younger than the settle time are taken as still being written; the
        # demo waits them out rather than ingest the history in two cycles.
        wait = Settings.load().settle_seconds
        if wait > 0:
            print(f"waiting {wait:.0f}s for the new files to settle (CHURN_SETTLE_SECONDS)")
            time.sleep(wait + 0.5)
    else:
        print(f"landing data found in {landing}; ingesting what is new")
    return cmd_run(argparse.Namespace(select=None, verbose=args.verbose))


def cmd_mode(args: argparse.Namespace) -> int:
    from churn_assets.defs.automation import mode as modes

    path = Settings.load().cadence_path
    if args.mode:
        modes.write_mode(path, args.mode)
        print(f"cadence: {args.mode} (switched; the daemon of `churn ui` / `dg dev` acts on it at its next tick)")
        return 0
    try:
        print(f"cadence: {modes.read_mode(path)}")
    except ValueError as exc:
        print(f"churn: {exc}", file=sys.stderr)
        return 2
    return 0


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...); [] once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name, in parentheses, may hold spaces and ")": fields start after the last.
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` from /proc (-1 once it is gone)."""
    fields = stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else -1


def descendants(*pids: int) -> set[int]:
    """Every live process below any of ``pids`` (from /proc), whatever session or group it moved to."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(parent_pid(int(entry)), []).append(int(entry))
    out, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cmd_ui(args: argparse.Namespace) -> int:
    """``dg dev`` (webserver and daemon) on the project's persistent instance, stopped whole on
    SIGTERM or SIGINT, with or without a terminal."""
    home = _dagster_home()
    print(f"DAGSTER_HOME={home}; the UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    # The venv's dg, beside this interpreter, so that it works without activating the venv.
    dg_cli = Path(sys.executable).with_name("dg")
    # -m: the code location `churn mode` and earlier runs know ("churn_assets.definitions").
    command = [str(dg_cli), "dev", "-m", "churn_assets.definitions", "--host", args.host, "--port", str(args.port)]
    if args.verbose:
        command += ["--log-level", "debug"]
    # As if the venv were activated: dg warns when the active venv is not the project's.
    env = environment_with(CHURN_HOME=str(Settings.load().home), DAGSTER_HOME=str(home), VIRTUAL_ENV=sys.prefix)
    # Its own process group: a terminal's Ctrl-C reaches us, and we stop the whole tree.
    child = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], env=env, start_new_session=True)
    stopping: list[int] = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tree: set[int] = set()
    while child.poll() is None and not stopping:
        tree |= descendants(child.pid)  # remembered: a child reparented on exit is still ours
        time.sleep(0.5)
    if child.poll() is None:
        tree |= descendants(child.pid)
        # dg dev shuts its webserver, daemon and code servers down on SIGINT; what is left
        # after a grace period is killed.
        os.killpg(child.pid, signal.SIGINT)
        _signal_all(tree, signal.SIGINT)
        deadline = time.time() + 6
        while time.time() < deadline and child.poll() is None:
            time.sleep(0.2)
    tree |= descendants(child.pid) if child.poll() is None else set()
    alive = {pid for pid in tree | {child.pid} if os.path.exists(f"/proc/{pid}")}
    _signal_all(alive, signal.SIGKILL)
    child.wait()
    return 0 if stopping or child.returncode == 0 else child.returncode


def cmd_summary(_args: argparse.Namespace) -> int:
    print(summary())
    return 0


def _query(settings: Settings, sql: str) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of a read-only query against the configured engine's tables."""
    if settings.engine == "spark":
        from churn_assets.engine import EngineResource, EngineUnavailable

        try:
            import sqlglot
        except ImportError:
            raise EngineUnavailable(
                "CHURN_ENGINE=spark needs the spark extra: pip install 'churn_assets[spark]'"
            ) from None
        try:
            statements = sqlglot.parse(sql, read="spark")
        except sqlglot.errors.ParseError as exc:
            raise ValueError(f"not a query Spark reads: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1 or not isinstance(statements[0], sqlglot.exp.Query):
            raise ValueError("churn sql runs one read-only query (SELECT, WITH ... SELECT): nothing that writes")
        df = EngineResource.from_settings(settings).sql(sql)
        return df.columns, [tuple(r) for r in df.collect()]
    import duckdb

    from churn_assets.warehouse import describe_holder

    path = settings.warehouse_path
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path} yet: run `churn run` first")
    try:
        # Read-only: no writer's lock taken, and nothing this command runs can change the data.
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        raise ValueError(
            f"warehouse {path} is being written by {describe_holder(path, str(exc))}: query it when that run ends"
        ) from None
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description or []], cur.fetchall()
    finally:
        con.close()


def format_table(columns: list[str], rows: list[tuple]) -> str:
    shown = [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in shown)]) for i, c in enumerate(columns)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(columns), "-+-".join("-" * w for w in widths), *(line(r) for r in shown)]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def cmd_sql(args: argparse.Namespace) -> int:
    """A read-only query against the configured engine's tables, as a table or as CSV."""
    import csv

    try:
        columns, rows = _query(Settings.load(), args.query)
    except Exception as exc:  # noqa: BLE001 - any engine's error is the user's query to fix: one line
        if args.debug:
            raise
        print(
            f"churn sql: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    else:
        print(format_table(columns, rows))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting with its default and meaning; with --values, what this shell sets."""
    if not args.values:
        print(Settings.markdown_table())
        return 0
    current = Settings.load()
    for f in dataclasses.fields(Settings):
        value = getattr(current, f.name)
        shown = ("set" if value else "unset") if f.metadata["secret"] else value
        print(f"{f.metadata['env']}={shown}")
    return 0


# What each command needs of the data root before it starts.
NEEDS = {
    "settings": {"home_must_exist": False},
    "sql": {},
    "generate": {"home_must_exist": False},
    "demo": {"home_must_exist": False},
    "run": {"needs_landing": True},
    "mode": {},
    "ui": {},
    "summary": {},
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the command, the flag is seen once and not reset.
    common.add_argument(
        "--verbose", action="store_true", default=argparse.SUPPRESS, help="also print Dagster's own log lines"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error, not just its one line",
    )
    parser = argparse.ArgumentParser(
        prog="churn", description=__doc__.split("\n\n")[0].replace("\n", " "), parents=[common]
    )
    parser.set_defaults(verbose=False, debug=False)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", parents=[common], help="write landing files in the reference formats")
    g.add_argument(
        "--customers",
        type=int,
        default=100_000,
        help="customers drawn for the history (default 100,000); those with an order are written as users",
    )
    g.add_argument("--seed", type=int, default=42, help="random seed: same seed and --end, same files")
    g.add_argument("--end", help="last day of the history, YYYY-MM-DD (default: today, UTC)")
    g.add_argument("--increment", action="store_true", help="one hour of new activity on top of the history")
    g.add_argument(
        "--fraction", type=float, default=0.01, help="increment size as a share of the history (default 0.01)"
    )
    g.add_argument("--dirty-rate", type=float, default=0.0, help="share of records made malformed on purpose")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", parents=[common], help="run the churn cycle once (every asset) and print a summary")
    r.add_argument("--select", help="an asset selection instead of the whole cycle, e.g. '*gold/churn_features'")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "demo", parents=[common], help="generate reference-scale data if landing is empty, then run the cycle"
    )
    d.add_argument(
        "--customers",
        type=int,
        default=100_000,
        help="customers drawn when landing is empty (default 100,000; see churn generate --help)",
    )
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("mode", parents=[common], help="show or switch the cadence: hourly | continuous | auto")
    m.add_argument(
        "mode",
        nargs="?",
        choices=["hourly", "continuous", "auto"],
        help="the cadence to switch to; none: print the current one",
    )
    m.set_defaults(func=cmd_mode)

    u = sub.add_parser("ui", parents=[common], help="the Dagster UI and daemon (dg dev) on the persistent instance")
    u.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    u.add_argument("--port", type=int, default=3000, help="port the UI listens on (default 3000)")
    u.set_defaults(func=cmd_ui)

    s = sub.add_parser("summary", parents=[common], help="rows per layer, quarantined files and where the outputs are")
    s.set_defaults(func=cmd_summary)

    q = sub.add_parser(
        "sql", parents=[common], help="a read-only query against the engine's tables, e.g. gold.churn_features"
    )
    q.add_argument("query", help="one SELECT (or WITH ... SELECT) naming tables as <schema>.<table>")
    q.add_argument("--csv", action="store_true", help="print CSV (a header line, then the rows)")
    q.set_defaults(func=cmd_sql)

    st = sub.add_parser("settings", parents=[common], help="every setting, its default and meaning (a Markdown table)")
    st.add_argument("--values", action="store_true", help="print what this shell sets instead (secrets: set/unset)")
    st.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        found = preflight_problems(**NEEDS[args.command])
        if found:
            raise PreflightError(found)
        return args.func(args)
    except (PreflightError, FileNotFoundError) as exc:
        # A setting or a missing input: the user's to fix, said in one line (--debug: the traceback).
        if args.debug:
            raise
        for line in str(exc).splitlines():
            print(f"churn: {line}", file=sys.stderr)
        return 2


_exit_code: list[int] = []  # main()'s, once it returned


def _end_without_teardown() -> None:
    """After every other exit handler (registered first, it runs last): the process ends without
    the interpreter's teardown, a garbage collection over every object the libraries loaded (1.0 s
    after any command, 1.5 s after a run at 100x the reference). Threads were joined and the
    other handlers ran (temporary folders, MLflow); the warehouse was closed by the run. When
    main() raised (a usage error, Ctrl-C) Python exits as it always does."""
    if _exit_code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_code[0])


def entry() -> None:
    """The ``churn`` command."""
    atexit.register(_end_without_teardown)
    _exit_code.append(main())
    sys.exit(_exit_code[0])


if __name__ == "__main__":
    entry()
