"""The registered model is LightGBM text + JSON, never a pickle: what MLflow stores, how the
pipeline loads it, that it scores exactly like the booster trained in-process and like the
pickled model of earlier releases, and that such a pickled champion is migrated."""

from __future__ import annotations

import json
import logging
import pickle
import re
import tempfile
import warnings
from pathlib import Path

import cloudpickle
import duckdb
import mlflow
import numpy as np
import pytest
from mlflow.models import Model, infer_signature

from churn_assets.defs.ml import registry
from churn_assets.defs.ml.features import LABEL, load_features, to_model_frame
from churn_assets.defs.ml.model import ChurnModel
from churn_assets.defs.ml.report import importance_png
from churn_assets.defs.ml.resources import MLflowResource
from churn_assets.defs.ml.train import feature_importance, train
from churn_assets.settings import Settings
from churn_assets_tests.helpers import land_sample, materialize, needs_sample, query

pytestmark = [needs_sample, pytest.mark.slow]
NAME = "churn_model"
# Pickle protocol 2-5 streams start with PROTO (0x80) and the protocol number; 4 and 5 then FRAME (0x95).
PICKLE_HEADER = re.compile(rb"\A\x80[\x02-\x05]|\x80[\x04\x05]\x95")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The shared sample up to gold.churn_features, a model trained on it in-process, the store."""
    home = tmp_path_factory.mktemp("fmt")
    (home / "landing").mkdir()
    land_sample(home)
    assert materialize(home, "*gold/churn_features").success
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        df = load_features(con)
    finally:
        con.close()
    frame, labels = to_model_frame(df), df[LABEL].to_numpy().astype(int)
    model = train(frame, labels, num_boost_round=60)
    resource = MLflowResource.from_settings(
        Settings(),
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        artifact_root=str(home / "mlflow" / "artifacts"),
    )
    # MLflow's fluent calls (and pyfunc loads) in these tests use this store, as a run does.
    with registry.configured(resource.store(), resource.http_timeout, resource.http_retries):
        client, experiment_id = resource.open()
        yield home, resource, client, experiment_id, model, frame


def log_new(sample):
    home, resource, client, experiment_id, model, frame = sample
    version, *_ = registry.log_and_register(
        resource.store(),
        experiment_id,
        model,
        measure=lambda: ({"holdout_roc_auc": 0.7}, 0.5),
        params={"num_leaves": 31},
        tags={},
        importance_png=importance_png(feature_importance(model)),
        input_example=frame.head(5),
    )
    return version


def log_legacy(sample) -> str:
    """Exactly what releases before this change logged: the PythonModel object, cloudpickled."""
    home, resource, client, experiment_id, model, frame = sample
    with mlflow.start_run(experiment_id=experiment_id), tempfile.TemporaryDirectory() as tmp:
        booster, vocabulary = Path(tmp) / "booster.txt", Path(tmp) / "vocabulary.json"
        model.booster.save_model(str(booster))
        vocabulary.write_text(json.dumps(model.vocabulary))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ChurnModel(),
            artifacts={"booster": str(booster), "vocabulary": str(vocabulary)},
            signature=infer_signature(frame.head(5), model.predict_proba(frame.head(5))),
            input_example=frame.head(5),
            registered_model_name=NAME,
            pip_requirements=registry._requirements(),
        )
    version = str(info.registered_model_version)
    tags = {"threshold": "0.400000", "holdout_roc_auc": "0.700000", "decision": "promoted", "landed_rows": "123"}
    for key, value in tags.items():
        client.set_model_version_tag(NAME, version, key, value)
    return version


def pickles_in(model_dir: Path) -> list[str]:
    found = []
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.suffix in {".pkl", ".pickle"} or "pickle" in f.name or PICKLE_HEADER.search(data):
            found.append(str(f.relative_to(model_dir)))
    return found


def model_dir(version: str, tmp: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{version}", dst_path=str(tmp)))


def forbid_unpickling(monkeypatch):
    """Every unpickling entry point fails loudly (BaseException: no library swallows it)."""
    for module, fn in ((pickle, "load"), (pickle, "loads"), (cloudpickle, "load"), (cloudpickle, "loads")):
        monkeypatch.setattr(module, fn, lambda *a, **k: pytest.fail("something was unpickled"))


def test_the_detectors_catch_the_pickle_of_an_earlier_release(sample, tmp_path, monkeypatch):
    # The checks used below, on the old format: found by file name and by bytes...
    legacy = log_legacy(sample)
    assert "python_model.pkl" in pickles_in(model_dir(legacy, tmp_path))
    # ...and loading it under the guard fails.
    forbid_unpickling(monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="unpickled"):
        mlflow.pyfunc.load_model(f"models:/{NAME}/{legacy}")


def test_the_logged_model_holds_no_pickle_and_scores_like_the_trained_booster(sample, tmp_path, monkeypatch):
    home, resource, client, experiment_id, model, frame = sample
    logged = logging.getLogger("mlflow")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logged.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            version = log_new(sample)
    finally:
        logged.removeHandler(handler)
    # No deprecation of MLflow's, nothing about pickling or the PythonModel. (pandas' own
    # "Operation with range" FutureWarning, raised inside MLflow's example writer, is not ours.)
    ours = [
        (str(w.message), w.filename, w.lineno)
        for w in caught
        if "Operation with range" not in str(w.message)
        and (
            (issubclass(w.category, (DeprecationWarning, FutureWarning)) and "mlflow" in w.filename)
            or any(word in str(w.message) for word in ("pickle", "python_model", "type hints", "deprecated"))
        )
    ]
    assert ours == []
    assert not [r for r in records if "CloudPickle" in r.getMessage() or "pickle" in r.getMessage().lower()]

    directory = model_dir(version, tmp_path)
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    assert {"MLmodel", "artifacts/booster.txt", "artifacts/vocabulary.json"} <= set(files), files
    assert pickles_in(directory) == [], files
    # The pyfunc points at code, not at a pickled object (MLflow still notes cloudpickle's version).
    flavor = Model.load(str(directory)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert "python_model.pkl" not in (directory / "MLmodel").read_text()
    code = (Path(registry.__file__).parent / "pyfunc_model.py").read_text()
    assert (directory / "pyfunc_model.py").read_text() == code
    assert (directory / "artifacts" / "booster.txt").read_text().startswith("tree\n")
    assert json.loads((directory / "artifacts" / "vocabulary.json").read_text()) == model.vocabulary

    client.set_registered_model_alias(NAME, "champion", version)
    expected = model.predict_proba(frame)
    forbid_unpickling(monkeypatch)  # loading must not unpickle anything
    scorer = registry.load_model(NAME, version)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert np.array_equal(scorer.predict(frame), expected)
    assert np.array_equal(np.asarray(pyfunc.predict(frame)), expected)
    assert len(expected) == len(frame) == 450  # the sample's customers in gold.churn_features


def test_a_pickled_champion_is_migrated_and_scores_as_before(sample, tmp_path):
    home, resource, client, experiment_id, model, frame = sample
    legacy = log_legacy(sample)
    client.set_registered_model_alias(NAME, "champion", legacy)
    before = np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}/{legacy}").predict(frame))  # unpickles: the old way
    with pytest.raises(registry.PickledModel, match="never unpickled"):
        registry.load_model(NAME, legacy)

    result = materialize(home, "ml/churn_model_champion", mlflow_store=resource)
    assert result.success
    champion = client.get_model_version_by_alias(NAME, "champion")
    new = str(champion.version)
    assert new != legacy and champion.tags["migrated_from"] == legacy
    assert champion.tags["threshold"] == "0.400000" and champion.tags["landed_rows"] == "123"
    assert client.get_model_version(NAME, legacy).tags["migrated_to"] == new
    assert pickles_in(model_dir(new, tmp_path)) == []
    assert np.array_equal(registry.load_model(NAME, new).predict(frame), before)
    assert np.array_equal(before, model.predict_proba(frame))
    # Idempotent: asking again reuses the migration.
    assert registry.ensure_not_pickled(client, resource.store(), experiment_id, legacy) == new

    assert materialize(home, "gold/churn_prediction", mlflow_store=resource).success
    scored = query(home, "SELECT churn_probability, model_version FROM gold.churn_prediction ORDER BY user_id")
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        df = load_features(con, with_label=False).sort("user_id")
    finally:
        con.close()
    assert {v for _, v in scored} == {new}
    legacy_pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{legacy}")
    assert np.array_equal(np.array([p for p, _ in scored]), np.asarray(legacy_pyfunc.predict(to_model_frame(df))))


def test_the_run_gets_what_the_holdout_measured_while_the_model_was_logged(sample):
    """The holdout is measured in the caller's thread while MLflow logs the model in another: the
    run ends with those metrics and threshold; a measure that fails fails the run and the call."""
    home, resource, client, experiment_id, model, frame = sample
    version, run_id, metrics, threshold = registry.log_and_register(
        resource.store(),
        experiment_id,
        model,
        measure=lambda: ({"holdout_roc_auc": 0.71, "holdout_f1": 0.4}, 0.37),
        params={"num_leaves": 31},
        tags={"data.rows": "10"},
        importance_png=importance_png(feature_importance(model)),
        input_example=frame.head(5),
    )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"holdout_roc_auc": 0.71, "holdout_f1": 0.4} == metrics
    assert run.data.params["threshold"] == "0.37" and threshold == 0.37
    assert client.get_model_version(resource.model_name, version).tags["threshold"] == "0.370000"

    def failing():
        raise RuntimeError("holdout unreadable")

    versions = len(client.search_model_versions(f"name = '{resource.model_name}'"))
    with pytest.raises(RuntimeError, match="holdout unreadable"):
        registry.log_and_register(
            resource.store(),
            experiment_id,
            model,
            measure=failing,
            params={"num_leaves": 31},
            tags={},
            importance_png=importance_png(feature_importance(model)),
            input_example=frame.head(5),
        )
    (latest,) = client.search_runs([experiment_id], order_by=["start_time DESC"], max_results=1)
    assert latest.info.status == "FAILED" and "holdout_roc_auc" not in latest.data.metrics
    # No version without metrics: the registry's latest is still the one measured above.
    assert len(client.search_model_versions(f"name = '{resource.model_name}'")) == versions
