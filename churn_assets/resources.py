"""Every resource of the project, in one place.

Paths and settings come from the environment through ``dg.EnvVar`` when set, so the UI
shows the variable's name, never its value, and a run reads it at launch time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from churn_assets import settings
from churn_assets.warehouse import connect, ensure_schema


def env_or(name: str, default: str):
    """``dg.EnvVar(name)`` where the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file. One writer at a time: assets that write take the
    ``duckdb_warehouse`` pool and the job runs its steps in one process.

    The steps of a run share one connection, opened on first use and closed when the run
    ends: no per-step reconnect, and DuckDB checkpoints once rather than at every step.
    """

    path: str
    memory_limit: str = "3GB"
    _con: duckdb.DuckDBPyConnection | None = PrivateAttr(default=None)

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is None:
            self._con = connect(self.path, memory_limit=self.memory_limit)
            ensure_schema(self._con)
        yield self._con

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class LandingZoneResource(dg.ConfigurableResource):
    """Where source systems drop files: ``<root>/{users,orders,events}/``."""

    root: str
    settle_seconds: float = 2.0
    batch_bytes: int = 256 * 1024 * 1024


class PipelineSettingsResource(dg.ConfigurableResource):
    """The data root, the as-of instant (``CHURN_AS_OF``, empty = now) and the
    pseudonymization key."""

    home: str = "./data"
    as_of: str = ""
    pseudonym_key: str = settings.DEV_PSEUDONYM_KEY

    def as_of_datetime(self) -> datetime:
        return settings.parse_as_of(self.as_of)


class MLflowResource(dg.ConfigurableResource):
    """Where models are tracked and registered. Embedded by default: a SQLite store under
    ``$CHURN_HOME/mlflow/`` with artifacts beside it; ``MLFLOW_TRACKING_URI`` overrides."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "churn"
    model_name: str = "churn_model"
    http_timeout: int = 10
    http_retries: int = 1

    def store(self):
        from churn_assets.ml.registry import Store

        return Store(self.tracking_uri, self.artifact_root, self.experiment, self.model_name)

    def open(self):
        """(client, experiment id); a clear ``dg.Failure`` when the store cannot be used."""
        from churn_assets.ml.registry import ModelStoreUnavailable, open_store

        try:
            return open_store(self.store(), self.http_timeout, self.http_retries)
        except ModelStoreUnavailable as exc:
            raise dg.Failure(description=str(exc), allow_retries=True) from exc


class ModelPolicyResource(dg.ConfigurableResource):
    """When to retrain and when a new model may replace the champion."""

    # 0 = retrain every cycle; N = only once N new bronze rows have landed since the last
    # registered model (the near-continuous mode wants this).
    retrain_min_new_rows: int = 0
    # A challenger is promoted when its holdout ROC AUC >= champion's - tolerance.
    promotion_tolerance: float = 0.0
    # Below this holdout ROC AUC a model is no better than chance: never promoted.
    min_auc: float = 0.55


def default_resources(home: Path | None = None, *, as_of: str | None = None, settle_seconds: float | None = None) -> dict:
    """The resources of a code location rooted at ``home`` (default ``CHURN_HOME``).

    Tests and benchmarks pass ``home``/``as_of``/``settle_seconds`` instead of the environment.
    """
    home = home or settings.churn_home()
    ingest = settings.IngestSettings()
    return {
        "warehouse": WarehouseResource(
            path=str(settings.warehouse_path(home)),
            memory_limit=os.environ.get("CHURN_DUCKDB_MEMORY_LIMIT", "3GB"),
        ),
        "landing": LandingZoneResource(
            root=str(settings.landing_dir(home)),
            settle_seconds=ingest.settle_seconds if settle_seconds is None else settle_seconds,
            batch_bytes=ingest.batch_bytes,
        ),
        "pipeline_settings": PipelineSettingsResource(
            home=str(home),
            as_of=as_of if as_of is not None else env_or("CHURN_AS_OF", ""),
            pseudonym_key=env_or("CHURN_PSEUDONYM_KEY", settings.DEV_PSEUDONYM_KEY),
        ),
        "mlflow_store": MLflowResource(
            tracking_uri=env_or("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            artifact_root=str(home / "mlflow" / "artifacts"),
        ),
        "model_policy": ModelPolicyResource(
            retrain_min_new_rows=int(os.environ.get("CHURN_RETRAIN_MIN_NEW_ROWS", "0")),
            promotion_tolerance=float(os.environ.get("CHURN_PROMOTION_TOLERANCE", "0")),
        ),
    }
