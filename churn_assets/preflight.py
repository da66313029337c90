"""Settings checked before any step runs: one line per problem, each with its fix.

Pure: it reads the environment mapping and the file system it is given, never writes (a
missing ``CHURN_HOME`` is reported, not created). ``churn`` commands call it before they
do anything; a run started any other way (``dg launch``, the UI, the daemon) calls
``require`` from the first resources its steps set up, so it fails at once with the same
line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

from churn_assets import settings


class PreflightError(ValueError):
    """One or more settings problems; ``str()`` is one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# Settings with a closed set of values.
CHOICES = {"CHURN_EXECUTOR": ("in_process", "multiprocess")}
NUMBERS = (
    "CHURN_SETTLE_SECONDS", "CHURN_COMPACT_EVERY_HOURS", "CHURN_PROMOTION_TOLERANCE", "CHURN_CAMPAIGN_BUDGET_USD",
    "CHURN_ALERT_DURATION_FACTOR", "CHURN_ALERT_DURATION_CEILING_SECONDS", "CHURN_CONTINUOUS_RETRAIN_MINUTES",
    "CHURN_CONTINUOUS_CAMPAIGN_MINUTES", "CHURN_AUTO_UP_FILES_PER_MINUTE", "CHURN_AUTO_WINDOW_MINUTES",
    "CHURN_AUTO_QUIET_MINUTES", "CHURN_SENSOR_INTERVAL_SECONDS", "CHURN_MAX_RUNTIME_SECONDS",
    "CHURN_ALERT_DURATION_HISTORY", "CHURN_ALERT_DURATION_MIN_HISTORY", "CHURN_MAX_PENDING_RUNS",
)
INTEGERS = (
    "CHURN_BATCH_BYTES", "CHURN_RETRAIN_MIN_NEW_ROWS", "CHURN_CAMPAIGN_COOLDOWN_DAYS", "CHURN_CAMPAIGN_MAX_MESSAGES",
)
MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|[KMGT]i?B)\s*$", re.IGNORECASE)


def setting_problems(env: Mapping[str, str]) -> list[str]:
    """Values the project does not know: a closed choice, a number, a memory size, the as-of."""
    out = []
    for name, allowed in CHOICES.items():
        value = env.get(name)
        if value and value not in allowed:
            out.append(f"{name}={value!r} is not a known value: use {' or '.join(allowed)}, or unset it")
    for name in NUMBERS + INTEGERS:
        value = env.get(name)
        if not value:
            continue
        try:
            number = int(value) if name in INTEGERS else float(value)
        except ValueError:
            kind = "a whole number" if name in INTEGERS else "a number"
            out.append(f"{name}={value!r} is not {kind}: set {kind} (see the README's settings), or unset it")
            continue
        if number < 0:
            out.append(f"{name}={value!r} is negative: set a value >= 0, or unset it")
    memory = env.get("CHURN_DUCKDB_MEMORY_LIMIT")
    if memory and not MEMORY.match(memory):
        out.append(f"CHURN_DUCKDB_MEMORY_LIMIT={memory!r} is not a memory size: use e.g. 3GB or 512MB, or unset it")
    try:
        settings.parse_as_of(env.get("CHURN_AS_OF"))
    except ValueError as exc:
        out.append(f"{exc}: fix it, or unset it for now")
    return out


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(path: Path) -> str | None:
    """Why ``path`` (an existing file or folder) cannot be written, or None."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError as exc:
        return exc.strerror or str(exc)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        return "permission denied: no write access to the folder"
    if path.is_file() and not os.access(path, os.W_OK):
        return "permission denied: the file is read-only"
    return None


def home_problems(home: Path, *, must_exist: bool) -> list[str]:
    """The data root: there (when it must be) and writable, with what a run writes in it."""
    if not home.exists():
        if must_exist:
            return [f"CHURN_HOME {home} does not exist: run `churn generate` (or scripts/demo) to create data there, "
                    "or point CHURN_HOME at your data"]
        parent = _nearest_existing(home)
        cause = unwritable(parent)
        return [f"CHURN_HOME {home} cannot be created: {parent} is not writable ({cause}); "
                "point CHURN_HOME at a folder you can write"] if cause else []
    if not home.is_dir():
        return [f"CHURN_HOME {home} is not a folder: point CHURN_HOME at your data folder"]
    for path in (home, settings.warehouse_path(home), home / "dagster_home", home / "mlflow"):
        if path.exists():
            cause = unwritable(path)
            if cause:
                return [f"CHURN_HOME {home} is not writable: {path}: {cause}; make it writable or point CHURN_HOME "
                        "at a copy you can write"]
    return []


def landing_problems(home: Path) -> list[str]:
    landing = settings.landing_dir(home)
    for source in settings.SOURCES:
        folder = landing / source
        if folder.is_dir() and any(p.is_file() for p in folder.iterdir()):
            return []
    return [f"no landing files in {landing}: run `churn generate` or point CHURN_HOME at your data"]


def newest_data_date(home: Path) -> date | None:
    """The newest date that a day count is measured from, in the warehouse as it is; None
    when there is no warehouse yet or another process holds it (the gold check still
    refuses negative day counts then)."""
    path = settings.warehouse_path(home)
    if not path.is_file():
        return None
    import duckdb

    from churn_assets.warehouse import table_exists

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        if table_exists(con, "gold", "churn_features"):
            sql = ("SELECT greatest(max(creation_date), max(last_activity_date), max(last_event)) "
                   "FROM gold.churn_features")
        elif table_exists(con, "silver", "churn_users"):
            sql = "SELECT greatest(max(creation_date), max(last_activity_date)) FROM silver.churn_users"
        else:
            return None
        newest = con.execute(sql).fetchall()[0][0]
    except duckdb.Error:
        return None
    finally:
        con.close()
    return newest.date() if isinstance(newest, datetime) else newest


def as_of_problems(home: Path, as_of_text: str | None) -> list[str]:
    """An explicit as-of earlier than data already in the warehouse: day counts would be negative."""
    if not as_of_text or as_of_text.strip().lower() in ("", "now"):
        return []
    try:
        as_of = settings.parse_as_of(as_of_text)
    except ValueError:
        return []  # reported by setting_problems
    newest = newest_data_date(home)
    if newest is not None and newest > as_of.date():
        return [f"CHURN_AS_OF={as_of_text} is earlier than the data in {settings.warehouse_path(home)} (newest date "
                f"{newest}): day counts would be negative; use an as-of on or after {newest}, or a CHURN_HOME "
                "of its own for an older as-of"]
    return []


def problems(env: Mapping[str, str], *, home_must_exist: bool = True, needs_landing: bool = False,
             home: Path | None = None) -> list[str]:
    """Every problem, one line each (empty: good to go). ``home`` defaults to ``CHURN_HOME``."""
    home = home or Path(env.get("CHURN_HOME") or "./data").expanduser().resolve()
    found = setting_problems(env)
    found += home_problems(home, must_exist=home_must_exist)
    if home.is_dir():
        # Only before the first ingestion: a warehouse may outlive landing files archived elsewhere.
        if needs_landing and not settings.warehouse_path(home).exists():
            found += landing_problems(home)
        found += as_of_problems(home, env.get("CHURN_AS_OF"))
    return found


def require(env: Mapping[str, str], **kwargs) -> None:
    """``problems``, raised as one ``PreflightError``."""
    found = problems(env, **kwargs)
    if found:
        raise PreflightError(found)
