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
from churn_assets.warehouse import WarehouseBusy, connect_writer, ensure_schema, start_run, writer_wait_seconds


def env_or(name: str, default: str | None):
    """``dg.EnvVar(name)`` where the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file. One writer at a time: assets that write take the
    ``duckdb_warehouse`` pool and the job runs its steps in one process.

    The steps of a run share one connection, opened on first use and closed when the run
    ends: no per-step reconnect.

    Once every ``compact_every_hours`` a run also compacts the tables it writes (see
    ``warehouse.start_run``); the others write only new row groups.
    """

    path: str
    memory_limit: str = "3GB"
    compact_every_hours: float = 24.0
    # How long a run waits for another process's hold on the file before failing with one
    # line that names the holder.
    wait_seconds: float = 60.0
    _con: duckdb.DuckDBPyConnection | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run_id

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is None:
            try:
                con = connect_writer(self.path, wait_seconds=self.wait_seconds, memory_limit=self.memory_limit,
                                     holder=f"run {self._run_id}" if self._run_id else "a process")
            except WarehouseBusy as exc:
                raise dg.Failure(description=str(exc), allow_retries=True) from None
            ensure_schema(con)
            if start_run(con, self.compact_every_hours):
                dg.get_dagster_logger().info("warehouse compaction due: this run's checkpoints merge row groups")
            self._con = con
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

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A run started outside `churn` (dg launch, the UI) meets the same settings check first.
        from churn_assets.preflight import require

        require(os.environ, home=Path(self.root).parent, needs_landing=True)


class PipelineSettingsResource(dg.ConfigurableResource):
    """The data root, the as-of instant (``CHURN_AS_OF``, empty = now) and the
    pseudonymization key (``CHURN_PSEUDONYM_KEY``; unset = this data root's own key file)."""

    home: str = "./data"
    as_of: str = ""
    pseudonym_key: str | None = None

    def as_of_datetime(self) -> datetime:
        return settings.parse_as_of(self.as_of)

    def email_pseudonym_key(self) -> str:
        """Read (or, the first time, created) when a step needs it, never at load time."""
        from churn_assets.pseudonym_key import PseudonymKeyError, pseudonym_key

        try:
            return pseudonym_key(Path(self.home), self.pseudonym_key)
        except PseudonymKeyError as exc:
            raise dg.Failure(description=str(exc)) from exc

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The as-of this run uses, checked against the data before a step runs (see preflight).
        from churn_assets.preflight import require

        require({**os.environ, "CHURN_AS_OF": self.as_of}, home=Path(self.home))


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


class AnthropicResource(dg.ConfigurableResource):
    """Claude through the official SDK. The key comes only from ``ANTHROPIC_API_KEY``;
    without it the campaign step writes with the offline templates."""

    api_key: str | None = None
    base_url: str | None = None  # ANTHROPIC_BASE_URL, e.g. a proxy or a test server
    # A current low-cost model that the installed SDK lists.
    model: str = "claude-haiku-5-5"
    max_concurrency: int = 4
    max_retries: int = 4  # the SDK's own: 408/409/429/5xx and timeouts, with backoff and retry-after
    timeout_seconds: float = 30.0
    max_tokens: int = 700
    run_budget_usd: float = 5.0
    # USD per million tokens; set them to the price list of the model in use.
    input_usd_per_mtok: float = 1.0
    output_usd_per_mtok: float = 5.0
    cache_write_usd_per_mtok: float = 1.25
    cache_read_usd_per_mtok: float = 0.10

    @property
    def offline(self) -> bool:
        return not self.api_key

    def writer(self):
        import anthropic

        from churn_assets.campaigns.writer import Budget, ClaudeWriter, Prices

        client = anthropic.Anthropic(
            api_key=self.api_key, base_url=self.base_url or None, max_retries=self.max_retries, timeout=self.timeout_seconds
        )
        prices = Prices(self.input_usd_per_mtok, self.output_usd_per_mtok, self.cache_write_usd_per_mtok, self.cache_read_usd_per_mtok)
        return ClaudeWriter(client, self.model, prices, Budget(self.run_budget_usd), self.max_tokens)


class CampaignPolicyResource(dg.ConfigurableResource):
    """Contact limits of the retention campaign."""

    cooldown_days: int = 7
    max_messages_per_run: int = 1000
    # A model text that fails twice (or a refusal, or an API failure) is replaced by the
    # rule-following template; off, such customers get no message this run.
    fallback_to_template: bool = True


def _alerts(home: Path):
    from churn_assets.automation.alerts import AlertsResource

    return AlertsResource(
        store_path=str(home / "ops" / "alerts.db"),
        webhook_url=env_or("CHURN_ALERT_WEBHOOK", None),
        slack_token=env_or("SLACK_BOT_TOKEN", None),
        slack_channel=os.environ.get("CHURN_SLACK_CHANNEL"),
        ui_url=os.environ.get("CHURN_UI_URL", "http://127.0.0.1:3000"),
        # Delivery bounds: unset variables keep the resource's defaults.
        **{field: float(os.environ[var]) for field, var in (
            ("timeout_seconds", "CHURN_ALERT_TIMEOUT_SECONDS"),
            ("tick_budget_seconds", "CHURN_ALERT_TICK_BUDGET_SECONDS"),
            ("retry_after_seconds", "CHURN_ALERT_RETRY_AFTER_SECONDS"),
            ("expire_after_hours", "CHURN_ALERT_EXPIRE_HOURS"),
        ) if os.environ.get(var)},
    )


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
            compact_every_hours=float(os.environ.get("CHURN_COMPACT_EVERY_HOURS", "24")),
            wait_seconds=writer_wait_seconds(),
        ),
        "landing": LandingZoneResource(
            root=str(settings.landing_dir(home)),
            settle_seconds=ingest.settle_seconds if settle_seconds is None else settle_seconds,
            batch_bytes=ingest.batch_bytes,
        ),
        "pipeline_settings": PipelineSettingsResource(
            home=str(home),
            as_of=as_of if as_of is not None else env_or("CHURN_AS_OF", ""),
            pseudonym_key=env_or("CHURN_PSEUDONYM_KEY", None),
        ),
        "mlflow_store": MLflowResource(
            tracking_uri=env_or("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            artifact_root=str(home / "mlflow" / "artifacts"),
        ),
        "anthropic": AnthropicResource(
            api_key=dg.EnvVar("ANTHROPIC_API_KEY") if os.environ.get("ANTHROPIC_API_KEY") else None,
            base_url=dg.EnvVar("ANTHROPIC_BASE_URL") if os.environ.get("ANTHROPIC_BASE_URL") else None,
            model=os.environ.get("CHURN_CLAUDE_MODEL", "claude-haiku-5-5"),
            run_budget_usd=float(os.environ.get("CHURN_CAMPAIGN_BUDGET_USD", "5")),
        ),
        "campaign_policy": CampaignPolicyResource(
            cooldown_days=int(os.environ.get("CHURN_CAMPAIGN_COOLDOWN_DAYS", "7")),
            max_messages_per_run=int(os.environ.get("CHURN_CAMPAIGN_MAX_MESSAGES", "1000")),
        ),
        "alerts": _alerts(home),
        "model_policy": ModelPolicyResource(
            retrain_min_new_rows=int(os.environ.get("CHURN_RETRAIN_MIN_NEW_ROWS", "0")),
            promotion_tolerance=float(os.environ.get("CHURN_PROMOTION_TOLERANCE", "0")),
        ),
    }
