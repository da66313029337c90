"""Continuous mode's warm scorer (defs/ml/warm.py): a real process serving a real MLflow store
built by the real assets. It names the champion the registry names now, its probabilities are
those of the model loaded in the run, a run for new files scores through it without loading the
model, and a run that cannot reach it, or loses it mid-way, scores by itself."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest

from churn_assets import run_tags
from churn_assets.defs.ml import registry, warm
from churn_assets.defs.ml.registry import Store
from churn_assets.defs.ml.resources import PREDICTION
from churn_assets.defs.ml.scoring import _features_sql
from churn_assets.generator import generate_history, generate_increment
from churn_assets.settings import environment_scope
from churn_assets_tests.helpers import REPO, alive, load_defs, materialize, project_env, query

pytestmark = pytest.mark.slow  # trains a model through the assets, starts processes

AS_OF = "2026-11-01T01:00:00"
CONTINUOUS = {run_tags.TRIGGER: run_tags.LANDING_SENSOR}  # what the landing sensor tags its runs with
# What a run for new files materializes when retraining is not due: bronze -> gold, and scoring.
LANDING_RUN = dg.AssetSelection.assets(["gold", "churn_features"]).upstream() | dg.AssetSelection.assets(
    ["gold", "churn_prediction"]
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("warm")
    (home / "landing").mkdir()
    generate_history(home, customers=3_000, seed=17, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_prediction", as_of=AS_OF).success
    yield home
    # No scorer outlives the tests, whatever failed: each one logs its pid as it starts.
    log = home / "logs" / "warm-scorer.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("warm scorer ") and line.endswith(" starting"):
            stop(int(line.split()[2]))


def store_of(home: Path):
    return load_defs(home, AS_OF).resources["mlflow_store"]


def run(home: Path, as_of: str, selection=LANDING_RUN, tags: dict | None = None):
    """A run of the cycle job for ``selection``, named explicitly as the landing sensor names it."""
    defs = load_defs(home, as_of)
    keys = list(selection.resolve(defs.resolve_asset_graph()))
    result = defs.resolve_job_def("churn_cycle").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=keys, tags=tags or {}
    )
    assert result.success
    return result.asset_materializations_for_node("gold__churn_prediction")[0].metadata


def start(home: Path, idle: int = 120) -> tuple[Path, int]:
    """A warm scorer for ``home``, started as a run starts it; (socket, pid) once it answers."""
    res = store_of(home)
    sock = Path(res.warm_socket)
    # As a Dagster process started in the background can have it: SIGTERM ignored (Dagster gives
    # SIGTERM SIGINT's disposition, and `&` ignores SIGINT; this suite's workers had it so when
    # run by CI). The scorer still stops on it (stop).
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with environment_scope(**project_env(home, AS_OF)):
            pid = warm.spawn(sock, res.store(), 10, 1, idle, home / "logs" / "warm-scorer.log")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert pid
    answers(home)
    return sock, pid


def answers(home: Path) -> None:
    """Until the warm scorer answers (a socket file alone may be one a killed scorer left)."""
    res = store_of(home)
    deadline = time.time() + 90
    while (client := warm.connect(Path(res.warm_socket), res.store())) is None:
        assert time.time() < deadline, (home / "logs" / "warm-scorer.log").read_text()[-2000:]
        time.sleep(0.1)
    client.close()


def stop(pid: int) -> None:
    """SIGTERM, as `kill` or a process manager sends it; fails if the scorer outlives it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + 20
    while alive({pid}):
        if time.time() > deadline:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return  # it exited at this very moment
            signals = [line for line in status.splitlines() if line.startswith(("Sig", "Shd", "State"))]
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"warm scorer {pid} outlived SIGTERM by 20 s: {signals}")
        time.sleep(0.1)


def gone(sock: Path, what: str) -> None:
    deadline = time.time() + warm.CHECK_SECONDS * 3
    while warm.running(sock):
        assert time.time() < deadline, what
        time.sleep(0.2)


def local(home: Path, version: str):
    """(the champion's version, ``version`` loaded here), as a run without the warm scorer loads it."""
    res = store_of(home)
    with environment_scope(**project_env(home, AS_OF)), registry.configured(res.store(), 10, 1):
        client, _ = registry.open_store(res.store())
        champion = registry.version_by_alias(client, res.model_name, registry.CHAMPION)
        return (str(champion.version) if champion else None), registry.load_model(res.model_name, version)


def features(home: Path):
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.sql(f"{_features_sql()} ORDER BY user_id").pl()
    finally:
        con.close()


def test_it_names_the_champion_and_scores_exactly_as_the_run_would(trained):
    sock, pid = start(trained)
    store = store_of(trained).store()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # this user only
        assert warm.spawn(sock, store, 10, 1, 60, trained / "logs" / "warm-scorer.log") is None  # one per home
        client = warm.connect(sock, store)
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
        meta = run(trained, "2026-11-02T01:00:00")
        assert meta["scored_by"].value == "warm scorer" and meta["scoring_mode"].value == "incremental"
        assert meta["customers_scored"].value > 0
        rows = query(trained, "SELECT user_id, churn_probability, model_version FROM gold.churn_prediction ORDER BY 1")
        df = features(trained)
        assert [r[0] for r in rows] == df["user_id"].to_list()
        assert np.array_equal(np.array([r[1] for r in rows]), model.predict_polars(df))
        assert {r[2] for r in rows} == {"1"}

        # A run that also trains scores by itself (a new champion's full rescoring stays in it).
        with_training = LANDING_RUN | dg.AssetSelection.assets(["ml", "churn_model"], ["ml", "churn_model_champion"])
        assert run(trained, "2026-11-02T01:00:00", with_training)["scored_by"].value == "this run"

        # The alias moved (a promotion, or by hand in the MLflow UI): the next answer follows it.
        with environment_scope(**project_env(trained, AS_OF)), registry.configured(store, 10, 1):
            mlflow = store.client()
            current = registry.version_by_alias(mlflow, store.model_name, registry.CHAMPION)
            one = mlflow.get_model_version(store.model_name, str(current.version))
            new = mlflow.create_model_version(store.model_name, one.source, run_id=one.run_id, tags=one.tags)
            mlflow.set_registered_model_alias(store.model_name, registry.CHAMPION, new.version)
        client = warm.connect(sock, store)
        assert client.champion()[0] == str(new.version)
        client.close()
        meta = run(trained, "2026-11-02T01:00:00")
        assert (meta["scored_by"].value, meta["model_version"].value, meta["scoring_mode"].value) == (
            "warm scorer",
            str(new.version),
            "full",  # a new version scores everyone
        )
        assert query(trained, "SELECT DISTINCT model_version FROM gold.churn_prediction") == [(str(new.version),)]
        # Its socket removed (e.g. the home cleared): it stops, and the next run scores by itself.
        sock.unlink()
        gone(sock, "a warm scorer outlived its socket")
        meta = run(trained, "2026-11-02T01:00:00")
        assert (meta["scored_by"].value, meta["model_version"].value) == ("this run", str(new.version))
    finally:
        stop(pid)


def test_it_dies_mid_way_and_the_run_loads_the_same_version_itself(trained):
    sock, pid = start(trained)
    res = store_of(trained)
    # What a run for new files gives its resources: an explicit selection that scores, no training.
    context = SimpleNamespace(
        run=SimpleNamespace(asset_selection={PREDICTION}, step_keys_to_execute=None, tags={}), log=None
    )
    res.setup_for_execution(context)
    try:
        version, _, model = res.warm_champion()
        stop(pid)
        assert sock.exists()  # a killed one's socket stays, and refuses (once the kernel has closed it)
        deadline = time.time() + 5
        while (client := warm.connect(sock, res.store())) is not None:
            client.close()
            assert time.time() < deadline, "a killed scorer's socket still takes connections"
            time.sleep(0.05)
        df = features(trained)
        expected = local(trained, version)[1].predict_polars(df)
        assert np.array_equal(model.predict_polars(df), expected)
        assert model.local is not None  # loaded in this run, through the resource's own store
    finally:
        res.teardown_after_execution(context)
        stop(pid)


def test_a_continuous_mode_run_starts_it_for_the_runs_after_it(trained):
    sock = Path(store_of(trained).warm_socket)
    assert not warm.running(sock)
    generate_increment(trained, fraction=0.02)
    meta = run(trained, "2026-11-03T01:00:00", tags=CONTINUOUS)
    assert meta["scored_by"].value == "this run"  # it started one, and scored meanwhile by itself
    answers(trained)
    assert warm.running(sock)
    generate_increment(trained, fraction=0.02)
    assert run(trained, "2026-11-03T02:00:00", tags=CONTINUOUS)["scored_by"].value == "warm scorer"

    # A scorer started for another MLflow store (or by other code) stops at the first question.
    other = store_of(trained).store()
    other = Store(other.tracking_uri, other.artifact_root, other.experiment, "another_model")
    client = warm.connect(sock, other)
    with pytest.raises(warm.WarmScorerError, match="another MLflow store"):
        client.champion()
    client.close()
    gone(sock, "a warm scorer of another store kept serving")
    assert not sock.exists()

    # With none alive, a run without the continuous tag (hourly) scores by itself and starts none.
    assert run(trained, "2026-11-03T02:00:00")["scored_by"].value == "this run"
    assert not warm.running(sock)


def test_it_stops_when_idle(trained):
    sock, pid = start(trained, idle=1)
    deadline = time.time() + warm.CHECK_SECONDS * 3
    while sock.exists():
        assert time.time() < deadline, "an idle warm scorer did not stop"
        time.sleep(0.2)
    gone(sock, "an idle warm scorer did not stop")
    stop(pid)


def test_a_run_it_scores_for_imports_neither_the_model_nor_pandas(trained):
    # What keeps continuous mode's runs short: MLflow and LightGBM stay in the scorer, and pandas
    # (0.5 s; pyarrow's pa.array imports it on first use) stays out of bronze. In a fresh process,
    # as a run worker is.
    sock, pid = start(trained)
    try:
        generate_increment(trained, fraction=0.02)
        code = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from churn_assets_tests.test_warm_scorer import CONTINUOUS, run\n"
            f"meta = run(Path({str(trained)!r}), '2026-11-05T01:00:00', tags=CONTINUOUS)\n"
            "heavy = [m for m in ('pandas', 'mlflow', 'lightgbm', 'sklearn') if m in sys.modules]\n"
            "print(json.dumps([meta['scored_by'].value, meta['customers_scored'].value, heavy]))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
        )
        assert out.returncode == 0, out.stderr[-3000:]
        scored_by, scored, heavy = json.loads(out.stdout.strip().splitlines()[-1])
        assert scored_by == "warm scorer" and scored > 0
        assert heavy == []
    finally:
        stop(pid)
