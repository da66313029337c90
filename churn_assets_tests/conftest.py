"""Fixtures: a temporary CHURN_HOME, and no developer's real settings or secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def _no_real_env(monkeypatch):
    # Tests never read a developer's real settings or secrets.
    from churn_assets.settings import Settings

    for env, _, _ in Settings.reference():
        if env != "XDG_CACHE_HOME":
            monkeypatch.delenv(env, raising=False)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
