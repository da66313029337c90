"""Retraining, MLflow tracking and registry, champion/challenger, scoring: with a real
DuckDB file and a real MLflow store (SQLite, as embedded by default)."""

from __future__ import annotations

import gc
from datetime import date

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from churn_assets.defs.ml.resources import MLflowResource, ModelPolicyResource
from churn_assets.generator import generate_history, generate_increment
from churn_assets.settings import Settings
from churn_assets_tests.helpers import materialize, one, query

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

AS_OF = "2026-11-01T12:00:00"
SHUFFLE_ALL = {"ops": {"ml__churn_model": {"config": {"shuffle_labels_fraction": 1.0}}}}


def client(home) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def metadata(result, key: str) -> dict:
    return {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }.get(key, {})


def predictions(home) -> list[tuple]:
    return query(
        home,
        "SELECT user_id, churn_probability, churn_prediction, model_version "
        "FROM gold.churn_prediction ORDER BY user_id",
    )


def test_retrain_policy_counts_new_rows_since_the_last_version():
    from churn_assets.defs.ml.policy import retrain_decision

    assert retrain_decision(500, None, 0, 10_000).train  # no model yet
    skip = retrain_decision(12_000, "3", 5_000, 10_000)
    assert not skip.train and skip.reason == "7000 new rows since version 3, retraining at 10000"
    assert retrain_decision(15_000, "3", 5_000, 10_000).train  # exactly the threshold
    assert retrain_decision(5_000, "3", 5_000, 10_000, force=True).train
    assert retrain_decision(5_000, "3", 5_000, 0).train  # 0: every cycle
    # Every cycle whatever the store holds: even after a rebuilt warehouse landed fewer rows than
    # the last version counted (the step then trains without asking the store first).
    assert retrain_decision(3_000, "3", 5_000, 0).train


def test_promotion_needs_the_floor_and_the_champion_within_tolerance():
    from churn_assets.defs.ml.policy import promote

    assert promote(0.70, None, 0.0, 0.55)  # the first model
    assert not promote(0.54, None, 0.0, 0.55)  # no better than chance, even with no champion
    assert promote(0.795, 0.80, 0.01, 0.55) and not promote(0.785, 0.80, 0.01, 0.55)
    assert promote(0.80, 0.80, 0.0, 0.55)


def test_label_shuffling_permutes_a_share_of_the_labels():
    import numpy as np

    from churn_assets.defs.ml.train import shuffle_labels

    labels = (np.arange(10_000) % 3 == 0).astype(int)
    same = shuffle_labels(labels, 0.0)
    assert same is not labels and (same == labels).all()
    half = shuffle_labels(labels, 0.5)
    assert half.sum() == labels.sum()  # a permutation: the churn rate is kept
    assert 0.15 < (half != labels).mean() < 0.35  # ~half the rows drawn, of which ~4/9 change label
    assert (shuffle_labels(labels, 0.5) == half).all()  # the same every run
    assert (labels == (np.arange(10_000) % 3 == 0)).all()  # the input is left alone


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A warehouse with one cycle run: champion v1 serving."""
    home = tmp_path_factory.mktemp("ml")
    generate_history(home, customers=30_000, seed=13, end=date(2026, 11, 1), progress=False)
    result = materialize(home, as_of=AS_OF)
    assert result.success
    return home, result


def test_first_model_is_tracked_registered_and_champion(trained):
    home, result = trained
    meta = metadata(result, "ml/churn_model")
    assert meta["trained"] is True and meta["model_version"] == "1"
    # Generated data carries the reference's label rule: learnable like the reference (0.79 there).
    assert meta["holdout_roc_auc"] >= 0.76
    c = client(home)
    champion = c.get_model_version_by_alias("churn_model", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["decision"] == "promoted"
    run = c.get_run(champion.run_id)
    for metric in (
        "holdout_roc_auc",
        "holdout_pr_auc",
        "holdout_f1",
        "holdout_precision",
        "holdout_recall",
        "holdout_log_loss",
    ):
        assert metric in run.data.metrics
    assert abs(run.data.metrics["holdout_roc_auc"] - meta["holdout_roc_auc"]) < 1e-9
    assert {"num_leaves", "learning_rate", "num_boost_round", "threshold"} <= set(run.data.params)
    assert run.data.tags["data.as_of"] == "2026-11-01T12:00:00"
    assert int(run.data.tags["data.rows"]) == one(home, "SELECT count(*) FROM gold.churn_features")
    assert run.data.tags["data.latest_ingest"] != "None"
    artifacts = {a.path for a in c.list_artifacts(champion.run_id)}
    assert "feature_importance.png" in artifacts
    model_info = mlflow.models.get_model_info(f"models:/churn_model/{champion.version}")
    assert model_info.signature is not None and model_info.saved_input_example_info is not None
    assert [i.name for i in model_info.signature.inputs][:3] == ["canal", "country", "platform"]
    # The holdout is a deterministic hash split: ~20 % of customers, the same every retrain.
    assert 0.18 < meta["rows_holdout"] / (meta["rows_holdout"] + meta["rows_train"]) < 0.22


def test_every_customer_scored_by_the_champion(trained):
    home, _ = trained
    scored = one(home, "SELECT count(*) FROM gold.churn_prediction")
    assert scored == one(home, "SELECT count(*) FROM gold.churn_features")
    assert one(home, "SELECT count(DISTINCT user_id) FROM gold.churn_prediction") == scored
    assert (
        one(home, "SELECT count(*) FROM gold.churn_features f ANTI JOIN gold.churn_prediction p USING (user_id)") == 0
    )
    assert query(home, "SELECT DISTINCT model_name, model_version FROM gold.churn_prediction") == [("churn_model", "1")]
    threshold = float(client(home).get_model_version("churn_model", "1").tags["threshold"])
    assert (
        one(
            home,
            "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction <> (churn_probability >= ?)::INT",
            [threshold],
        )
        == 0
    )
    assert 0 < one(home, "SELECT avg(churn_prediction) FROM gold.churn_prediction") < 1


def test_no_better_than_chance_challenger_is_blocked(trained):
    home, _ = trained
    before = predictions(home)
    result = materialize(home, "ml/churn_model+", as_of=AS_OF, run_config=SHUFFLE_ALL, raise_on_error=False)
    meta = metadata(result, "ml/churn_model")
    assert meta["trained"] is True and meta["holdout_roc_auc"] < 0.55
    check = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert check["churn_model_better_than_chance"] is False
    # Blocked: neither promotion nor scoring ran; the champion and its predictions stay.
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "ml/churn_model_champion" not in materialized
    assert client(home).get_model_version_by_alias("churn_model", "champion").version == 1
    assert predictions(home) == before


def test_worse_challenger_keeps_the_old_champion(trained):
    home, _ = trained
    # 40 % of labels shuffled: above the chance floor, below the champion.
    config = {"ops": {"ml__churn_model": {"config": {"shuffle_labels_fraction": 0.4, "num_boost_round": 60}}}}
    result = materialize(home, "ml/churn_model+", as_of=AS_OF, run_config=config)
    challenger = metadata(result, "ml/churn_model")["model_version"]
    decision = metadata(result, "ml/churn_model_champion")
    assert decision["decision"] == "kept challenger"
    assert 0.55 <= decision["challenger_holdout_roc_auc"] < decision["champion_holdout_roc_auc"]
    c = client(home)
    assert c.get_model_version_by_alias("churn_model", "champion").version == 1
    assert c.get_model_version_by_alias("churn_model", "challenger").version == int(challenger)
    tags = c.get_model_version("churn_model", challenger).tags
    assert tags["decision"] == "kept challenger" and tags["compared_with_version"] == "1"
    assert float(tags["champion_holdout_roc_auc"]) == pytest.approx(decision["champion_holdout_roc_auc"])
    assert query(home, "SELECT DISTINCT model_version FROM gold.churn_prediction") == [("1",)]


def test_above_the_holdout_cap_both_models_are_measured_on_the_same_sample(trained):
    """CHURN_EVAL_MAX_ROWS below the holdout: the challenger's metrics and the champion's score in
    the comparison come from the one stratified sample of the holdout (``features.load_holdout``)."""
    import duckdb

    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.features import load_holdout
    from churn_assets.defs.ml.scoring import holdout

    home, _ = trained
    config = {"ops": {"ml__churn_model": {"config": {"shuffle_labels_fraction": 0.4, "num_boost_round": 60}}}}
    # A challenger is never promoted here (its tolerance asks for 1.0 more AUC): on 2,000 customers a
    # worse model can score above the champion, and the tests after this one meet the same champion.
    policy = ModelPolicyResource.from_settings(Settings(), eval_max_rows=2_000, promotion_tolerance=-1.0)
    result = materialize(home, "ml/churn_model+", as_of=AS_OF, run_config=config, model_policy=policy)
    trained_meta, decision = metadata(result, "ml/churn_model"), metadata(result, "ml/churn_model_champion")
    assert trained_meta["rows_holdout_available"] > 4_000 and abs(trained_meta["rows_holdout"] - 2_000) <= 1
    assert decision["decision"] == "kept challenger" and decision["champion_version"] == "1", decision
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        sample, everyone = holdout(con, 2_000), holdout(con)
        assert len(load_holdout(con, 2_000)) == trained_meta["rows_holdout"] == len(sample[1])
    finally:
        con.close()
    c = client(home)
    tags = c.get_model_version("churn_model", trained_meta["model_version"]).tags
    assert int(tags["holdout_rows"]) == trained_meta["rows_holdout"]
    # The champion was scored on the sample, not on the whole holdout.
    champion = str(decision["previous_champion_version"])
    on_sample = registry.score_auc("churn_model", champion, *sample)
    assert decision["champion_holdout_roc_auc"] == pytest.approx(on_sample, abs=1e-12)
    assert registry.score_auc("churn_model", champion, *everyone) != pytest.approx(on_sample, abs=1e-6)
    # And the challenger's AUC, as its training measured it, is its score on that same sample.
    on_sample = registry.score_auc("churn_model", trained_meta["model_version"], *sample)
    assert trained_meta["holdout_roc_auc"] == pytest.approx(on_sample, abs=1e-9)


def test_better_challenger_is_promoted_and_serves(trained):
    home, _ = trained
    generate_increment(home, fraction=0.05)
    config = {"ops": {"ml__churn_model": {"config": {"num_boost_round": 200}}}}
    policy = ModelPolicyResource.from_settings(Settings(), promotion_tolerance=0.01)
    result = materialize(home, as_of=AS_OF, run_config=config, model_policy=policy)
    assert result.success
    version = metadata(result, "ml/churn_model")["model_version"]
    assert metadata(result, "ml/churn_model_champion")["decision"] == "promoted"
    assert client(home).get_model_version_by_alias("churn_model", "champion").version == int(version)
    assert query(home, "SELECT DISTINCT model_version FROM gold.churn_prediction") == [(version,)]
    # The champion loaded as the run started was the old one: the new one was loaded instead.
    assert metadata(result, "gold/churn_prediction")["champion_prefetched"] is False


def test_retrain_policy_skips_training_but_still_scores(trained):
    home, _ = trained
    champion = str(client(home).get_model_version_by_alias("churn_model", "champion").version)
    versions = len(client(home).search_model_versions("name = 'churn_model'"))
    policy = ModelPolicyResource.from_settings(Settings(), retrain_min_new_rows=10**9)
    result = materialize(home, as_of=AS_OF, model_policy=policy)
    assert result.success
    assert metadata(result, "ml/churn_model")["trained"] is False
    assert metadata(result, "ml/churn_model_champion")["decision"] == "no new candidate"
    assert len(client(home).search_model_versions("name = 'churn_model'")) == versions
    assert metadata(result, "gold/churn_prediction")["model_version"] == champion
    # Nothing changed the champion during the run: the one loaded in the background scored.
    assert metadata(result, "gold/churn_prediction")["champion_prefetched"] is True
    # The run kept what it found loaded out of the garbage collector's passes; nothing stays so.
    assert gc.get_freeze_count() == 0


def test_an_experiment_created_meanwhile_by_another_thread_is_the_experiment(tmp_path, monkeypatch):
    """A first run's champion prefetch and its training step both open the new store: the one that
    looks up the experiment, finds none, and then cannot create it (the other just did) uses the
    other's (CI once failed on "Experiment(name=churn) already exists")."""
    from churn_assets.defs.ml import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = registry.Store(uri, str(tmp_path / "artifacts"), "churn", "churn_model")
    created = MlflowClient(tracking_uri=uri).create_experiment("churn")  # by "the other thread"
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet_then_found(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)  # looked up before the other created it

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet_then_found)
    _, experiment_id = registry.open_store(store)
    assert experiment_id == created and calls == ["churn", "churn"]


def test_training_against_an_unreachable_store_fails_clearly(trained, tmp_path):
    """The step asks the store nothing before it trains (every cycle retrains by default): the
    store's failure comes when it registers, as the same clear error, retried."""
    home, _ = trained
    resource = MLflowResource.from_settings(
        Settings(), tracking_uri="http://127.0.0.1:9", artifact_root=str(tmp_path), http_timeout=2, http_retries=0
    )
    result = materialize(home, "ml/churn_model", as_of=AS_OF, raise_on_error=False, mlflow_store=resource)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "ml__churn_model"
    message = failure.step_failure_data.user_failure_data.description
    assert "MLflow store at http://127.0.0.1:9 is unreachable or corrupt" in message
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("store", ["unreachable", "corrupt"])
def test_broken_store_fails_clearly_and_leaves_predictions(trained, tmp_path, store):
    home, _ = trained
    before = predictions(home)
    if store == "unreachable":
        resource = MLflowResource.from_settings(
            Settings(), tracking_uri="http://127.0.0.1:9", artifact_root=str(tmp_path), http_timeout=2, http_retries=0
        )
    else:
        bad = tmp_path / "mlflow.db"
        bad.write_bytes(b"this is not a database" * 100)
        resource = MLflowResource.from_settings(
            Settings(), tracking_uri=f"sqlite:///{bad}", artifact_root=str(tmp_path)
        )
    result = materialize(home, "gold/churn_prediction", as_of=AS_OF, raise_on_error=False, mlflow_store=resource)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "MLflow store at" in message and "unreachable or corrupt" in message and "nothing was changed" in message
    assert predictions(home) == before
    assert gc.get_freeze_count() == 0  # a failed run leaves nothing frozen either


def test_only_a_run_that_scores_loads_the_champion_as_it_starts():
    """The MLflow resource loads the champion in the background for a run with the scoring step:
    the whole job, a selection with it (the UI, sensors), or ``dg.materialize`` of assets with
    it (which names steps, not assets); a training-only run does not pay for it."""
    import dagster as dg

    from churn_assets.defs.ml.resources import run_executes, run_scores

    def run(assets=None, steps=None):
        return dg.DagsterRun(job_name="churn_cycle", asset_selection=assets, step_keys_to_execute=steps)

    prediction, model = dg.AssetKey(["gold", "churn_prediction"]), dg.AssetKey(["ml", "churn_model"])
    assert run_scores(run())  # the whole job
    assert run_scores(run(assets=frozenset({prediction, model})))
    assert not run_scores(run(assets=frozenset({model})))
    assert run_scores(run(assets=frozenset(), steps=["gold__churn_features", "gold__churn_prediction"]))
    assert not run_scores(run(assets=frozenset(), steps=["ml__churn_model"]))
    assert run_scores(None)
    # A re-execution of the training step alone keeps its parent's asset selection: its steps say.
    assert not run_scores(run(assets=frozenset({prediction, model}), steps=["ml__churn_model"]))
    # LightGBM is imported as the run starts only where the run trains.
    assert run_executes(run(assets=frozenset({model})), model)
    assert not run_executes(run(assets=frozenset({prediction})), model)
    assert run_executes(run(assets=frozenset(), steps=["ml__churn_model"]), model)
