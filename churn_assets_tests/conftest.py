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


# The longest files first (estimated from what each runs: cycles in subprocesses, servers, kills):
# `--dist loadfile` hands files to the two workers in collection order, so the long ones start
# early and the short ones fill in at the end; the workers finish close together.
LONGEST_FIRST = (
    "test_first_contact.py",
    "test_crash_safety_changes.py",
    "test_crash_safety.py",
    "test_operations_e2e.py",
    "test_campaigns.py",
    "test_ui.py",
    "test_landing_files.py",
    "test_postgres_instance.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
