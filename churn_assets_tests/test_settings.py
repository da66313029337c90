"""One place for every setting: read when asked, each problem one line, the README's table."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from churn_assets.settings import Settings, SettingsError
from churn_assets_tests.helpers import REPO


def test_defaults_and_derived_paths(tmp_path):
    s = Settings.load({"CHURN_HOME": str(tmp_path)})
    assert s.home == tmp_path and s.warehouse_path == tmp_path / "warehouse.duckdb"
    assert s.dagster_home == tmp_path / "dagster_home" and s.mlflow_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert (s.settle_seconds, s.batch_bytes, s.executor, s.campaign_max_messages) == (
        2.0,
        268435456,
        "in_process",
        1000,
    )
    other = Settings.load(
        {
            "CHURN_HOME": str(tmp_path),
            "DAGSTER_HOME": str(tmp_path / "elsewhere"),
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "CHURN_SETTLE_SECONDS": "0.5",
        }
    )
    assert other.dagster_home == tmp_path / "elsewhere" and other.mlflow_uri == "http://mlflow:5000"
    assert other.settle_seconds == 0.5


def test_every_bad_value_is_one_line_with_its_fix():
    env = {
        "CHURN_EXECUTOR": "foo",
        "CHURN_SETTLE_SECONDS": "soon",
        "CHURN_BATCH_BYTES": "-1",
        "CHURN_DUCKDB_MEMORY_LIMIT": "lots",
        "CHURN_AS_OF": "2023-13-45",
        "CHURN_CAMPAIGN_MAX_MESSAGES": "1.5",
    }
    with pytest.raises(SettingsError) as info:
        Settings.load(env)
    assert info.value.problems == [
        "CHURN_SETTLE_SECONDS='soon' is not a number: set a number (see the README's settings), or unset it",
        "CHURN_BATCH_BYTES='-1' is negative: set a value >= 0, or unset it",
        "CHURN_DUCKDB_MEMORY_LIMIT='lots' is not a memory size: use e.g. 3GB or 512MB, or unset it",
        "CHURN_EXECUTOR='foo' is not a known value: use in_process or multiprocess, or unset it",
        "CHURN_CAMPAIGN_MAX_MESSAGES='1.5' is not a whole number: set a whole number (see the README's settings), "
        "or unset it",
        "CHURN_AS_OF='2023-13-45' is not an ISO date or date-time (e.g. 2023-06-10 or 2023-06-10T12:00:00): fix it, "
        "or unset it for now",
    ]


def test_a_secret_is_never_shown_and_reaches_resources_as_its_variable():
    with pytest.raises(SettingsError) as info:
        Settings.load({"SLACK_BOT_TOKEN": "xoxb-secret", "CHURN_EXECUTOR": "xoxb-not-secret"})
    assert "xoxb-secret" not in str(info.value)
    s = Settings.load({"ANTHROPIC_API_KEY": "sk-real"})
    assert isinstance(s.secret("anthropic_api_key"), dg.EnvVar) and "sk-real" not in repr(s.secret("anthropic_api_key"))
    assert Settings.load({}).secret("anthropic_api_key") is None


def test_read_when_asked_not_at_import(monkeypatch, tmp_path):
    monkeypatch.setenv("CHURN_HOME", str(tmp_path / "a"))
    first = Settings.load().home
    monkeypatch.setenv("CHURN_HOME", str(tmp_path / "b"))
    assert (first, Settings.load().home) == (tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("CHURN_TEST_KILL_AT", "after_commit:2")
    assert Settings.read_one("test_kill_at") == "after_commit:2"


def test_the_readme_table_is_the_settings():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert Settings.markdown_table() in readme
    assert len(Settings.reference()) == readme.count("\n| `", readme.index("## Settings"), readme.index("Nothing else"))


def test_duckdb_memory_follows_the_machine_unless_set(tmp_path):

    from churn_assets.resources import WarehouseResource
    from churn_assets.settings import duckdb_memory_for
    from churn_assets.warehouse import connect

    gib = 2**30
    # An eighth of the machine's memory, 1 GiB at least, 16 GiB at most.
    assert [duckdb_memory_for(n * gib) for n in (4, 24, 64, 512)] == ["1024MiB", "3072MiB", "8192MiB", "16384MiB"]
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    unset = Settings.load({"CHURN_HOME": str(tmp_path)})
    assert unset.duckdb_memory_limit is None and unset.duckdb_memory == duckdb_memory_for(machine)
    resource = WarehouseResource.from_settings(unset)
    assert resource.memory_limit == unset.duckdb_memory
    con = connect(tmp_path / "w.duckdb", memory_limit=resource.memory_limit)
    limit = con.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    # DuckDB shows the limit rounded, in its own units (e.g. "2.9 GiB" for 3,013 MiB).
    shown = float(limit.split()[0]) * {"MiB": 1, "GiB": 1024}[limit.split()[1]]
    assert abs(shown - int(unset.duckdb_memory.removesuffix("MiB"))) < 60
    # Where it spills beyond the limit: beside the warehouse file, under the data home.
    assert con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0] == str(tmp_path / "w.duckdb.tmp")
    con.close()
    assert Settings.load({"CHURN_DUCKDB_MEMORY_LIMIT": "2GB"}).duckdb_memory == "2GB"


def test_openmp_threads_sleep_while_waiting_unless_chosen(monkeypatch):
    from churn_assets.settings import environment_with

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # The processes `churn` starts (webserver, daemon, run workers) get it; nothing running is changed.
    assert environment_with(X="1")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert environment_with()["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice
