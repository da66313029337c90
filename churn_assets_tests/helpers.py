"""What the tests share: the shared reference sample, the project's definitions loaded for a
temporary CHURN_HOME, a materialize helper and warehouse queries (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from churn_assets.cli import stat_fields
from churn_assets.definitions import defs as project_defs
from churn_assets.settings import environment_scope

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "fixtures" / "dbdemos-sample"
AS_OF = "2023-06-10T00:00:00"
# The `churn` command as a subprocess, and the venv's console scripts (`churn`, `dg`).
CHURN = [sys.executable, "-m", "churn_assets.cli"]
VENV_BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict:
    """This process's environment without the project's settings, Dagster's home or MLflow's: a user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHURN_", "DAGSTER_HOME", "MLFLOW_"))}
    env.update(DAGSTER_DISABLE_TELEMETRY="1", **extra)
    return env


def user_record(key: str, **fields) -> str:
    """One well-formed landing user (a JSON line, in the reference format) with id ``key``;
    ``fields`` override or add values (e.g. a malformed one)."""
    base = {
        "id": key,
        "firstname": "ann",
        "lastname": "lee",
        "email": f"{key}@x.org",
        "address": "1 St\nTown",
        "canal": "WEBAPP",
        "country": "FR",
        "creation_date": "01-30-2023 00:00:00",
        "last_activity_date": "06-04-2023 02:06:29",
        "gender": 1.0,
        "age_group": 2.0,
        "churn": True,
    }
    return json.dumps({**base, **fields}, ensure_ascii=False)


def sample_available() -> bool:
    return SAMPLE.is_dir()


needs_sample = pytest.mark.skipif(
    not sample_available(), reason="../shared/fixtures/dbdemos-sample is not beside the project"
)


def land_sample(home: Path) -> None:
    for source in ("users", "orders", "events"):
        shutil.copytree(SAMPLE / source, home / "landing" / source, dirs_exist_ok=True)


def project_env(home: Path, as_of: str = AS_OF, **extra: str) -> dict[str, str]:
    """The settings a test runs the project with: its own home, a fixed as-of, no settle wait,
    sensor ticks that look once (no listening)."""
    return {
        "CHURN_HOME": str(home),
        "CHURN_AS_OF": as_of,
        "CHURN_SETTLE_SECONDS": "0",
        "CHURN_SENSOR_LISTEN_SECONDS": "0",
        **extra,
    }


def load_defs(home: Path, as_of: str = AS_OF, **env: str) -> dg.Definitions:
    """The project's definitions as the code location loads them for ``home``."""
    with environment_scope(**project_env(home, as_of, **env)):
        return project_defs()


def materialize(
    home: Path,
    selection: str = "*",
    as_of: str = AS_OF,
    raise_on_error: bool = True,
    run_config: dict | None = None,
    instance: dg.DagsterInstance | None = None,
    env: dict[str, str] | None = None,
    **resources,
):
    """Run the selected assets (and their checks) of the real definitions against ``home``.

    ``env`` sets further settings; keyword arguments replace resources
    (e.g. ``mlflow_store=MLflowResource.from_settings(settings, ...)``).
    """
    loaded = load_defs(home, as_of, **(env or {}))
    return dg.materialize(
        [*loaded.assets, *loaded.asset_checks],
        # "*" parsed by Dagster passes a beta parameter (a BetaWarning); the selection object does not.
        selection=dg.AssetSelection.all() if selection == "*" else selection,
        resources={**loaded.resources, **resources},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
        run_config=run_config,
    )


def query(home: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def one(home: Path, sql: str, params=None):
    return query(home, sql, params)[0][0]


def assert_no_personal_data(requests: list[dict], people: list[tuple]) -> None:
    """No (id, firstname, lastname, email, address) of ``people`` in any request body sent to the
    API: ids, e-mails and addresses anywhere, names as a prompt would quote or address them."""
    bodies = "\n".join(json.dumps(r["body"], ensure_ascii=False) for r in requests)
    for user_id, first, last, email, address in people:
        for value in (user_id, email, address, f'"{first}"', f" {first},", f" {last} ", f'"{last}"'):
            assert value is None or value not in bodies


def trigger(name: str):
    """A schedule or sensor of the project as the code location builds it (default settings)."""
    from churn_assets.defs.automation import triggers
    from churn_assets.defs.automation.jobs import cycle_job
    from churn_assets.settings import Settings

    schedules, sensors = triggers.build(Settings(), cycle_job(Settings()))
    return next(t for t in [*schedules, *sensors] if t.name == name)


# --- crash tests: `churn run` in a subprocess, killed at a named fault point ---------------------------

# One e-mail pseudonym key for every crash-test home: a killed-and-rerun home is compared with a fresh load.
CRASH_KEY = "crash-safety-" + "3" * 51


def alive(pids) -> set[int]:
    """Those of ``pids`` still running: not gone, not a zombie (a child that exited stays one
    until its parent reaps it)."""
    return {pid for pid in pids if (fields := stat_fields(pid)) and fields[0] != "Z"}  # fields[0]: the state


def run_cycle(home: Path, kill_at: str | None = None, select: str = "group:bronze") -> subprocess.Popen:
    """`churn run --select` on ``home`` in a subprocess; with ``kill_at``, SIGKILLed at that fault point."""
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "CHURN_SETTLE_SECONDS": "0",
        "CHURN_AS_OF": "2026-11-02T00:00:00",
        # Many small transactions, so kills land between and inside them.
        "CHURN_BATCH_BYTES": "200000",
        "CHURN_TEST_KILL_MARKER": str(home / "killed_at"),
        "CHURN_PSEUDONYM_KEY": CRASH_KEY,
    }
    env.pop("CHURN_TEST_KILL_AT", None)
    if kill_at:
        env["CHURN_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        [*CHURN, "run", "--select", select],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def killed_at(home: Path) -> str | None:
    marker = home / "killed_at"
    return marker.read_text().strip() if marker.exists() else None
