"""The resources every domain shares: the warehouse, the landing zone, the pipeline settings.

Each is built from ``Settings`` (``from_settings``) when the code location loads, which
for a run is when its worker starts; a domain's own resources live in its folder
(``defs/ml/resources.py``, ``defs/campaigns/resources.py``). Secrets are passed as
``dg.EnvVar``, so the UI shows the variable's name, never its value.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from churn_assets.engine import EngineResource, run_problem
from churn_assets.ops.alerts import AlertsResource
from churn_assets.preflight import require
from churn_assets.pseudonym_key import PseudonymKeyError, pseudonym_key
from churn_assets.settings import Settings
from churn_assets.timeutil import parse_as_of
from churn_assets.warehouse import WarehouseBusy, connect_writer, ensure_schema, start_run


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file. One writer at a time: assets that write take the
    ``duckdb_warehouse`` pool and the job runs its steps in one process.

    The steps of a run share one connection, opened on first use and closed when the run
    ends: no per-step reconnect.

    Once every ``compact_every_hours`` a run also compacts the tables it writes (see
    ``warehouse.start_run``); the others write only new row groups.
    """

    path: str
    memory_limit: str
    compact_every_hours: float
    # How long a run waits for another process's hold on the file before failing with one
    # line that names the holder.
    wait_seconds: float
    # The engine, checked when a run starts (every step asks for this resource): a bad setting fails it at once.
    engine: str = "duckdb"
    spark_master: str = "local[*]"
    spark_warehouse: str = ""
    _con: duckdb.DuckDBPyConnection | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run.run_id if context.run else None
        problem = run_problem(self.engine, self.spark_master, self.spark_warehouse)
        if problem:
            raise dg.Failure(description=problem)
        # The objects loaded before the run (the libraries, the definitions: ~250,000) live as long
        # as it: kept out of the garbage collector's full passes until it ends. Each pass traversed
        # them again: 0.9 s of full passes in an hourly run at 100x the reference, 0.35 s without
        # them; 0.3 s of a training step at 1x.
        gc.freeze()

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is None:
            try:
                con = connect_writer(
                    self.path,
                    wait_seconds=self.wait_seconds,
                    memory_limit=self.memory_limit,
                    holder=f"run {self._run_id}" if self._run_id else "a process",
                )
            except WarehouseBusy as exc:
                raise dg.Failure(description=str(exc), allow_retries=True) from None
            ensure_schema(con)
            if start_run(con, self.compact_every_hours):
                dg.get_dagster_logger().info("warehouse compaction due: this run's checkpoints merge row groups")
            self._con = con
        yield self._con

    @classmethod
    def from_settings(cls, settings: Settings) -> WarehouseResource:
        return cls(
            path=str(settings.warehouse_path),
            memory_limit=settings.duckdb_memory,
            compact_every_hours=settings.compact_every_hours,
            wait_seconds=settings.warehouse_wait_seconds,
            engine=settings.engine,
            spark_master=settings.spark_master,
            spark_warehouse=settings.spark_warehouse,
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        gc.unfreeze()
        if self._con is not None:
            self._con.close()
            self._con = None


class LandingZoneResource(dg.ConfigurableResource):
    """Where source systems drop files: ``<root>/{users,orders,events}/``."""

    root: str
    settle_seconds: float
    batch_bytes: int
    listen_seconds: float = 0.0  # how long a sensor tick waits for a new file

    @classmethod
    def from_settings(cls, settings: Settings) -> LandingZoneResource:
        return cls(
            root=str(settings.landing_dir),
            settle_seconds=settings.settle_seconds,
            batch_bytes=settings.batch_bytes,
            listen_seconds=settings.sensor_listen_seconds,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A run started outside `churn` (dg launch, the UI) meets the same settings check first.
        require(home=Path(self.root).parent, needs_landing=True)


class PipelineSettingsResource(dg.ConfigurableResource):
    """The data root, the as-of instant (``CHURN_AS_OF``, empty = now) and the
    pseudonymization key (``CHURN_PSEUDONYM_KEY``; unset = this data root's own key file)."""

    home: str
    as_of: str
    pseudonym_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettingsResource:
        return cls(home=str(settings.home), as_of=settings.as_of_text, pseudonym_key=settings.secret("pseudonym_key"))

    def as_of_datetime(self) -> datetime:
        return parse_as_of(self.as_of)

    def email_pseudonym_key(self) -> str:
        """Read (or, the first time, created) when a step needs it, never at load time."""
        try:
            return pseudonym_key(Path(self.home), self.pseudonym_key)
        except PseudonymKeyError as exc:
            raise dg.Failure(description=str(exc)) from exc

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The as-of this run uses, checked against the data before a step runs (see preflight).
        require(home=Path(self.home), overrides={"CHURN_AS_OF": self.as_of})


def shared_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The resources every domain's assets may ask for, bound once for the code location."""
    return {
        "warehouse": WarehouseResource.from_settings(settings),
        "landing": LandingZoneResource.from_settings(settings),
        "pipeline_settings": PipelineSettingsResource.from_settings(settings),
        "alerts": AlertsResource.from_settings(settings),
        # duckdb (default) or spark: which engine executes the cycle.
        "engine": EngineResource.from_settings(settings),
    }
