"""MLflow as the system of record: tracking runs, the registered model, its aliases.

Every call that touches the store goes through ``open_store`` first, which turns an
unreachable or corrupt store into one clear error instead of a retry storm or a stack
trace from deep inside SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from churn_assets.defs.ml import model as model_format
from churn_assets.settings import environment_scope

# MLflow is imported inside each function: every code-location load imports this module, and
# MLflow costs seconds to import; a run that scores or trains imports it in the background as it
# starts (``MLflowResource.setup_for_execution``).
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from churn_assets.defs.ml.train import TrainedModel

CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION = "decision"  # the version tag the champion step writes: a challenger with it has been judged
LANDED_ROWS = "landed_rows"  # version tag: bronze rows landed when it was trained (the retrain policy's count)
DAGSTER_RUN_TAG = "dagster.run_id"  # MLflow run tag: the Dagster run that trained it
ROWS_HOLDOUT = "data.rows_holdout"  # MLflow run tag: holdout customers its metrics were measured on


class ModelStoreUnavailable(RuntimeError):
    """The MLflow store cannot be used (unreachable, corrupt, misconfigured)."""


@dataclass
class Store:
    tracking_uri: str
    artifact_root: str
    experiment: str
    model_name: str

    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


@contextlib.contextmanager
def configured(store: Store, http_timeout: int, http_retries: int) -> Iterator[None]:
    """MLflow pointed at ``store`` for the block, then put back as it was.

    MLflow's fluent calls (``start_run``, ``log_model``) take the store from its global
    URIs (which it mirrors into the environment) and the HTTP limits from the environment
    only: all are set for the block and restored after, never left for other code (or
    another store) in the same process.
    """
    import mlflow
    import mlflow.tracking

    before = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    uri = store.tracking_uri
    # A remote server that is down must fail in seconds, not after MLflow's default
    # 7 retries with backoff.
    with environment_scope(
        MLFLOW_HTTP_REQUEST_TIMEOUT=str(http_timeout),
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(http_retries),
        MLFLOW_REGISTRY_URI=uri,
    ):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)  # None: unset again
            mlflow.set_registry_uri(before)


def open_store(store: Store) -> tuple[MlflowClient, str]:
    """Check that the store answers; (client, experiment id)."""
    if store.tracking_uri.startswith("sqlite:///"):
        Path(store.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = store.client()  # a SQL store is opened (and migrated) right here
        exp_id = _experiment_id(client, store)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same thing to the user
        raise ModelStoreUnavailable(
            f"MLflow store at {redact(store.tracking_uri)} is unreachable or corrupt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). Fix or point MLFLOW_TRACKING_URI at a working store; "
            f"nothing was changed."
        ) from exc
    return client, exp_id


def _experiment_id(client: MlflowClient, store: Store) -> str:
    """The store's experiment, created when missing. Another thread or process may create it in
    between (a first run's champion prefetch and its training step both open the new store): the
    one it created is the experiment."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(store.experiment)
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(store.experiment, artifact_location=store.artifact_root)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(store.experiment)
        if exp is None:
            raise
        return exp.experiment_id


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
    measure: Callable[[], tuple[dict[str, float], float]],
    prepared: Future | None = None,
    params: dict,
    tags: dict[str, str],
    importance_png: bytes,
    input_example: pd.DataFrame,
) -> tuple[str, str, dict[str, float], float]:
    """Log one training run and register its model; returns (version, run id, metrics, threshold).

    ``measure`` (the holdout's metrics and the threshold chosen on it) runs in this thread while
    MLflow logs the model in another: LightGBM scoring the holdout leaves the interpreter free,
    and the two took 2.6 s and 3.4 s one after the other at 100x the reference. The version is
    registered, and the run gets the metrics, once the measure is in. ``prepared``:
    ``prepare_logging``, running in the background."""
    import mlflow
    from mlflow.models import infer_signature

    measured: Future = Future()
    with tempfile.TemporaryDirectory() as tmp:
        # What the logging reads of the booster is written out before the other thread starts:
        # the holdout is scored with the booster meanwhile.
        plot = Path(tmp) / "feature_importance.png"
        plot.write_bytes(importance_png)
        booster = Path(tmp) / "booster.txt"
        model.booster.save_model(str(booster))
        vocabulary = Path(tmp) / "vocabulary.json"
        vocabulary.write_text(json.dumps(model.vocabulary))
        signature = infer_signature(input_example, model.predict_proba(input_example))

        def log() -> tuple[str, str, dict[str, float], float]:
            if prepared is not None:
                prepared.result()
            # MLflow's active run is per thread: this run is this thread's.
            with mlflow.start_run(experiment_id=experiment_id) as run:
                mlflow.log_params(params)
                mlflow.set_tags(tags)
                mlflow.log_artifact(str(plot))
                info = _log_pyfunc(store, booster, vocabulary, signature, input_example, register=False)
                # A failed measure fails the run before any version is registered.
                metrics, threshold = measured.result()
                mlflow.log_metrics(metrics)
                mlflow.log_param("threshold", round(threshold, 6))
                registered = mlflow.register_model(info.model_uri, store.model_name)
            return str(registered.version), run.info.run_id, metrics, threshold

        with ThreadPoolExecutor(max_workers=1) as pool:
            logged = pool.submit(log)
            try:
                measured.set_result(measure())
            except BaseException as exc:
                measured.set_exception(exc)
                raise
            version, run_id, metrics, threshold = logged.result()
    client = store.client()
    client.set_model_version_tag(store.model_name, version, "threshold", f"{threshold:.6f}")
    client.set_model_version_tag(store.model_name, version, "holdout_roc_auc", f"{metrics['holdout_roc_auc']:.6f}")
    return version, run_id, metrics, threshold


def prepare_logging() -> None:
    """MLflow's one-time work before it logs a model: ``log_model`` checks the stated
    requirements against the installed packages, and the first check in a process maps every
    installed distribution (0.4 s). The training step has it done in the background
    (``MLflowResource.prepare_logging``) while its rows load and LightGBM trains."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(_requirements())


def _log_pyfunc(store: Store, booster: Path, vocabulary: Path, signature, input_example, register: bool = True):
    """Log the model in the active run (and register it, with ``register``): booster text +
    vocabulary JSON as artifacts, and the code file that builds the pyfunc from them (no pickle)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(model_format.CODE_FILE),  # "models from code": a path, not an object
        artifacts={model_format.BOOSTER: str(booster), model_format.VOCABULARY: str(vocabulary)},
        signature=signature,
        input_example=input_example,
        registered_model_name=store.model_name if register else None,
        # Stated, not inferred: inference imports the model in a subprocess (seconds).
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "churn_assets")]


def version_by_alias(client: MlflowClient, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        text = str(exc).lower()
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in text or "does not exist" in text:
            return None
        raise


class PickledModel(RuntimeError):
    """A version logged by an earlier release as a cloudpickle: never loaded, migrated instead."""


def _model_files(model_name: str, version: str, dst: str) -> tuple[Path, dict]:
    """Download a version's model directory; returns it with the pyfunc flavor of its MLmodel."""
    import mlflow.artifacts
    from mlflow.models import Model

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=dst))
    return root, Model.load(str(root)).flavors.get("python_function", {})


def is_pickled(flavor: dict) -> bool:
    # Earlier releases passed a PythonModel object: MLflow cloudpickled it to the file named
    # by ``python_model``. (MLflow writes ``cloudpickle_version`` for code models too: no pickle.)
    return "python_model" in flavor


def load_model(model_name: str, version: str) -> model_format.Scorer:
    """The booster and vocabulary of a version, read from their files: no pickle is loaded
    and no code from the artifact store runs. A pickled version is refused.

    By version number, resolved from the alias just before: the model that scores is
    exactly the one recorded in the predictions."""
    with tempfile.TemporaryDirectory() as tmp:
        root, flavor = _model_files(model_name, version, tmp)
        if is_pickled(flavor):
            raise PickledModel(
                f"{model_name} version {version} is a cloudpickle from an earlier release; "
                f"it is never unpickled (the next cycle migrates the champion)"
            )
        paths = {name: root / spec["path"] for name, spec in flavor.get("artifacts", {}).items()}
        return model_format.read_scorer(paths[model_format.BOOSTER], paths[model_format.VOCABULARY])


def ensure_not_pickled(client: MlflowClient, store: Store, experiment_id: str, version: str, log=None) -> str:
    """The version to use for ``version``: itself, or, if an earlier release logged it as a
    cloudpickle, its migration: the same booster and vocabulary files (read from the old
    model's artifacts, never unpickled) logged as a new version in the current format,
    with the old version's tags, and every alias of the old version moved to it.

    Idempotent: a migration found by its ``migrated_from`` tag is reused."""
    name = store.model_name
    with tempfile.TemporaryDirectory() as tmp:
        root, flavor = _model_files(name, version, tmp)
        if not is_pickled(flavor):
            return version
        done = client.search_model_versions(f"name = '{name}' and tag.migrated_from = '{version}'")
        if done:
            new = str(done[0].version)
        else:
            import mlflow
            from mlflow.models import Model

            old = client.get_model_version(name, version)
            paths = {n: root / spec["path"] for n, spec in flavor.get("artifacts", {}).items()}
            meta = Model.load(str(root))
            example = meta.load_input_example(str(root)) if meta.saved_input_example_info else None
            with mlflow.start_run(experiment_id=experiment_id, tags={"migrated_from_version": version}):
                info = _log_pyfunc(
                    store, paths[model_format.BOOSTER], paths[model_format.VOCABULARY], meta.signature, example
                )
            new = str(info.registered_model_version)
            for key, value in old.tags.items():
                client.set_model_version_tag(name, new, key, value)
            client.set_model_version_tag(name, new, "migrated_from", version)
    client.set_model_version_tag(name, version, "migrated_to", new)
    for alias in client.get_model_version(name, version).aliases:
        client.set_registered_model_alias(name, alias, new)
    if log:
        log.info(f"{name} version {version} was a cloudpickle: migrated to version {new} (booster text + JSON)")
    return new


def current_champion(client: MlflowClient, store: Store, experiment_id: str, log=None):
    """The version holding the champion alias, or None. A champion an earlier release logged
    as a cloudpickle is migrated first (never unpickled): the version returned is loadable."""
    champion = version_by_alias(client, store.model_name, CHAMPION)
    if champion is None:
        return None
    return client.get_model_version(
        store.model_name, ensure_not_pickled(client, store, experiment_id, str(champion.version), log)
    )


def latest_version(client: MlflowClient, model_name: str):
    """The most recently registered version of ``model_name``, or None."""
    found = client.search_model_versions(f"name = '{model_name}'", order_by=["version_number DESC"], max_results=1)
    return found[0] if found else None


def mark_challenger(client: MlflowClient, model_name: str, version: str, landed_rows: int) -> None:
    """The version just trained becomes the candidate the champion step compares; it
    remembers how many rows had landed, which the retrain policy counts from."""
    client.set_model_version_tag(model_name, version, LANDED_ROWS, str(landed_rows))
    client.set_registered_model_alias(model_name, CHALLENGER, version)


def trained_in(client: MlflowClient, version, dagster_run_id: str) -> bool:
    """Whether ``version`` was trained by that Dagster run (its MLflow run's fingerprint says so)."""
    return client.get_run(version.run_id).data.tags.get(DAGSTER_RUN_TAG) == dagster_run_id


def holdout_auc_of(client: MlflowClient, version) -> float:
    """The holdout ROC AUC logged by the training run of ``version``."""
    return float(client.get_run(version.run_id).data.metrics["holdout_roc_auc"])


def training_holdout(client: MlflowClient, version) -> tuple[float, int]:
    """The holdout ROC AUC the training run of ``version`` measured, and on how many customers."""
    run = client.get_run(version.run_id)
    return float(run.data.metrics["holdout_roc_auc"]), int(run.data.tags[ROWS_HOLDOUT])


def record_decision(client: MlflowClient, model_name: str, version: str, tags: dict[str, str], promote: bool) -> None:
    """The champion step's verdict on ``version``, as tags; promoted: it takes the champion
    alias and nothing is waiting as challenger any more."""
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if promote:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        client.delete_registered_model_alias(model_name, CHALLENGER)


def score_auc(model_name: str, version: str, frame: pd.DataFrame, labels: np.ndarray) -> float:
    """ROC AUC of a registered version on ``frame``, loaded from the registry as scoring loads it."""
    from churn_assets.defs.ml.train import roc_auc

    return roc_auc(labels, load_model(model_name, version).predict(frame))
