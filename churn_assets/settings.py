"""Every setting of the project in one place: its environment name, its default, what it means.

``Settings.load()`` reads the environment when it is called (a command starting, a code
location loading, a run starting), never at import; it is the only reader of
``os.environ`` in the package. A bad value is reported as one line naming the variable
and what it accepts, all problems at once (``SettingsError``).

Only two settings matter to run the project: ``CHURN_HOME`` (the data root) and
``CHURN_AS_OF`` (the instant day counts are measured against). Everything else has a
default that works on a laptop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from churn_assets.landing import SOURCES  # noqa: F401  (re-exported: the landing contract owns it)
from churn_assets.timeutil import parse_as_of

EXECUTORS = ("in_process", "multiprocess")
ENGINES = ("duckdb", "spark")


class SettingsError(ValueError):
    """One or more settings are invalid; ``str()`` is one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


SHOWN = {  # how the docs state a default that is not a plain value
    "CHURN_HOME": "./data",
    "CHURN_AS_OF": "now",
    "CHURN_PSEUDONYM_KEY": "a random key kept in CHURN_HOME",
    "MLFLOW_TRACKING_URI": "sqlite:///$CHURN_HOME/mlflow/mlflow.db",
    "ANTHROPIC_API_KEY": "unset (offline templates)",
    "ANTHROPIC_BASE_URL": "the SDK's default",
    "DAGSTER_HOME": "$CHURN_HOME/dagster_home",
    "XDG_CACHE_HOME": "~/.cache",
    "CHURN_DUCKDB_MEMORY_LIMIT": "1/8 of the machine's memory, 1-16 GB",
    "CHURN_SPARK_WAREHOUSE": "$CHURN_HOME/spark_warehouse",
    "PYSPARK_PYTHON": "this Python (its sys.executable)",
}


def _setting(
    env: str,
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
):
    """A setting: its variable, default, meaning, and how its text is parsed."""
    return field(
        default=default, metadata={"env": env, "help": help, "parse": parse, "choices": choices, "secret": secret}
    )


def _optional(text: str) -> str | None:
    return text or None


class _Invalid(ValueError):
    """A value of the wrong kind; the message says what to set instead."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    wanted = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise _Invalid(f"is not {wanted}: set {wanted} (see the README's settings), or unset it") from None
        if value < 0:
            raise _Invalid("is negative: set a value >= 0, or unset it")
        return value

    return parse


_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|[KMGT]i?B)\s*$", re.IGNORECASE)


def _memory(text: str) -> str:
    if not _MEMORY.match(text):
        raise _Invalid("is not a memory size: use e.g. 3GB or 512MB, or unset it")
    return text


@dataclass(frozen=True)
class Settings:
    # --- data ---------------------------------------------------------------------------------
    home: Path = _setting(
        "CHURN_HOME",
        Path("./data"),
        "data root: landing/{users,orders,events}/, warehouse.duckdb, dashboard/, mlflow/, outbox/, "
        "secrets/ (the pseudonym key), logs/, dagster_home/",
        lambda t: Path(t).expanduser().resolve(),
    )
    as_of_text: str = _setting(
        "CHURN_AS_OF", "", "as-of instant for day counts, ISO (2023-06-10 or 2023-06-10T12:00:00); empty = now"
    )
    pseudonym_key: str | None = _setting(
        "CHURN_PSEUDONYM_KEY",
        None,
        "key of the e-mail pseudonyms, 32 characters or more; unset: a random key made once in "
        "$CHURN_HOME/secrets/pseudonym.key (back it up)",
        _optional,
        secret=True,
    )
    # --- ingestion ----------------------------------------------------------------------------
    settle_seconds: float = _setting(
        "CHURN_SETTLE_SECONDS",
        2.0,
        "a file modified more recently than this is taken as still being written",
        _positive(float),
    )
    batch_bytes: int = _setting(
        "CHURN_BATCH_BYTES",
        256 * 1024 * 1024,
        "landed bytes loaded per transaction (a Spark micro-batch: at least one file); bronze holds two such "
        "batches, one parsed while the other is written",
        _positive(int),
    )
    # --- warehouse ----------------------------------------------------------------------------
    duckdb_memory_limit: str | None = _setting(
        "CHURN_DUCKDB_MEMORY_LIMIT",
        None,
        "DuckDB's memory limit; beyond it DuckDB spills to $CHURN_HOME/warehouse.duckdb.tmp/",
        _memory,
    )
    warehouse_wait_seconds: float = _setting(
        "CHURN_WAREHOUSE_WAIT_SECONDS",
        60.0,
        "how long a writer waits for another process's hold on the warehouse",
        _positive(float),
    )
    compact_every_hours: float = _setting(
        "CHURN_COMPACT_EVERY_HOURS",
        24.0,
        "how often a run also compacts the warehouse tables it writes (merges DuckDB row groups)",
        _positive(float),
    )
    executor: str = _setting(
        "CHURN_EXECUTOR", "in_process", "in_process, or multiprocess: each step in its own process", choices=EXECUTORS
    )
    # --- engine -------------------------------------------------------------------------------
    engine: str = _setting(
        "CHURN_ENGINE",
        "duckdb",
        "duckdb (the warehouse file), or spark: the whole cycle on Apache Spark (pip install .[spark])",
        choices=ENGINES,
    )
    spark_master: str = _setting(
        "CHURN_SPARK_MASTER",
        "local[*]",
        "with CHURN_ENGINE=spark: spark://host:7077 (a standalone master), sc://host:15002 (a Spark Connect "
        "server, e.g. a managed cluster's) or local[*]",
    )
    spark_python: str = _setting(
        "PYSPARK_PYTHON",
        sys.executable,
        "with CHURN_ENGINE=spark: the Python the workers run; this environment (pyspark, pyarrow, this package) "
        "at the same path on every worker",
    )
    spark_warehouse_override: str | None = _setting(
        "CHURN_SPARK_WAREHOUSE",
        None,
        "with CHURN_ENGINE=spark: where the Spark tables live, reached by the driver, every worker and the run "
        "worker: a shared path, file://, or an object store (s3a://, gs://, abfss://; credentials from the "
        "environment)",
        _optional,
    )
    # --- model --------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = _setting(
        "MLFLOW_TRACKING_URI",
        None,
        "MLflow tracking and registry store (artifacts in $CHURN_HOME/mlflow/artifacts)",
        _optional,
    )
    retrain_min_new_rows: int = _setting(
        "CHURN_RETRAIN_MIN_NEW_ROWS",
        0,
        "retrain only once this many new bronze rows have landed (0 = every cycle)",
        _positive(int),
    )
    train_max_rows: int = _setting(
        "CHURN_TRAIN_MAX_ROWS",
        2_000_000,
        "training customers beyond this are a stratified sample of this many (by label; 0 = all)",
        _positive(int),
    )
    eval_max_rows: int = _setting(
        "CHURN_EVAL_MAX_ROWS",
        500_000,
        "holdout customers beyond this: metrics and the champion comparison on a stratified sample of this many "
        "(by label; 0 = all)",
        _positive(int),
    )
    promotion_tolerance: float = _setting(
        "CHURN_PROMOTION_TOLERANCE",
        0.0,
        "a challenger is promoted when its holdout ROC AUC >= champion's - this",
        _positive(float),
    )
    # --- campaign -----------------------------------------------------------------------------
    anthropic_api_key: str | None = _setting(
        "ANTHROPIC_API_KEY",
        None,
        "Claude writes the campaign copy when set (else offline templates)",
        _optional,
        secret=True,
    )
    anthropic_base_url: str | None = _setting(
        "ANTHROPIC_BASE_URL", None, "another endpoint for the Messages API (a proxy, a test server)", _optional
    )
    claude_model: str = _setting("CHURN_CLAUDE_MODEL", "claude-haiku-5-5", "the model that writes the copy")
    campaign_budget_usd: float = _setting(
        "CHURN_CAMPAIGN_BUDGET_USD", 5.0, "the most one run may spend on the API", _positive(float)
    )
    campaign_max_messages: int = _setting(
        "CHURN_CAMPAIGN_MAX_MESSAGES", 1000, "messages per run, at most", _positive(int)
    )
    campaign_cooldown_days: int = _setting(
        "CHURN_CAMPAIGN_COOLDOWN_DAYS", 7, "no customer is written to again within this many days", _positive(int)
    )
    # --- cadence ------------------------------------------------------------------------------
    schedule_cron: str = _setting("CHURN_SCHEDULE_CRON", "0 * * * *", "when the hourly schedule runs the cycle")
    schedule_timezone: str = _setting("CHURN_SCHEDULE_TIMEZONE", "UTC", "time zone of CHURN_SCHEDULE_CRON")
    sensor_interval_seconds: int = _setting(
        "CHURN_SENSOR_INTERVAL_SECONDS", 3, "how often the landing sensor looks for new files", _positive(int)
    )
    sensor_listen_seconds: float = _setting(
        "CHURN_SENSOR_LISTEN_SECONDS",
        5.0,
        "how long one landing sensor tick waits for a new file before it returns (Dagster's sensor loop "
        "is 5 s): files are picked up as they land, not at the next tick (3 s at most when the "
        "instance runs sensors in threads)",
        _positive(float),
    )
    continuous_retrain_minutes: float = _setting(
        "CHURN_CONTINUOUS_RETRAIN_MINUTES", 60.0, "continuous mode: retrain at most this often", _positive(float)
    )
    continuous_campaign_minutes: float = _setting(
        "CHURN_CONTINUOUS_CAMPAIGN_MINUTES",
        60.0,
        "continuous mode: run the campaign at most this often",
        _positive(float),
    )
    warm_scorer_idle_seconds: int = _setting(
        "CHURN_WARM_SCORER_IDLE_SECONDS",
        600,
        "continuous mode (and auto's continuous phase): a scorer process keeps MLflow, LightGBM and the "
        "champion loaded for the runs, and stops after this long without one; 0: each run loads the model itself",
        _positive(int),
    )
    max_pending_runs: int = _setting(
        "CHURN_MAX_PENDING_RUNS", 1, "cycles queued or running at most: a trigger skips beyond it", _positive(int)
    )
    auto_up_files_per_minute: float = _setting(
        "CHURN_AUTO_UP_FILES_PER_MINUTE", 1.0, "auto mode: arrival rate that switches to continuous", _positive(float)
    )
    auto_window_minutes: float = _setting(
        "CHURN_AUTO_WINDOW_MINUTES", 10.0, "auto mode: window the arrival rate is measured over", _positive(float)
    )
    auto_quiet_minutes: float = _setting(
        "CHURN_AUTO_QUIET_MINUTES",
        30.0,
        "auto mode: minutes without a file before going back to hourly",
        _positive(float),
    )
    # --- monitoring ---------------------------------------------------------------------------
    alert_duration_factor: float = _setting(
        "CHURN_ALERT_DURATION_FACTOR",
        3.0,
        "a run is abnormally long past this x the median of recent successes",
        _positive(float),
    )
    alert_duration_history: int = _setting(
        "CHURN_ALERT_DURATION_HISTORY", 10, "successful runs the median is taken over", _positive(int)
    )
    alert_duration_min_history: int = _setting(
        "CHURN_ALERT_DURATION_MIN_HISTORY", 3, "successful runs needed before the median is used", _positive(int)
    )
    alert_duration_ceiling_seconds: float = _setting(
        "CHURN_ALERT_DURATION_CEILING_SECONDS",
        1800.0,
        "a run longer than this is abnormally long (0 = no ceiling)",
        _positive(float),
    )
    max_runtime_seconds: int = _setting(
        "CHURN_MAX_RUNTIME_SECONDS", 3600, "hard timeout of a run (dagster/max_runtime)", _positive(int)
    )
    alert_timeout_seconds: float = _setting(
        "CHURN_ALERT_TIMEOUT_SECONDS",
        3.0,
        "one delivery attempt of an alert (webhook, Slack), at most",
        _positive(float),
    )
    alert_tick_budget_seconds: float = _setting(
        "CHURN_ALERT_TICK_BUDGET_SECONDS", 10.0, "all alert deliveries of one sensor tick, at most", _positive(float)
    )
    alert_retry_after_seconds: float = _setting(
        "CHURN_ALERT_RETRY_AFTER_SECONDS",
        5.0,
        "first wait before an undelivered alert is sent again (then doubling)",
        _positive(float),
    )
    alert_expire_hours: float = _setting(
        "CHURN_ALERT_EXPIRE_HOURS",
        24.0,
        "an alert still undelivered after this long is given up (recorded)",
        _positive(float),
    )
    ui_url: str = _setting("CHURN_UI_URL", "http://127.0.0.1:3000", "the Dagster UI, for links in alerts")
    alert_webhook: str | None = _setting(
        "CHURN_ALERT_WEBHOOK", None, "alerts are POSTed here as JSON when set", _optional, secret=True
    )
    slack_bot_token: str | None = _setting(
        "SLACK_BOT_TOKEN", None, "alerts go to Slack when set", _optional, secret=True
    )
    slack_channel: str | None = _setting("CHURN_SLACK_CHANNEL", None, "the Slack channel for alerts", _optional)
    # --- tooling ------------------------------------------------------------------------------
    dagster_home_override: Path | None = _setting(
        "DAGSTER_HOME",
        None,
        "Dagster's instance (run history, schedule and sensor state); export it for dg commands",
        lambda t: Path(t).expanduser().resolve(),
    )
    cache_dir: Path = _setting(
        "XDG_CACHE_HOME",
        Path.home() / ".cache",
        "cache for the dashboard's chart library",
        lambda t: Path(t).expanduser(),
    )
    test_kill_at: str | None = _setting(
        "CHURN_TEST_KILL_AT", None, "crash tests only: the fault point where the process kills itself", _optional
    )
    test_kill_marker: str | None = _setting(
        "CHURN_TEST_KILL_MARKER", None, "crash tests only: a file the killed point's name is written to", _optional
    )
    test_retry_at: str | None = _setting(
        "CHURN_TEST_RETRY_AT", None, "retry tests only: the fault point where a step asks to be retried", _optional
    )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings as the environment has them now; ``SettingsError`` lists every bad one."""
        env = os.environ if environ is None else environ
        values, problems = {}, []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            raw = env.get(meta["env"], "").strip()
            if not raw:
                if isinstance(f.default, Path):
                    values[f.name] = _default(f)
                continue
            shown = "(set)" if meta["secret"] else repr(raw)
            if meta["choices"] and raw not in meta["choices"]:
                problems.append(
                    f"{meta['env']}={shown} is not a known value: use {' or '.join(meta['choices'])}, or unset it"
                )
                continue
            try:
                values[f.name] = meta["parse"](raw)
            except _Invalid as exc:
                problems.append(f"{meta['env']}={shown} {exc}")
            except (TypeError, ValueError) as exc:
                problems.append(f"{meta['env']}={shown} is not valid ({exc}): fix it, or unset it")
        settings = cls(**values)
        try:
            settings.as_of  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            problems.append(f"{exc}: fix it, or unset it for now")
        if problems:
            raise SettingsError(problems)
        return settings

    @classmethod
    def read_one(cls, name: str, environ: Mapping[str, str] | None = None):
        """One setting, without reading the others (for hot paths such as a fault point)."""
        f = _field(name)
        raw = (os.environ if environ is None else environ).get(f.metadata["env"], "").strip()
        return f.metadata["parse"](raw) if raw else _default(f)

    @staticmethod
    def env_name(name: str) -> str:
        """The environment variable of the setting ``name``."""
        return _field(name).metadata["env"]

    @staticmethod
    def reference() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every setting: ``churn settings`` prints it, the
        README's table is it (a test compares them)."""
        rows = []
        for f in dataclasses.fields(Settings):
            env = f.metadata["env"]
            shown = SHOWN.get(env) or (
                "unset" if f.default is None else f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            )
            rows.append((env, shown, f.metadata["help"]))
        return rows

    @staticmethod
    def markdown_table() -> str:
        rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
        rows += [f"| `{env}` | `{default}` | {meaning} |" for env, default, meaning in Settings.reference()]
        return "\n".join(rows)

    def secret(self, name: str):
        """A secret setting as ``dg.EnvVar`` when it is set, else None: resources get the
        variable's name, so the value never enters their config, the UI or the event log."""
        import dagster as dg

        return dg.EnvVar(self.env_name(name)) if getattr(self, name) else None

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    # --- derived facts ------------------------------------------------------------------------
    @property
    def as_of(self) -> datetime:
        return parse_as_of(self.as_of_text)

    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def duckdb_memory(self) -> str:
        """DuckDB's memory limit: the setting, else ``duckdb_memory_for(the machine's memory)``."""
        return self.duckdb_memory_limit or duckdb_memory_for(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

    @property
    def spark_warehouse(self) -> str:
        return self.spark_warehouse_override or str(self.home / "spark_warehouse")

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def dagster_home(self) -> Path:
        """``DAGSTER_HOME`` when set, else the persistent instance folder inside the data root."""
        return self.dagster_home_override or self.home / "dagster_home"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def cadence_path(self) -> Path:
        """Which cadence acts (``churn mode``): beside the data every trigger and command reaches."""
        return self.home / "cadence"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def warm_scorer_socket(self) -> Path | None:
        """Where the warm scorer answers; None when this home's path is too long for a Unix
        socket (at most 107 bytes): the runs then load the model themselves."""
        path = self.home / "ops" / "scorer.sock"
        return path if len(os.fsencode(path)) <= 100 else None

    @property
    def alerts_db(self) -> Path:
        return self.home / "ops" / "alerts.db"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def dashboard_dir(self) -> Path:
        return self.home / "dashboard"


def duckdb_memory_for(total_bytes: int) -> str:
    """A quarter of the machine's memory is the cycle's budget: half of it for DuckDB (which
    spills beyond it), half for the Python side (features, training, scoring); 1 GB at least,
    16 GB at most (beyond that DuckDB gains little and the rest is better left to the OS cache)."""
    return f"{min(max(total_bytes // 8 // 2**20, 1024), 16 * 1024)}MiB"


# Given to the processes `churn` starts (the webserver, the daemon, the run workers) unless set
# already: OpenMP threads (LightGBM's) then sleep while they wait instead of spinning. On a
# 2-core machine shared with other work, spinning made training ~5x slower (20 rounds at 1x:
# 3.5 s spinning, 0.6 s sleeping). The OpenMP runtime reads it once, when it loads, so it is
# set where a process starts, never changed in a running one.
PROCESS_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(Settings) if f.name == name)


def _default(f: dataclasses.Field):
    """A setting's value when its variable is unset (a path default resolved as a set one would be)."""
    return f.metadata["parse"](str(f.default)) if isinstance(f.default, Path) else f.default


@contextlib.contextmanager
def environment_scope(**values: str) -> Iterator[None]:
    """These variables set for the block, then put back: for a library that reads its
    options from the environment only (MLflow's HTTP limits)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def environment_with(**values: str | None) -> dict[str, str]:
    """A copy of the environment with these variables set (None removes one): for a child process."""
    env = {**PROCESS_DEFAULTS, **os.environ}
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
