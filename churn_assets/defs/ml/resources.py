"""The model domain's resources: the MLflow store and the retraining/promotion policy."""

from __future__ import annotations

import contextlib
import gc
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from churn_assets import run_tags
from churn_assets.settings import Settings

PREDICTION = dg.AssetKey(["gold", "churn_prediction"])  # the step that scores with the champion
MODEL = dg.AssetKey(["ml", "churn_model"])  # the step that trains
TRAINING = (MODEL, dg.AssetKey(["ml", "churn_model_champion"]))


def load_failure(what: str, exc: Exception) -> dg.Failure:
    """The scoring step's error when the model cannot be loaded (retried: often a store's hiccup)."""
    return dg.Failure(
        description=f"could not load {what} from the MLflow store ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); previous predictions left untouched",
        allow_retries=True,
    )


def run_executes(run: dg.DagsterRun | None, key: dg.AssetKey) -> bool:
    """Whether ``run`` executes the step of asset ``key``: its steps, when it names them
    (``dg.materialize`` of some assets, a re-execution), else its asset selection (the UI,
    sensors); a whole job does."""
    if run is None:
        return True
    if run.step_keys_to_execute is not None:
        return key.to_python_identifier() in run.step_keys_to_execute
    if run.asset_selection:
        return key in run.asset_selection
    return True


def run_scores(run: dg.DagsterRun | None) -> bool:
    """Whether ``run`` executes the scoring step."""
    return run_executes(run, PREDICTION)


class MLflowResource(dg.ConfigurableResource):
    """Where models are tracked and registered. Embedded by default: a SQLite store under
    ``$CHURN_HOME/mlflow/`` with artifacts beside it; ``MLFLOW_TRACKING_URI`` overrides."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "churn"
    model_name: str = "churn_model"
    http_timeout: int = 10
    http_retries: int = 1
    # Continuous mode's warm scorer (defs/ml/warm.py): where it answers, and how long it waits
    # for the next run before it stops (0: none, each run loads the model itself).
    warm_socket: str | None = None
    warm_idle_seconds: int = 0
    warm_log: str | None = None
    _use_warm: bool = PrivateAttr(default=False)
    _warm: object | None = PrivateAttr(default=None)
    _scope: contextlib.ExitStack | None = PrivateAttr(default=None)
    _setup: ThreadPoolExecutor | None = PrivateAttr(default=None)
    _lightgbm: Future | None = PrivateAttr(default=None)
    _ready: Future | None = PrivateAttr(default=None)
    _opened: Future | None = PrivateAttr(default=None)
    _prepared: Future | None = PrivateAttr(default=None)
    _champion: Future | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> MLflowResource:
        sock = settings.warm_scorer_socket
        values = {
            "tracking_uri": settings.mlflow_uri,
            "artifact_root": str(settings.mlflow_artifacts),
            "warm_socket": str(sock) if sock else None,
            # On Spark the executors score (defs/ml/spark.py): no warm scorer.
            "warm_idle_seconds": 0 if settings.engine == "spark" else settings.warm_scorer_idle_seconds,
            "warm_log": str(settings.logs_dir / "warm-scorer.log"),
        }
        return cls(**{**values, **overrides})

    def store(self):
        from churn_assets.defs.ml.registry import Store

        return Store(self.tracking_uri, self.artifact_root, self.experiment, self.model_name)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._scope = contextlib.ExitStack()
        selection = context.run.asset_selection if context.run else None
        scores = run_scores(context.run)
        # Runs for new files (they score and do not train): a warm scorer that answers scores for
        # them, and nothing is imported or loaded for scoring here. None answers: a run started as
        # files land (run_tags.is_continuous) starts one for the runs after it, and loads its own.
        if selection and PREDICTION in selection and not any(k in selection for k in TRAINING):
            self._use_warm = self._warm_scorer_answers(context)
            if self._use_warm:
                return
        # Importing MLflow, pointing it at this store and, in a run that scores, opening the store
        # and loading the champion take seconds. They run in the background as the run starts,
        # while its first steps work in DuckDB (which releases the GIL); ``open`` waits for them.
        # The scoring step checks the alias again and uses the prefetched model only if it still
        # names the same version.
        # First, in the run's own thread, what that background work imports too and this thread
        # uses meanwhile (SQLAlchemy's ORM: Dagster's storage; Polars: the steps' metadata; pandas
        # under both). A package two threads import at once can be seen half-initialized (in the
        # latency benchmark a bronze step failed so: "partially initialized module sqlalchemy.orm.exc").
        import pandas  # noqa: F401
        import polars  # noqa: F401
        import sqlalchemy.orm  # noqa: F401

        # In a run that trains, LightGBM comes first: the training step loads its rows and trains
        # while MLflow is set up after it (LightGBM and DuckDB leave the interpreter free), and
        # registers once it is. One worker for all of it, so LightGBM and MLflow, which share
        # scipy and numpy modules, are never imported by two threads at once.
        self._setup = ThreadPoolExecutor(1, thread_name_prefix="mlflow-setup")
        if run_executes(context.run, MODEL):
            from churn_assets.defs.ml.model import lightgbm

            self._lightgbm = self._setup.submit(lightgbm)
        self._ready = self._setup.submit(self._configure)
        if scores:
            self._champion = self._setup.submit(self._load_champion)  # after _configure: one worker

    def _warm_scorer_answers(self, context: dg.InitResourceContext) -> bool:
        from churn_assets.defs.ml import warm

        if not (self.warm_socket and self.warm_idle_seconds):
            return False
        probe = warm.connect(Path(self.warm_socket), self.store())
        if probe is not None:
            probe.close()
            return True
        if run_tags.is_continuous(context.run.tags):
            try:
                warm.spawn(
                    Path(self.warm_socket),
                    self.store(),
                    self.http_timeout,
                    self.http_retries,
                    self.warm_idle_seconds,
                    Path(self.warm_log or Path(self.warm_socket).with_suffix(".log")),
                )
            except OSError as exc:  # the run goes on: it loads the model itself
                context.log.warning(f"could not start the warm scorer: {exc}")
        return False

    def _configure(self) -> None:
        # MLflow's fluent API reads global state: pointed at this store for the run only.
        from churn_assets.defs.ml.registry import configured

        self._scope.enter_context(configured(self.store(), self.http_timeout, self.http_retries))
        # MLflow's modules join what the run keeps out of the garbage collector's full passes
        # (``WarehouseResource.setup_for_execution``): ~90,000 objects, 0.15 s of a training step at 1x.
        gc.freeze()

    def lightgbm_imported(self) -> None:
        """Once LightGBM is imported: in the background as the run started, when it trains."""
        if self._lightgbm is not None:
            self._lightgbm.result()

    def prepare_logging(self) -> Future:
        """Open the store and ready MLflow's model logging (``registry.prepare_logging``) in the
        background, on the run's setup worker: the training step starts it once it knows it
        trains, and takes the store (``opened``) once the model is trained. One thread opens the
        store and imports what logging imports: a new store is created (migrated) once, and no
        module is imported by two threads at once."""
        from churn_assets.defs.ml.registry import prepare_logging

        if self._setup is None:  # the warm scorer was to serve this run: MLflow is set up here too
            self._setup = ThreadPoolExecutor(1, thread_name_prefix="mlflow-setup")
            self._ready = self._setup.submit(self._configure)
        self._opened = self._setup.submit(self._open_for_logging)
        self._prepared = self._setup.submit(prepare_logging)
        return self._prepared

    def _open_for_logging(self):
        import mlflow.models  # noqa: F401 - what ``registry.log_and_register`` imports
        import mlflow.pyfunc  # noqa: F401

        return self.open()

    def opened(self):
        """(client, experiment id): the store ``prepare_logging`` opened, or opened now; a clear
        ``dg.Failure`` when it cannot be used."""
        return self._opened.result() if self._opened is not None else self.open()

    def _load_champion(self):
        from churn_assets.defs.ml import registry

        client, _ = self.open()
        alias = registry.version_by_alias(client, self.model_name, registry.CHAMPION)
        if alias is None:
            return None
        # A champion pickled by an earlier release fails to load here: the step migrates it.
        champion = client.get_model_version(self.model_name, str(alias.version))
        return champion, registry.load_model(self.model_name, str(champion.version))

    def warm_champion(self):
        """(version number, tags, model) of the champion as the warm scorer serves it, the model
        scoring through it and, should it fail mid-way, loaded in this run instead; None when no
        warm scorer serves this run (or it knows no champion)."""
        from churn_assets.defs.ml import warm

        if not self._use_warm:
            return None
        self._warm = warm.connect(Path(self.warm_socket), self.store())
        if self._warm is None:
            return None
        try:
            found = self._warm.champion()
        except warm.WarmScorerError:
            found = None
        if found is None:
            return None
        version, tags = found
        return version, tags, _WithFallback(self._warm.model(version), lambda: self.load_model(version))

    def load_model(self, version: str):
        """A version of the model loaded in this run (MLflow pointed at this store); a clear
        ``dg.Failure`` when it cannot be."""
        from churn_assets.defs.ml import registry

        self.open()
        try:
            return registry.load_model(self.model_name, version)
        except Exception as exc:  # noqa: BLE001
            raise load_failure(f"{self.model_name} version {version}", exc) from exc

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
        for future in (self._champion, self._prepared, self._opened, self._ready, self._lightgbm):
            # Not started: dropped. Started (a run that ended before scoring, e.g. refused): waited
            # for, so no thread of this run still migrates or reads the store once it is over
            # (MLflow's migrations and Dagster's share alembic's module state).
            if future is not None and not future.cancel():
                with contextlib.suppress(Exception):
                    future.result()
        self._champion = self._prepared = self._opened = self._ready = self._lightgbm = None
        if self._setup is not None:
            self._setup.shutdown(wait=False)
            self._setup = None
        self._use_warm = False
        try:
            if self._warm is not None:
                self._warm.close()
                self._warm = None
            if self._scope is not None:
                self._scope.close()
                self._scope = None
        finally:
            gc.unfreeze()  # after its background work: nothing of the run stays frozen

    def open(self):
        """(client, experiment id); a clear ``dg.Failure`` when the store cannot be used."""
        from churn_assets.defs.ml.registry import ModelStoreUnavailable, open_store

        if self._ready is None and self._scope is not None:  # the warm scorer was to serve this run
            self._configure()  # MLflow now, in this thread
            self._ready = Future()
            self._ready.set_result(None)
        if self._ready is not None:
            self._ready.result()  # MLflow imported and pointed at this store (setup_for_execution)
        try:
            return open_store(self.store())
        except ModelStoreUnavailable as exc:
            raise dg.Failure(description=str(exc), allow_retries=True) from exc


class _WithFallback:
    """A model scored by the warm scorer; if that fails mid-way, by the same version loaded here."""

    def __init__(self, remote, load):
        self.remote, self.load, self.local = remote, load, None

    def predict_polars(self, df):
        from churn_assets.defs.ml.warm import WarmScorerError

        if self.local is None:
            try:
                return self.remote.predict_polars(df)
            except WarmScorerError:
                self.local = self.load()
        return self.local.predict_polars(df)


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
    # Holdout customers beyond this: the metrics and the champion comparison are measured on a
    # stratified sample of this many (0 = all of them).
    eval_max_rows: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> ModelPolicyResource:
        values = {
            "retrain_min_new_rows": settings.retrain_min_new_rows,
            "promotion_tolerance": settings.promotion_tolerance,
            "train_max_rows": settings.train_max_rows,
            "eval_max_rows": settings.eval_max_rows,
        }
        return cls(**{**values, **overrides})
