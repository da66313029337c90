"""Settings checked before any step runs: one line per problem, each with its fix.

Pure: it reads the environment mapping and the file system it is given, never writes (a
missing ``CHURN_HOME`` is reported, not created). ``churn`` commands call it before they
do anything; a run started any other way (``dg launch``, the UI, the daemon) calls
``require`` from the first resources its steps set up, so it fails at once with the same
line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

from churn_assets.settings import SOURCES, Settings, SettingsError, environment_with
from churn_assets.timeutil import parse_as_of


class PreflightError(ValueError):
    """One or more settings problems; ``str()`` is one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def setting_problems(env: Mapping[str, str]) -> list[str]:
    """Values the project does not know (a closed choice, a number, a memory size, the as-of):
    ``Settings`` says what each accepts."""
    try:
        Settings.load(env)
    except SettingsError as exc:
        return exc.problems
    return []


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
            return [
                f"CHURN_HOME {home} does not exist: run `churn generate` (or scripts/demo) to create data there, "
                "or point CHURN_HOME at your data"
            ]
        parent = _nearest_existing(home)
        cause = unwritable(parent)
        return (
            [
                f"CHURN_HOME {home} cannot be created: {parent} is not writable ({cause}); "
                "point CHURN_HOME at a folder you can write"
            ]
            if cause
            else []
        )
    if not home.is_dir():
        return [f"CHURN_HOME {home} is not a folder: point CHURN_HOME at your data folder"]
    for path in (home, Settings(home=home).warehouse_path, home / "dagster_home", home / "mlflow"):
        if path.exists():
            cause = unwritable(path)
            if cause:
                return [
                    f"CHURN_HOME {home} is not writable: {path}: {cause}; make it writable or point CHURN_HOME "
                    "at a copy you can write"
                ]
    return []


def landing_problems(home: Path) -> list[str]:
    landing = Settings(home=home).landing_dir
    for source in SOURCES:
        folder = landing / source
        if folder.is_dir() and any(p.is_file() for p in folder.iterdir()):
            return []
    return [f"no landing files in {landing}: run `churn generate` or point CHURN_HOME at your data"]


# A ``churn run`` asks up to three times (the command, then two resources of the run), and each
# answer opens the warehouse (0.1 s at 100x the reference): the last answer is kept while the
# file and its write-ahead log are as they were.
_newest: dict[tuple, date | None] = {}


def _file_state(path: Path) -> tuple:
    def stat(p: Path):
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    return str(path), stat(path), stat(path.with_name(path.name + ".wal"))


def newest_data_date(home: Path) -> date | None:
    """The newest date that a day count is measured from, in the warehouse as it is; None
    when there is no warehouse yet or another process holds it (the gold check still
    refuses negative day counts then)."""
    path = Settings(home=home).warehouse_path
    if not path.is_file():
        return None
    state = _file_state(path)
    if state in _newest:
        return _newest[state]
    newest = _read_newest(path)
    if newest is not None:
        _newest.clear()
        _newest[state] = newest
    return newest


def _read_newest(path: Path) -> date | None:
    import duckdb

    from churn_assets.warehouse import table_exists

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        if table_exists(con, "gold", "churn_features"):
            sql = (
                "SELECT greatest(max(creation_date), max(last_activity_date), max(last_event)) FROM gold.churn_features"
            )
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
        as_of = parse_as_of(as_of_text)
    except ValueError:
        return []  # reported by setting_problems
    newest = newest_data_date(home)
    if newest is not None and newest > as_of.date():
        return [
            f"CHURN_AS_OF={as_of_text} is earlier than the data in {Settings(home=home).warehouse_path} (newest date "
            f"{newest}): day counts would be negative; use an as-of on or after {newest}, or a CHURN_HOME "
            "of its own for an older as-of"
        ]
    return []


def problems(
    env: Mapping[str, str] | None = None,
    *,
    home_must_exist: bool = True,
    needs_landing: bool = False,
    home: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """Every problem, one line each (empty: good to go). ``env`` defaults to this process's
    environment (with ``overrides``); ``home`` to its ``CHURN_HOME``."""
    env = environment_with(**(overrides or {})) if env is None else env
    home = home or Settings.read_one("home", env)
    found = setting_problems(env)
    found += home_problems(home, must_exist=home_must_exist)
    if home.is_dir():
        # Only before the first ingestion: a warehouse may outlive landing files archived elsewhere.
        if needs_landing and not Settings(home=home).warehouse_path.exists():
            found += landing_problems(home)
        found += as_of_problems(home, env.get("CHURN_AS_OF"))
    return found


def require(env: Mapping[str, str] | None = None, **kwargs) -> None:
    """``problems``, raised as one ``PreflightError``."""
    found = problems(env, **kwargs)
    if found:
        raise PreflightError(found)
