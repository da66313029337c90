"""Fixtures: a temporary CHURN_HOME, and no developer's real settings or secrets."""

from __future__ import annotations

import os
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


# The longest files first (ranked by the CI runs' --durations, 2026-11-24): `--dist loadfile`
# hands files to the workers in collection order, so the long ones start early and the short
# ones fill in at the end; the workers finish close together. scripts/test passes
# --no-loadscope-reorder: by default xdist re-sorts the files by their number of tests, which
# started a one-test file of 2.5 minutes (test_operations_e2e.py) last. Unlisted files count as short.
LONGEST_FIRST = (
    "test_spark_engine.py",  # a cluster started, the sample on both engines, a worker killed: 5-11 min
    "test_spark_connect.py",  # a cluster of its own, a Spark Connect server, one whole cycle: 4-8 min
    "test_first_contact.py",  # the demo, the README's examples, `churn ui`
    "test_crash_safety_changes.py",  # a kill and a rerun per test
    "test_crash_safety.py",
    "test_operations_e2e.py",  # one test: the live webserver and daemon, 2-2.5 min
    "test_campaigns.py",
    "test_postgres_instance.py",  # a PostgreSQL server, `dg launch` with the multiprocess executor
    "test_ui.py",
    "test_model_lifecycle.py",
    "test_landing_files.py",
    "test_one_writer.py",
    "test_scoring_incremental.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
