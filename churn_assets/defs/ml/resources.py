"""The model domain's resources: the MLflow store and the retraining/promotion policy."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

import dagster as dg
from pydantic import PrivateAttr

from churn_assets.settings import Settings

PREDICTION = dg.AssetKey(["gold", "churn_prediction"])  # the step that scores with the champion


class MLflowResource(dg.ConfigurableResource):
    """Where models are tracked and registered. Embedded by default: a SQLite store under
    ``$CHURN_HOME/mlflow/`` with artifacts beside it; ``MLFLOW_TRACKING_URI`` overrides."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "churn"
    model_name: str = "churn_model"
    http_timeout: int = 10
    http_retries: int = 1
    _scope: contextlib.ExitStack | None = PrivateAttr(default=None)
    _champion: Future | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> MLflowResource:
        values = {"tracking_uri": settings.mlflow_uri, "artifact_root": str(settings.mlflow_artifacts)}
        return cls(**{**values, **overrides})

    def store(self):
        from churn_assets.defs.ml.registry import Store

        return Store(self.tracking_uri, self.artifact_root, self.experiment, self.model_name)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # MLflow's fluent API reads global state: pointed at this store for the run only.
        from churn_assets.defs.ml.registry import configured

        self._scope = contextlib.ExitStack()
        self._scope.enter_context(configured(self.store(), self.http_timeout, self.http_retries))
        selection = context.run.asset_selection if context.run else None
        if not selection or PREDICTION in selection:  # empty: the whole job
            # Opening the store and loading the champion take seconds; a run that scores starts
            # them now, in the background, while its first steps work in DuckDB (which releases
            # the GIL). The scoring step checks the alias again and uses the result only if it
            # still names the same version.
            pool = ThreadPoolExecutor(1, thread_name_prefix="champion-prefetch")
            self._champion = pool.submit(self._load_champion)
            pool.shutdown(wait=False)

    def _load_champion(self):
        from churn_assets.defs.ml import registry

        client, _ = self.open()
        alias = registry.version_by_alias(client, self.model_name, registry.CHAMPION)
        if alias is None:
            return None
        # A champion pickled by an earlier release fails to load here: the step migrates it.
        champion = client.get_model_version(self.model_name, str(alias.version))
        return champion, registry.load_model(self.model_name, str(champion.version))

    def prefetched_champion(self, client):
        """(champion version, model) loaded in the background, if the champion alias still names
        that version; else None (the caller loads it itself)."""
        from churn_assets.defs.ml import registry

        if self._champion is None:
            return None
        try:
            found = self._champion.result()
        except Exception:  # noqa: BLE001 - the scoring step's own load reports the failure
            return None
        if found is None:
            return None
        now = registry.version_by_alias(client, self.model_name, registry.CHAMPION)
        return found if now is not None and str(now.version) == str(found[0].version) else None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._champion is not None:
            # Not started: dropped. Started (a run that ended before scoring, e.g. refused): waited
            # for, so no thread of this run still migrates or reads the store once it is over
            # (MLflow's migrations and Dagster's share alembic's module state).
            if not self._champion.cancel():
                with contextlib.suppress(Exception):
                    self._champion.result()
            self._champion = None
        if self._scope is not None:
            self._scope.close()
            self._scope = None

    def open(self):
        """(client, experiment id); a clear ``dg.Failure`` when the store cannot be used."""
        from churn_assets.defs.ml.registry import ModelStoreUnavailable, open_store

        try:
            return open_store(self.store())
        except ModelStoreUnavailable as exc:
            raise dg.Failure(description=str(exc), allow_retries=True) from exc


class ModelPolicyResource(dg.ConfigurableResource):
    """When to retrain and when a new model may replace the champion."""

    # 0 = retrain every cycle; N = only once N new bronze rows have landed since the last
    # registered model (the near-continuous mode wants this).
    retrain_min_new_rows: int
    # A challenger is promoted when its holdout ROC AUC >= champion's - tolerance.
    promotion_tolerance: float
    # Below this holdout ROC AUC a model is no better than chance: never promoted.
    min_auc: float = 0.55
    # Training customers beyond this are a stratified sample of this many (0 = all of them).
    train_max_rows: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> ModelPolicyResource:
        values = {
            "retrain_min_new_rows": settings.retrain_min_new_rows,
            "promotion_tolerance": settings.promotion_tolerance,
            "train_max_rows": settings.train_max_rows,
        }
        return cls(**{**values, **overrides})
