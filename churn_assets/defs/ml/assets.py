"""Model lifecycle: train and register a challenger, gate it, promote it only when it is
better, score every customer with the champion loaded from the registry.

The steps only wire resources to the logic: training and its numbers in ``train.py``, when to
retrain and promote in ``policy.py``, the plot in ``report.py``, every MLflow read and write in
``registry.py``, scoring in ``scoring.py``. MLflow and LightGBM are imported inside
the steps that use them: every run and every sensor tick loads this module, and they cost ~2 s.
"""

import contextlib
import time

import dagster as dg

from churn_assets.defs.gold.assets import churn_features
from churn_assets.defs.ml.features import FEATURES, landed_rows, latest_ingest, load_training
from churn_assets.defs.ml.policy import (
    RetrainDecision,
    better_than_chance,
    promote,
    retrain_decision,
    trains_every_cycle,
)
from churn_assets.defs.ml.resources import MLflowResource, ModelPolicyResource, load_failure
from churn_assets.engine import EngineResource
from churn_assets.metadata import shareable_example, table_metadata
from churn_assets.resources import PipelineSettingsResource, WarehouseResource


@contextlib.contextmanager
def gold_reader(warehouse: WarehouseResource, engine: EngineResource):
    """Where the model reads gold: the DuckDB connection, or on Spark the engine's cursor (the
    same SQL, transpiled and run on the cluster; see ``defs/ml/spark.py``)."""
    if engine.is_spark:
        yield engine.cursor()
    else:
        with warehouse.get_connection() as con:
            yield con


class TrainConfig(dg.Config):
    """Run config of a training step; the defaults are what every scheduled cycle uses."""

    num_boost_round: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    force: bool = False  # train even when the retrain policy says not yet
    # Share of training labels shuffled on purpose: a deliberately worse challenger, to
    # see the promotion gate at work. Never set by the schedule.
    shuffle_labels_fraction: float = 0.0


@dg.asset(
    key=["ml", "churn_model"],
    deps=[churn_features],
    group_name="ml",
    kinds={"lightgbm", "mlflow"},
    description="Trains LightGBM on gold.churn_features (label churn), logs the run to MLflow (parameters, "
    "holdout metrics, feature importance, data fingerprint) and registers the model as churn_model with the "
    "alias 'challenger'. The holdout is the customers whose md5(user_id) % 100 < 20, the same every retrain.",
)
def churn_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    warehouse: WarehouseResource,
    mlflow_store: MLflowResource,
    model_policy: ModelPolicyResource,
    pipeline_settings: PipelineSettingsResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry, report
    from churn_assets.defs.ml.train import train_on

    if engine.is_spark:
        from churn_assets.defs.ml.spark import landed_and_latest

        landed, ingested = landed_and_latest(engine)
    else:
        with warehouse.get_connection() as con:
            landed, ingested = landed_rows(con), latest_ingest(con)
    if trains_every_cycle(model_policy.retrain_min_new_rows, config.force):
        # Nothing to ask the store yet: it is opened in the background while the rows load and
        # LightGBM trains (``MLflowResource.prepare_logging``), and used to register.
        due = RetrainDecision(True, "")
    else:
        client, _ = mlflow_store.open()
        latest = registry.latest_version(client, mlflow_store.model_name)
        due = retrain_decision(
            landed,
            str(latest.version) if latest else None,
            int(latest.tags.get(registry.LANDED_ROWS, 0)) if latest else 0,
            model_policy.retrain_min_new_rows,
            config.force,
        )
    if not due.train:
        return dg.MaterializeResult(metadata={"trained": False, "reason": due.reason, "model_version": ""})
    t0 = time.perf_counter()
    prepared = mlflow_store.prepare_logging()  # while the rows load and LightGBM trains
    with gold_reader(warehouse, engine) as con:
        data = load_training(con, model_policy.train_max_rows, model_policy.eval_max_rows)
    params = {"learning_rate": config.learning_rate, "num_leaves": config.num_leaves}
    mlflow_store.lightgbm_imported()
    trained = train_on(data.frame, params, config.num_boost_round, config.shuffle_labels_fraction)
    client, experiment_id = mlflow_store.opened()
    fingerprint = {
        "data.rows": str(data.rows),
        "data.rows_train": str(trained.rows_train),
        "data.rows_train_available": str(data.rows_train_available),
        registry.ROWS_HOLDOUT: str(len(trained.holdout)),
        "data.rows_holdout_available": str(data.rows_holdout_available),
        "data.as_of": pipeline_settings.as_of_datetime().isoformat(),
        "data.latest_ingest": str(ingested),
        "data.landed_rows": str(landed),
        registry.DAGSTER_RUN_TAG: context.run.run_id,
        "data.engine": engine.name,
    }
    model = trained.model
    version, run_id, metrics, threshold = registry.log_and_register(
        mlflow_store.store(),
        experiment_id,
        model,
        measure=trained.measure,  # the holdout is scored while MLflow logs the model
        prepared=prepared,
        params={
            **model.params,
            "num_boost_round": model.num_boost_round,
            "features": ",".join(FEATURES),
            "shuffle_labels_fraction": config.shuffle_labels_fraction,
        },
        tags=fingerprint,
        importance_png=report.importance_png(trained.importance),
        input_example=shareable_example(trained.holdout_example),
    )
    registry.mark_challenger(client, mlflow_store.model_name, version, landed)
    took = time.perf_counter() - t0
    context.log.info(f"churn_model v{version}: holdout ROC AUC {metrics['holdout_roc_auc']:.4f} in {took:.1f}s")
    return dg.MaterializeResult(
        metadata={
            "trained": True,
            "model_version": version,
            "mlflow_run_id": run_id,
            **{k: dg.MetadataValue.float(v) for k, v in metrics.items()},
            "threshold": dg.MetadataValue.float(threshold),
            "rows_train": trained.rows_train,
            "rows_train_available": data.rows_train_available,
            "rows_holdout": len(trained.holdout),
            "rows_holdout_available": data.rows_holdout_available,
            "training_seconds": dg.MetadataValue.float(round(took, 2)),
            "feature_importance": dg.MetadataValue.md(report.importance_markdown(trained.importance)),
        }
    )


@dg.asset_check(
    asset=churn_model,
    blocking=True,
    description="The new model's holdout ROC AUC is at least the policy's floor (0.55): a model no better "
    "than chance is never considered for promotion.",
)
def churn_model_better_than_chance(
    context: dg.AssetCheckExecutionContext, mlflow_store: MLflowResource, model_policy: ModelPolicyResource
) -> dg.AssetCheckResult:
    from churn_assets.defs.ml import registry

    # The training step's own result, as registered: the challenger it set and the AUC its run logged.
    client, _ = mlflow_store.open()
    challenger = registry.version_by_alias(client, mlflow_store.model_name, registry.CHALLENGER)
    if challenger is None or not registry.trained_in(client, challenger, context.run.run_id):
        return dg.AssetCheckResult(passed=True, description="no new model this run")
    auc = registry.holdout_auc_of(client, challenger)
    return dg.AssetCheckResult(
        passed=better_than_chance(auc, model_policy.min_auc),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"holdout_roc_auc": auc, "floor": model_policy.min_auc, "model_version": str(challenger.version)},
    )


@dg.asset(
    key=["ml", "churn_model_champion"],
    deps=[churn_model],
    group_name="ml",
    kinds={"mlflow"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    description="Champion / challenger: the new version gets the alias 'champion' only if its holdout ROC AUC "
    "(as its training measured it when this run trained it, else scored now from the registry) is not worse than "
    "the current champion's, scored now on the same rows (within the policy's tolerance); otherwise it keeps "
    "'challenger'. The first model becomes champion.",
)
def churn_model_champion(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow_store: MLflowResource,
    model_policy: ModelPolicyResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.scoring import holdout

    client, experiment_id = mlflow_store.open()
    name = mlflow_store.model_name
    champion = registry.current_champion(client, mlflow_store.store(), experiment_id, context.log)
    # The candidate is the version the training step left as challenger, until it is judged.
    challenger = registry.version_by_alias(client, name, registry.CHALLENGER)
    if challenger is None or registry.DECISION in challenger.tags:
        return dg.MaterializeResult(
            metadata={"decision": "no new candidate", "champion_version": str(champion.version) if champion else ""}
        )
    candidate = str(challenger.version)
    # Trained by this run: its holdout was scored on these very rows when it was trained (gold
    # does not change within a run), so that AUC stands; from an earlier run it is scored anew.
    fresh = registry.trained_in(client, challenger, context.run.run_id)
    frame = labels = None
    if champion or not fresh:
        with gold_reader(warehouse, engine) as con:
            frame, labels = holdout(con, model_policy.eval_max_rows)
    if fresh:
        challenger_auc, holdout_rows = registry.training_holdout(client, challenger)
    else:
        challenger_auc, holdout_rows = registry.score_auc(name, candidate, frame, labels), len(labels)
    champion_auc = registry.score_auc(name, str(champion.version), frame, labels) if champion else None
    promoted = promote(challenger_auc, champion_auc, model_policy.promotion_tolerance, model_policy.min_auc)
    decision = "promoted" if promoted else "kept challenger"
    registry.record_decision(
        client,
        name,
        candidate,
        {
            registry.DECISION: decision,
            "challenger_holdout_roc_auc": f"{challenger_auc:.6f}",
            "champion_holdout_roc_auc": "" if champion_auc is None else f"{champion_auc:.6f}",
            "compared_with_version": str(champion.version) if champion else "",
            "holdout_rows": str(holdout_rows),
        },
        promoted,
    )
    context.log.info(
        f"churn_model v{candidate}: {decision} (challenger {challenger_auc:.4f} vs champion {champion_auc})"
    )
    return dg.MaterializeResult(
        metadata={
            "decision": decision,
            "challenger_version": candidate,
            "challenger_holdout_roc_auc": dg.MetadataValue.float(challenger_auc),
            "champion_holdout_roc_auc": dg.MetadataValue.float(champion_auc)
            if champion_auc is not None
            else dg.MetadataValue.text("none (first model)"),
            "previous_champion_version": str(champion.version) if champion else "",
            "champion_version": candidate if promoted else str(champion.version),
            "tolerance": model_policy.promotion_tolerance,
        }
    )


def _threshold(tags: dict[str, str], name: str, version: str) -> float:
    """The champion's decision threshold (chosen on its holdout, kept as a tag of its version)."""
    try:
        return float(tags["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise dg.Failure(
            description=f"{name} version {version}, the champion, has no valid 'threshold' tag ({exc!r}); "
            "previous predictions left untouched"
        ) from exc


@dg.asset(
    key=["gold", "churn_prediction"],
    deps=[churn_features, churn_model_champion],
    group_name="gold",
    kinds={"duckdb", "mlflow"},
    pool="duckdb_warehouse",
    # A remote MLflow store is a network dependency: a transient fault retries the step.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    description="Every customer of gold.churn_features scored by models:/churn_model@champion, loaded from the "
    "registry (so a champion from an earlier run serves): churn probability, predicted label at the threshold "
    "chosen on the holdout, model name and version, scoring time, and the gold columns the prediction figures "
    "group by (country, canal, platform, creation month, total amount, order count, days since the last event). "
    "The same model scores again only the "
    "customers whose features changed (a features hash per row); a new model scores everyone. Written only after "
    "scoring succeeded.",
)
def churn_prediction(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow_store: MLflowResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.scoring import update_predictions

    name = mlflow_store.model_name
    # Continuous mode: the warm scorer names the champion and scores with it (defs/ml/warm.py;
    # never on Spark, where the resource has it off).
    served = mlflow_store.warm_champion()
    ready = None
    if served is not None:
        version, tags, model = served
    else:
        client, experiment_id = mlflow_store.open()
        try:
            ready = mlflow_store.prefetched_champion(client)
            champion, model = ready if ready else (None, None)
            if champion is None:
                champion = registry.current_champion(client, mlflow_store.store(), experiment_id, context.log)
            if champion is None:
                raise dg.Failure(
                    description=f"no '{registry.CHAMPION}' version of {name} in the registry yet: nothing to score with"
                )
            version, tags = str(champion.version), champion.tags
            if engine.is_spark:  # the driver fetches it for the executors, which load it (defs/ml/spark.py)
                from churn_assets.defs.ml.spark import spark_model

                model = spark_model(engine, name, version)
            else:
                model = model or registry.load_model(name, version)
        except dg.Failure:
            raise
        except Exception as exc:  # noqa: BLE001
            raise load_failure(f"{name}@{registry.CHAMPION}", exc) from exc
    threshold = _threshold(tags, name, version)
    if engine.is_spark:
        from churn_assets.defs.ml.spark import score_spark
        from churn_assets.timeutil import utcnow

        scored = score_spark(engine, model, threshold, name, version, utcnow())
        metadata = {"dagster/row_count": dg.MetadataValue.int(scored.rows_total), "engine": "spark"}
    else:
        with warehouse.get_connection() as con:
            scored = update_predictions(con, model, threshold, name, version)
            metadata = table_metadata(con, "gold.churn_prediction")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "model_version": version,
            "threshold": dg.MetadataValue.float(threshold),
            "customers_at_risk": scored.at_risk,
            # Who scored: continuous mode's warm scorer, or this run (the champion loaded in the
            # background as the run started, if it did not change since; else in this step).
            "scored_by": "warm scorer" if served is not None and model.local is None else "this run",
            "champion_prefetched": ready is not None,
            "scoring_rows_per_second": dg.MetadataValue.float(scored.rows_per_second),
            "scoring_mode": scored.mode,
            "customers_scored": scored.rows,
            "customers_removed": scored.rows_removed,
        }
    )


assets = [churn_model, churn_model_champion, churn_prediction]
asset_checks = [churn_model_better_than_chance]
