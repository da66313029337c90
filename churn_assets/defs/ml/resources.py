"""The model domain's resources: the MLflow store and the retraining/promotion policy."""

from __future__ import annotations

import contextlib

import dagster as dg
from pydantic import PrivateAttr

from churn_assets.settings import Settings


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

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
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
