"""Model lifecycle: train and register a challenger, gate it, promote it only when it is
better, score every customer with the champion loaded from the registry."""

import io
import time
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl

from churn_assets.metadata import markdown_table, shareable_example, table_metadata
from churn_assets.defs.ml.features import FEATURES, LABEL, load_features, to_model_frame
from churn_assets.defs.ml.resources import MLflowResource, ModelPolicyResource
from churn_assets.resources import PipelineSettingsResource, WarehouseResource
from churn_assets.warehouse import registered, scalar, transaction

MODEL_KEY = dg.AssetKey(["ml", "churn_model"])
# MLflow, LightGBM and scikit-learn are imported inside the steps that use them: every
# run and every sensor tick loads this module, and they cost ~2 s to import.


class TrainConfig(dg.Config):
    """Run config of a training step; the defaults are what every scheduled cycle uses."""

    num_boost_round: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    force: bool = False  # train even when the retrain policy says not yet
    # Share of training labels shuffled on purpose: a deliberately worse challenger, to
    # see the promotion gate at work. Never set by the schedule.
    shuffle_labels_fraction: float = 0.0


def _importance_png(importance) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    top = importance.head(13).iloc[::-1]
    ax.barh(top["feature"], top["gain"], color="#4C78A8")
    ax.set_title("churn_model: feature importance (gain)")
    ax.set_xlabel("total gain")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _landed_rows(con) -> int:
    return int(scalar(con, "SELECT coalesce(sum(rows_loaded), 0) FROM bronze.ingest_manifest") or 0)


@dg.asset(
    key=MODEL_KEY,
    deps=[["gold", "churn_features"]],
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
) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.train import best_threshold, evaluate, feature_importance, train

    client, experiment_id = mlflow_store.open()
    with warehouse.get_connection() as con:
        landed = _landed_rows(con)
        latest_ingest = scalar(con, "SELECT max(ingested_at) FROM bronze.ingest_manifest")
        df = load_features(con)
    latest = client.search_model_versions(f"name = '{mlflow_store.model_name}'", order_by=["version_number DESC"], max_results=1)
    since = landed - int(latest[0].tags.get("landed_rows", 0)) if latest else landed
    if latest and not config.force and since < model_policy.retrain_min_new_rows:
        return dg.MaterializeResult(
            metadata={"trained": False, "reason": f"{since} new rows since version {str(latest[0].version)}, "
                      f"retraining at {model_policy.retrain_min_new_rows}", "model_version": ""}
        )
    t0 = time.perf_counter()
    train_df, hold_df = df.filter(~pl.col("is_holdout")), df.filter(pl.col("is_holdout"))
    labels = train_df[LABEL].to_numpy().astype(int)
    if config.shuffle_labels_fraction > 0:
        rng = np.random.default_rng(0)
        idx = np.flatnonzero(rng.random(len(labels)) < config.shuffle_labels_fraction)
        labels[idx] = rng.permutation(labels[idx])
    params = {"learning_rate": config.learning_rate, "num_leaves": config.num_leaves}
    model = train(to_model_frame(train_df), labels, params, config.num_boost_round)
    hold_x, hold_y = to_model_frame(hold_df), hold_df[LABEL].to_numpy().astype(int)
    proba = model.predict_proba(hold_x)
    threshold = best_threshold(hold_y, proba)
    metrics = evaluate(hold_y, proba, threshold)
    importance = feature_importance(model)
    png = _importance_png(importance)
    as_of = pipeline_settings.as_of_datetime()
    fingerprint = {
        "data.rows": str(len(df)), "data.rows_train": str(len(train_df)), "data.rows_holdout": str(len(hold_df)),
        "data.as_of": as_of.isoformat(), "data.latest_ingest": str(latest_ingest),
        "data.landed_rows": str(landed), "dagster.run_id": context.run.run_id,
    }
    version, run_id = registry.log_and_register(
        mlflow_store.store(), experiment_id, model,
        metrics=metrics,
        params={**model.params, "num_boost_round": model.num_boost_round, "features": ",".join(FEATURES),
                "shuffle_labels_fraction": config.shuffle_labels_fraction, "threshold": round(threshold, 6)},
        tags=fingerprint, threshold=threshold, importance_png=png, input_example=shareable_example(hold_x.head(5)),
    )
    client.set_model_version_tag(mlflow_store.model_name, version, "landed_rows", str(landed))
    client.set_registered_model_alias(mlflow_store.model_name, registry.CHALLENGER, version)
    took = time.perf_counter() - t0
    context.log.info(f"churn_model v{version}: holdout ROC AUC {metrics['holdout_roc_auc']:.4f} in {took:.1f}s")
    return dg.MaterializeResult(
        metadata={
            "trained": True,
            "model_version": version,
            "mlflow_run_id": run_id,
            **{k: dg.MetadataValue.float(v) for k, v in metrics.items()},
            "threshold": dg.MetadataValue.float(threshold),
            "rows_train": len(train_df),
            "rows_holdout": len(hold_df),
            "training_seconds": dg.MetadataValue.float(round(took, 2)),
            "feature_importance": dg.MetadataValue.md(markdown_table(pl.from_pandas(importance.head(13)))),
        }
    )


def _latest_model_metadata(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(MODEL_KEY)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@dg.asset_check(
    asset=churn_model,
    blocking=True,
    description="The new model's holdout ROC AUC is at least the policy's floor (0.55): a model no better "
    "than chance is never considered for promotion.",
)
def churn_model_better_than_chance(context: dg.AssetCheckExecutionContext, model_policy: ModelPolicyResource) -> dg.AssetCheckResult:
    meta = _latest_model_metadata(context.instance)
    if not meta.get("trained"):
        return dg.AssetCheckResult(passed=True, description="no new model this run")
    auc = float(meta["holdout_roc_auc"])
    return dg.AssetCheckResult(
        passed=auc >= model_policy.min_auc,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"holdout_roc_auc": auc, "floor": model_policy.min_auc, "model_version": meta["model_version"]},
    )


def _holdout_auc(model_name: str, version: str, frame, labels) -> float:
    from sklearn.metrics import roc_auc_score

    from churn_assets.defs.ml import registry

    return float(roc_auc_score(labels, registry.load_model(model_name, version).predict(frame)))


@dg.asset(
    key=["ml", "churn_model_champion"],
    deps=[MODEL_KEY],
    group_name="ml",
    kinds={"mlflow"},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    description="Champion / challenger: the new version gets the alias 'champion' only if its holdout ROC AUC, "
    "scored now from the registry on the current holdout, is not worse than the current champion's on the same "
    "rows (within the policy's tolerance); otherwise it keeps 'challenger'. The first model becomes champion.",
)
def churn_model_champion(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    mlflow_store: MLflowResource,
    model_policy: ModelPolicyResource,
) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry

    client, experiment_id = mlflow_store.open()
    name = mlflow_store.model_name
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    if champion is not None:
        # A champion of an earlier release (a cloudpickle) is migrated, never unpickled.
        migrated = registry.ensure_not_pickled(client, mlflow_store.store(), experiment_id, str(champion.version),
                                               context.log)
        champion = client.get_model_version(name, migrated)
    candidate = _latest_model_metadata(context.instance).get("model_version") or ""
    if not candidate or "decision" in client.get_model_version(name, candidate).tags:
        return dg.MaterializeResult(metadata={"decision": "no new candidate", "champion_version": str(champion.version) if champion else ""})
    with warehouse.get_connection() as con:
        hold = load_features(con).filter(pl.col("is_holdout"))
    frame, labels = to_model_frame(hold), hold[LABEL].to_numpy().astype(int)
    challenger_auc = _holdout_auc(name, candidate, frame, labels)
    champion_auc = _holdout_auc(name, str(champion.version), frame, labels) if champion else None
    promote = challenger_auc >= model_policy.min_auc and registry.decide(challenger_auc, champion_auc, model_policy.promotion_tolerance)
    decision = "promoted" if promote else "kept challenger"
    for key, value in {
        "decision": decision,
        "challenger_holdout_roc_auc": f"{challenger_auc:.6f}",
        "champion_holdout_roc_auc": "" if champion_auc is None else f"{champion_auc:.6f}",
        "compared_with_version": str(champion.version) if champion else "",
        "holdout_rows": str(len(hold)),
    }.items():
        client.set_model_version_tag(name, candidate, key, value)
    if promote:
        client.set_registered_model_alias(name, registry.CHAMPION, candidate)
        client.delete_registered_model_alias(name, registry.CHALLENGER)
    now_champion = candidate if promote else str(champion.version)
    context.log.info(f"churn_model v{candidate}: {decision} (challenger {challenger_auc:.4f} vs champion {champion_auc})")
    return dg.MaterializeResult(
        metadata={
            "decision": decision,
            "challenger_version": candidate,
            "challenger_holdout_roc_auc": dg.MetadataValue.float(challenger_auc),
            "champion_holdout_roc_auc": dg.MetadataValue.float(champion_auc) if champion_auc is not None else dg.MetadataValue.text("none (first model)"),
            "previous_champion_version": str(champion.version) if champion else "",
            "champion_version": now_champion,
            "tolerance": model_policy.promotion_tolerance,
        }
    )


@dg.asset(
    key=["gold", "churn_prediction"],
    deps=[["gold", "churn_features"], ["ml", "churn_model_champion"]],
    group_name="gold",
    kinds={"duckdb", "mlflow"},
    pool="duckdb_warehouse",
    # A remote MLflow store is a network dependency: a transient fault retries the step.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    description="Every customer of gold.churn_features scored by models:/churn_model@champion, loaded from the "
    "registry (so a champion from an earlier run serves): churn probability, predicted label at the threshold "
    "chosen on the holdout, model name and version, scoring time. Replaced whole, only after scoring succeeded.",
)
def churn_prediction(context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow_store: MLflowResource) -> dg.MaterializeResult:
    from churn_assets.defs.ml import registry

    client, experiment_id = mlflow_store.open()
    name = mlflow_store.model_name
    try:
        champion = registry.version_by_alias(client, name, registry.CHAMPION)
        if champion is None:
            raise dg.Failure(description=f"no '{registry.CHAMPION}' version of {name} in the registry yet: nothing to score with")
        migrated = registry.ensure_not_pickled(client, mlflow_store.store(), experiment_id, str(champion.version),
                                               context.log)
        champion = client.get_model_version(name, migrated)
        threshold = float(champion.tags["threshold"])
        model = registry.load_model(name, str(champion.version))
    except dg.Failure:
        raise
    except Exception as exc:  # noqa: BLE001
        raise dg.Failure(
            description=f"could not load {name}@{registry.CHAMPION} from the MLflow store "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); previous predictions left untouched",
            allow_retries=True,
        ) from exc
    with warehouse.get_connection() as con:
        df = load_features(con, with_label=False)
        t0 = time.perf_counter()
        proba = model.predict(to_model_frame(df))
        took = time.perf_counter() - t0
        out = pl.DataFrame(
            {
                "user_id": df["user_id"],
                "churn_probability": proba,
                "churn_prediction": (proba >= threshold).astype(np.int32),
            }
        ).with_columns(
            model_name=pl.lit(name), model_version=pl.lit(str(champion.version)),
            scored_at=pl.lit(datetime.now(timezone.utc).replace(tzinfo=None)),
        )
        with transaction(con), registered(con, "_scored", out):
            con.execute("CREATE OR REPLACE TABLE gold.churn_prediction AS SELECT * FROM _scored")
        at_risk = scalar(con, "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1")
        metadata = table_metadata(con, "gold.churn_prediction")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "model_version": str(champion.version),
            "threshold": dg.MetadataValue.float(threshold),
            "customers_at_risk": at_risk,
            "scoring_rows_per_second": dg.MetadataValue.float(round(len(df) / took if took else 0.0, 1)),
        }
    )


assets = [churn_model, churn_model_champion, churn_prediction]
asset_checks = [churn_model_better_than_chance]
