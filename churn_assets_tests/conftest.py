"""Fixtures: a temporary CHURN_HOME, and no developer's real settings or secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# One fixed e-mail pseudonym key for the whole session (module fixtures included): the
# warehouses of two homes, a story and its fresh load, compare equal. Key-file tests unset it.
TEST_PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="session", autouse=True)
def _test_pseudonym_key():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHURN_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
        yield


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    # Tests never read a developer's real settings or secrets.
    from churn_assets.settings import Settings

    for env, _, _ in Settings.reference():
        if env not in ("XDG_CACHE_HOME", "CHURN_PSEUDONYM_KEY"):
            monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("CHURN_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def small_home(tmp_path_factory) -> Path:
    """A data root with landing files of 2,000 customers (history ending 2025-06-30)."""
    from churn_assets_tests.helpers import CHURN, REPO, clean_env

    home = tmp_path_factory.mktemp("first") / "data"
    subprocess.run(
        [*CHURN, "generate", "--customers", "2000", "--end", "2025-06-30", "--quiet"],
        env=clean_env(CHURN_HOME=str(home)),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return home


@pytest.fixture(scope="session")
def project(tmp_path_factory, small_home) -> Path:
    """A project folder as after `scripts/demo` (small data): the venv, the project files and
    ./data with one cycle run by `churn demo`. test_first_contact.py's commands run in it and
    test_ui.py opens `churn ui` on it (one demo for both: the two files share a test worker)."""
    from churn_assets_tests.helpers import REPO, VENV_BIN, clean_env

    root = tmp_path_factory.mktemp("project")
    for name in (".venv", "pyproject.toml", "churn_assets", "workspace.yaml", "scripts"):
        (root / name).symlink_to(REPO / name)
    shutil.copytree(small_home / "landing", root / "data" / "landing")
    shutil.copytree(small_home / "generator", root / "data" / "generator")
    env = clean_env(CHURN_HOME=str(root / "data"), CHURN_SETTLE_SECONDS="0")
    out = subprocess.run(
        [str(VENV_BIN / "churn"), "demo"], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return root


# The longest files first (ranked by the CI runs' --durations, 2026-11-24): `--dist loadfile`
# hands files to the workers in collection order, so the long ones start early and the short
# ones fill in at the end; the workers finish close together. scripts/test passes
# --no-loadscope-reorder: by default xdist re-sorts the files by their number of tests, which
# started a one-test file of 2.5 minutes (test_operations_e2e.py) last. Unlisted files count as short.
LONGEST_FIRST = (
    "test_spark_engine.py",  # one cluster: a whole cycle over Spark Connect, a driver here, a worker killed: 6-11 min
    "test_first_contact.py",  # the demo, the README's examples; then test_ui.py on its worker (below)
    "test_crash_safety_changes.py",  # a kill and a rerun per test
    "test_crash_safety.py",
    "test_operations_e2e.py",  # one test: the live webserver and daemon, 1.3-2 min alone, 4 under load
    "test_campaigns.py",
    "test_postgres_instance.py",  # a PostgreSQL server, `dg launch` with the multiprocess executor
    "test_model_lifecycle.py",
    "test_warm_scorer.py",  # a model trained, four scorer processes started: 2-3 min
    "test_landing_files.py",
    "test_one_writer.py",
    "test_scoring_incremental.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


# Files whose tests share a session fixture, run by one worker (scripts/test's `--dist loadfile`
# otherwise gives each file to any worker, and each would build the fixture): test_ui.py opens
# `churn ui` on the demo project test_first_contact.py builds, not on a cycle of its own.
# Its tests run after that file's (collection order, LONGEST_FIRST): the group is one work unit.
SAME_WORKER = {"test_ui.py": "test_first_contact.py"}
# xdist hands a worker its next file while the current one still has tests to run (two left,
# and a worker starts its last test only once it has the next): that file waits behind them.
# Behind one of these long tests (2-4 min under the suite's load) it is a short file, from the
# queue's end, not the next long one (a file of 4 min once waited behind the Spark engine's
# killed-worker test and the suite took 13 min 15 s instead of 11 min 3 s).
LONG_LAST_TESTS = (
    "test_spark_engine.py::test_exactly_once_rerun_copy_increment_and_a_killed_worker",
    "test_operations_e2e.py::test_cadence_switching_landing_sensor_alerts_and_one_writer",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            folder, _, name = path.rpartition("/")
            return f"{folder}/{SAME_WORKER[name]}" if name in SAME_WORKER else path

        def _assign_work_unit(self, node) -> None:
            left = [n for unit in self.assigned_work.get(node, {}).values() for n, done in unit.items() if not done]
            if len(self.workqueue) > 1 and any(n.endswith(LONG_LAST_TESTS) for n in left):
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._assign_work_unit(node)

    return SharedFixtureFiles(config, log)
