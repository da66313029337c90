"""Snapshot of the definitions: what a user sees in the asset graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from churn_assets.definitions import defs as load_defs
from churn_assets_tests.helpers import REPO

defs = load_defs()


def test_asset_graph_snapshot():
    graph = defs.resolve_asset_graph()
    got = {
        key.to_user_string(): (
            graph.get(key).group_name,
            sorted(graph.get(key).kinds),
            sorted(p.to_user_string() for p in graph.get(key).parent_keys),
        )
        for key in graph.get_all_asset_keys()
        if key.path[0] != "dashboard"
    }
    dashboard = {k.to_user_string() for k in graph.get_all_asset_keys() if k.path[0] == "dashboard"}
    assert dashboard == {
        f"dashboard/{name}"
        for name in (
            "kpis",
            "revenue_by_month",
            "churn_by_platform",
            "churn_by_gender",
            "revenue_by_channel",
            "predicted_churn_by_country",
            "predicted_churn_by_channel",
            "predicted_churn_by_tenure",
            "at_risk_customers",
            "data_quality_daily",
            "ingestion_daily",
            "layer_freshness",
            "alerts",
            "pipeline_runs",
            "page",
            "chart_previews",
        )
    }
    assert all(graph.get(dg.AssetKey(k.split("/"))).group_name == "dashboard" for k in dashboard)
    assert got == {
        "bronze/churn_users_bronze": ("bronze", ["duckdb", "python"], []),
        "bronze/churn_orders_bronze": ("bronze", ["duckdb", "python"], []),
        "bronze/churn_app_events": ("bronze", ["duckdb", "python"], []),
        "silver/churn_users": ("silver", ["duckdb"], ["bronze/churn_users_bronze"]),
        "silver/churn_orders": ("silver", ["duckdb"], ["bronze/churn_orders_bronze"]),
        "gold/churn_features": (
            "gold",
            ["duckdb"],
            ["bronze/churn_app_events", "silver/churn_orders", "silver/churn_users"],
        ),
        "ml/churn_model": ("ml", ["lightgbm", "mlflow"], ["gold/churn_features"]),
        "ml/churn_model_champion": ("ml", ["mlflow"], ["ml/churn_model"]),
        "gold/churn_prediction": ("gold", ["duckdb", "mlflow"], ["gold/churn_features", "ml/churn_model_champion"]),
        "campaigns/retention_messages": (
            "campaigns",
            ["anthropic", "duckdb"],
            ["gold/churn_features", "gold/churn_prediction", "silver/churn_orders", "silver/churn_users"],
        ),
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description


def test_triggers_and_automation_conditions_snapshot():
    """Every schedule and sensor with its default state, and which assets refresh on their own
    cadence (AutomationCondition): the dashboards, and nothing the predictions depend on."""
    triggers = {s.name: s.default_status.value for s in defs.schedules} | {
        s.name: s.default_status.value for s in defs.sensors
    }
    assert triggers == {
        "churn_hourly": "RUNNING",
        "churn_landing_sensor": "RUNNING",
        "churn_auto_cadence": "RUNNING",
        "churn_failure_alerts": "RUNNING",
        "churn_duration_alerts": "RUNNING",
        "churn_refresh_sensor": "RUNNING",
    }
    refresh = next(s for s in defs.sensors if s.name == "churn_refresh_sensor")
    assert isinstance(refresh, dg.AutomationConditionSensorDefinition)
    # Its runs queue behind any other (priority 0): a landing run never waits for a queued refresh.
    assert refresh.run_tags == {"churn/trigger": "automation_condition", "dagster/priority": "-1"}
    graph = defs.resolve_asset_graph()
    conditioned = {k for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    assert conditioned == {k for k in graph.get_all_asset_keys() if k.path[0] == "dashboard"}
    labels = {graph.get(k).automation_condition.get_label() for k in conditioned}
    assert labels == {
        "every */15 * * * *, once its inputs changed, not in progress",
        "after its figures, not in progress",
    }
    # Predictions never wait for a slow-moving asset: nothing upstream of them carries a condition.
    upstream = dg.AssetSelection.assets(["gold", "churn_prediction"]).upstream().resolve(graph)
    assert len(upstream) == 9 and not upstream & conditioned  # bronze, silver, gold, ml and itself


def test_cycle_job_covers_every_asset_and_runs_in_one_process():
    job = defs.resolve_job_def("churn_cycle")
    graph = defs.resolve_asset_graph()
    assert set(job.asset_layer.executable_asset_keys) == set(graph.get_all_asset_keys())
    assert job.executor_def.name == "in_process"


def test_network_steps_retry():
    graph = defs.resolve_asset_graph()
    campaign = defs.resolve_assets_def(dg.AssetKey(["campaigns", "retention_messages"]))
    assert campaign.op.retry_policy is not None and campaign.op.retry_policy.max_retries == 2
    assert graph.get(dg.AssetKey(["campaigns", "retention_messages"])).group_name == "campaigns"


def test_checks_and_blocking():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("bronze/churn_users_bronze", "correct_schema"),
        ("bronze/churn_users_bronze", "records_parseable"),
        ("bronze/churn_orders_bronze", "correct_schema"),
        ("bronze/churn_orders_bronze", "records_parseable"),
        ("bronze/churn_app_events", "correct_schema"),
        ("bronze/churn_app_events", "records_parseable"),
        ("silver/churn_users", "valid_keys"),
        ("silver/churn_orders", "valid_keys"),
        ("gold/churn_features", "churn_features_valid"),
        ("ml/churn_model", "churn_model_better_than_chance"),
        ("campaigns/retention_messages", "model_wrote_the_copy"),
    }
    # A degraded campaign warns; it does not stop the cycle.
    campaign = defs.resolve_assets_def(dg.AssetKey(["campaigns", "retention_messages"]))
    assert not any(spec.blocking for spec in campaign.check_specs)
    for name in ("churn_features_valid", "churn_model_better_than_chance"):
        check = next(c for c in defs.asset_checks if name in str(c.check_keys))
        assert all(spec.blocking for spec in check.check_specs), name


@pytest.mark.slow
def test_dg_check_defs(tmp_path):
    """The README's check, Dagster 1.13's current command (`dagster definitions validate` is superseded)."""
    dg_cli = Path(sys.executable).with_name("dg")
    out = subprocess.run(
        [str(dg_cli), "check", "defs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "PATH": str(dg_cli.parent),
            "CHURN_HOME": str(tmp_path),
            "HOME": str(tmp_path),
            "VIRTUAL_ENV": sys.prefix,
            "DAGSTER_DISABLE_TELEMETRY": "1",
        },
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "All definitions loaded successfully" in out.stderr + out.stdout
    assert "Warning" not in out.stderr + out.stdout, out.stderr[-2000:]


# Loaded by every run worker before its first step, and by every code server: Dagster imports
# every module under defs/. These are imported where they are used (the scoring step's MLflow
# and LightGBM in the background as its run starts: MLflowResource.setup_for_execution).
HEAVY = ("mlflow", "lightgbm", "sklearn", "scipy", "pandas", "polars", "anthropic", "pyspark", "sqlglot")


def test_loading_the_code_location_imports_no_heavy_library(tmp_path):
    code = (
        "import sys; from churn_assets.definitions import defs; d = defs(); "
        "assert d.resolve_job_def('churn_cycle'); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent), "CHURN_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
