"""MLflow as the system of record: tracking runs, the registered model, its aliases.

Every call that touches the store goes through ``open_store`` first, which turns an
unreachable or corrupt store into one clear error instead of a retry storm or a stack
trace from deep inside SQLAlchemy.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from churn_assets.defs.ml.model import ChurnModel
from churn_assets.defs.ml.train import TrainedModel

CHAMPION = "champion"
CHALLENGER = "challenger"


class ModelStoreUnavailable(RuntimeError):
    """The MLflow store cannot be used (unreachable, corrupt, misconfigured)."""


@dataclass
class Store:
    tracking_uri: str
    artifact_root: str
    experiment: str
    model_name: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def open_store(store: Store, http_timeout: int = 10, http_retries: int = 1) -> tuple[MlflowClient, str]:
    """Point MLflow at the store, check that it answers, return (client, experiment id)."""
    # A remote server that is down must fail in seconds, not after MLflow's default
    # 7 retries with backoff.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(http_timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(http_retries)
    if store.tracking_uri.startswith("sqlite:///"):
        Path(store.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)
    try:
        client = store.client()  # a SQL store is opened (and migrated) right here
        exp = client.get_experiment_by_name(store.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(store.experiment, artifact_location=store.artifact_root)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same thing to the user
        raise ModelStoreUnavailable(
            f"MLflow store at {redact(store.tracking_uri)} is unreachable or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). Fix or point MLFLOW_TRACKING_URI at a working store; "
            f"nothing was changed."
        ) from exc
    return client, exp_id


def redact(uri: str) -> str:
    """A tracking URI without credentials (user:password@ in database or HTTP URIs)."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def log_and_register(
    store: Store,
    experiment_id: str,
    model: TrainedModel,
    *,
    metrics: dict[str, float],
    params: dict,
    tags: dict[str, str],
    threshold: float,
    importance_png: bytes,
    input_example: pd.DataFrame,
) -> tuple[str, str]:
    """Log one training run and register its model; returns (version, run id)."""
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        mlflow.log_image(_png_to_array(importance_png), "feature_importance.png")
        booster = Path(tmp) / "booster.txt"
        model.booster.save_model(str(booster))
        vocabulary = Path(tmp) / "vocabulary.json"
        vocabulary.write_text(json.dumps(model.vocabulary))
        proba = model.predict_proba(input_example)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ChurnModel(),
            artifacts={"booster": str(booster), "vocabulary": str(vocabulary)},
            signature=infer_signature(input_example, proba),
            input_example=input_example,
            registered_model_name=store.model_name,
            # Stated, not inferred: inference imports the model in a subprocess (seconds).
            pip_requirements=_requirements(),
        )
    version = str(info.registered_model_version)
    client = store.client()
    client.set_model_version_tag(store.model_name, version, "threshold", f"{threshold:.6f}")
    client.set_model_version_tag(store.model_name, version, "holdout_roc_auc", f"{metrics['holdout_roc_auc']:.6f}")
    return version, run.info.run_id


def _png_to_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "churn_assets")]


def version_by_alias(client: MlflowClient, model_name: str, alias: str):
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def load_model(model_name: str, version: str):
    # By version number, resolved from the alias just before: the model that scores is
    # exactly the one recorded in the predictions.
    return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")


def decide(challenger_auc: float, champion_auc: float | None, tolerance: float) -> bool:
    """Promote when there is no champion, or the challenger is not worse than it on the
    same holdout rows by more than ``tolerance``."""
    return champion_auc is None or challenger_auc >= champion_auc - tolerance
