"""Continuous mode's warm scorer (defs/ml/warm.py): a real process serving a real MLflow store
built by the real assets. It names the champion the registry names now, its probabilities are
those of the model loaded in the run, a run scores through it without loading the model, and a
run that cannot reach it, or loses it mid-way, scores by itself."""

from __future__ import annotations

import os
import signal
import stat
import time
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from churn_assets.defs.ml import registry, warm
from churn_assets.defs.ml.resources import _WithFallback
from churn_assets.defs.ml.scoring import _features
from churn_assets.generator import generate_history, generate_increment
from churn_assets.settings import environment_scope
from churn_assets_tests.helpers import load_defs, materialize, project_env, query

pytestmark = pytest.mark.slow  # trains a model through the assets, starts processes

AS_OF = "2026-11-01T01:00:00"
CONTINUOUS = {"churn/trigger": "landing_sensor"}  # what the landing sensor tags its runs with
# What a run for new files materializes when retraining is not due: bronze -> gold, and scoring.
LANDING_RUN = dg.AssetSelection.assets(["gold", "churn_features"]).upstream() | dg.AssetSelection.assets(
    ["gold", "churn_prediction"]
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("warm")
    (home / "landing").mkdir()
    generate_history(home, customers=3_000, seed=17, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_prediction", as_of=AS_OF).success
    return home


def store_of(home: Path):
    return load_defs(home, AS_OF).resources["mlflow_store"]


def start(home: Path, idle: int = 120) -> tuple[Path, int]:
    """A warm scorer for ``home``, started as a run starts it; (socket, pid) once it answers."""
    res = store_of(home)
    sock = Path(res.warm_socket)
    with environment_scope(**project_env(home, AS_OF)):
        assert warm.spawn(sock, res.store(), 10, 1, idle, home / "logs" / "warm-scorer.log")
    answers(sock, home)
    serving = [line for line in (home / "logs" / "warm-scorer.log").read_text().splitlines() if " serving on " in line]
    pid = int(serving[-1].split()[2])
    return sock, pid


def answers(sock: Path, home: Path) -> None:
    """Until the warm scorer answers (a socket file alone may be one a killed scorer left)."""
    deadline = time.time() + 90
    while (client := warm.connect(sock)) is None:
        assert time.time() < deadline, (home / "logs" / "warm-scorer.log").read_text()[-2000:]
        time.sleep(0.1)
    client.close()


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def local(home: Path, version: str):
    """The version loaded here, as a run without the warm scorer loads it."""
    res = store_of(home)
    with environment_scope(**project_env(home, AS_OF)), registry.configured(res.store(), 10, 1):
        client, _ = registry.open_store(res.store())
        champion = registry.version_by_alias(client, res.model_name, registry.CHAMPION)
        return (str(champion.version) if champion else None), registry.load_model(res.model_name, version)


def features(home: Path):
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return _features(con)
    finally:
        con.close()


def test_it_names_the_champion_and_scores_exactly_as_the_run_would(trained):
    sock, pid = start(trained)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # this user only
        assert not warm.spawn(sock, store_of(trained).store(), 10, 1, 60, trained / "logs" / "w.log")  # one per home
        client = warm.connect(sock)
        version, tags = client.champion()
        alias, model = local(trained, version)
        assert version == alias == "1" and float(tags["threshold"]) > 0
        df = features(trained)
        assert len(df) > 1000
        served = client.model(version).predict_polars(df)
        assert np.array_equal(served, model.predict_polars(df))  # bit for bit
        assert 0 < served.min() < served.max() < 1
        client.close()

        # A run for new files scores through it: nothing of the model loaded in the run.
        generate_increment(trained, fraction=0.05)
        run = materialize(trained, LANDING_RUN, as_of="2026-11-02T01:00:00")
        meta = run.asset_materializations_for_node("gold__churn_prediction")[0].metadata
        assert meta["scored_by"].value == "warm scorer" and meta["scoring_mode"].value == "incremental"
        assert meta["customers_scored"].value > 0
        rows = query(trained, "SELECT user_id, churn_probability, model_version FROM gold.churn_prediction ORDER BY 1")
        df = features(trained)
        assert [r[0] for r in rows] == df["user_id"].to_list()
        assert np.array_equal(np.array([r[1] for r in rows]), model.predict_polars(df))
        assert {r[2] for r in rows} == {"1"}

        # The alias moved (a promotion, or by hand in the MLflow UI): the next answer follows it.
        res = store_of(trained)
        with environment_scope(**project_env(trained, AS_OF)), registry.configured(res.store(), 10, 1):
            mlflow = res.store().client()
            one = mlflow.get_model_version(res.model_name, "1")
            two = mlflow.create_model_version(res.model_name, one.source, run_id=one.run_id, tags=one.tags)
            mlflow.set_registered_model_alias(res.model_name, registry.CHAMPION, two.version)
        client = warm.connect(sock)
        assert client.champion()[0] == "2"
        client.close()
        run = materialize(trained, "gold/churn_prediction", as_of="2026-11-02T01:00:00")
        meta = run.asset_materializations_for_node("gold__churn_prediction")[0].metadata
        assert (meta["scored_by"].value, meta["model_version"].value, meta["scoring_mode"].value) == (
            "warm scorer",
            "2",
            "full",  # a new version scores everyone
        )
        assert query(trained, "SELECT DISTINCT model_version FROM gold.churn_prediction") == [("2",)]

        # It dies between the champion and the scores: the run's model loads the same version itself.
        client = warm.connect(sock)
        version, _ = client.champion()
        stop(pid)
        fallback = _WithFallback(client.model(version), lambda: local(trained, version)[1])
        assert np.array_equal(fallback.predict_polars(df), model.predict_polars(df))
        assert fallback.local is not None
        client.close()

        # None answers (its socket left behind by the killed process): the run scores by itself.
        assert sock.exists() and warm.connect(sock) is None
        run = materialize(trained, "gold/churn_prediction", as_of="2026-11-02T01:00:00")
        meta = run.asset_materializations_for_node("gold__churn_prediction")[0].metadata
        assert (meta["scored_by"].value, meta["model_version"].value) == ("this run", "2")
    finally:
        stop(pid)


def test_a_continuous_mode_run_starts_it_for_the_runs_after_it(trained):
    sock = Path(store_of(trained).warm_socket)
    assert not warm.running(sock)
    generate_increment(trained, fraction=0.02)
    first = materialize(trained, LANDING_RUN, as_of="2026-11-03T01:00:00", tags=CONTINUOUS)
    meta = first.asset_materializations_for_node("gold__churn_prediction")[0].metadata
    assert meta["scored_by"].value == "this run"  # it started one, and scored meanwhile by itself
    assert warm.running(sock)
    answers(sock, trained)
    pid = int(
        [line for line in (trained / "logs" / "warm-scorer.log").read_text().splitlines() if " serving " in line][
            -1
        ].split()[2]
    )
    try:
        generate_increment(trained, fraction=0.02)
        second = materialize(trained, LANDING_RUN, as_of="2026-11-03T02:00:00", tags=CONTINUOUS)
        meta = second.asset_materializations_for_node("gold__churn_prediction")[0].metadata
        assert meta["scored_by"].value == "warm scorer"

        # With none alive, a run without the continuous tag (hourly) scores by itself and starts none.
        stop(pid)
        third = materialize(trained, "gold/churn_prediction", as_of="2026-11-03T02:00:00")
        assert (
            third.asset_materializations_for_node("gold__churn_prediction")[0].metadata["scored_by"].value == "this run"
        )
        assert not warm.running(sock)
    finally:
        stop(pid)


def test_one_started_before_an_upgrade_stops_at_the_first_run_after_it(trained, monkeypatch):
    sock, pid = start(trained)
    try:
        monkeypatch.setattr(warm, "code_fingerprint", lambda: "other-code")
        client = warm.connect(sock)
        with pytest.raises(warm.WarmScorerError, match="other code"):
            client.champion()
        client.close()
        deadline = time.time() + 30
        while warm.running(sock):
            assert time.time() < deadline, "a warm scorer of other code kept serving"
            time.sleep(0.2)
        assert not sock.exists()
    finally:
        stop(pid)


def test_it_stops_when_idle_or_when_its_socket_goes(trained):
    sock, pid = start(trained, idle=1)
    deadline = time.time() + warm.CHECK_SECONDS * 3
    while sock.exists():
        assert time.time() < deadline, "an idle warm scorer did not stop"
        time.sleep(0.2)
    assert not warm.running(sock)

    sock, pid = start(trained, idle=600)
    assert warm.running(sock)
    sock.unlink()  # e.g. the home was cleared
    deadline = time.time() + warm.CHECK_SECONDS * 3
    while warm.running(sock):
        assert time.time() < deadline, "a warm scorer outlived its socket"
        time.sleep(0.2)
    stop(pid)
