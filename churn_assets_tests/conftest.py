"""Shared fixtures: a temporary CHURN_HOME, the shared reference sample, a materialize helper."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from churn_assets.definitions import defs
from churn_assets.resources import default_resources

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "fixtures" / "dbdemos-sample"
AS_OF = "2023-06-10T00:00:00"


def sample_available() -> bool:
    return SAMPLE.is_dir()


needs_sample = pytest.mark.skipif(not sample_available(), reason="../shared/fixtures/dbdemos-sample is not beside the project")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    return tmp_path


def land_sample(home: Path) -> None:
    for source in ("users", "orders", "events"):
        shutil.copytree(SAMPLE / source, home / "landing" / source, dirs_exist_ok=True)


def materialize(home: Path, selection: str = "*", as_of: str = AS_OF, raise_on_error: bool = True,
                run_config: dict | None = None, instance: dg.DagsterInstance | None = None, **resources):
    """Run the selected assets (and their checks) of the real definitions against ``home``.

    Keyword arguments replace resources (e.g. ``mlflow_store=MLflowResource(...)``).
    """
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        # "*" parsed by Dagster passes a beta parameter (a BetaWarning); the selection object does not.
        selection=dg.AssetSelection.all() if selection == "*" else selection,
        resources={**default_resources(home, as_of=as_of, settle_seconds=0), **resources},
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


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    # Tests never read a developer's real settings or secrets.
    for name in ("CHURN_HOME", "CHURN_AS_OF", "CHURN_PSEUDONYM_KEY", "CHURN_TEST_KILL_AT", "ANTHROPIC_API_KEY",
                 "MLFLOW_TRACKING_URI", "CHURN_RETRAIN_MIN_NEW_ROWS", "CHURN_PROMOTION_TOLERANCE"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
