"""The Dagster code location: every asset, check, job, schedule, sensor and resource."""

import os

import dagster as dg

from churn_assets.automation import triggers
from churn_assets.automation.jobs import churn_cycle
from churn_assets.bronze import assets as bronze
from churn_assets.campaigns import assets as campaigns
from churn_assets.dashboards import assets as dashboards
from churn_assets.gold import assets as gold
from churn_assets.ml import assets as ml
from churn_assets.resources import default_resources
from churn_assets.silver import assets as silver


def executor() -> dg.ExecutorDefinition:
    """In-process by default: one DuckDB file, one writer, so the steps of a run share one
    process and never contend for the file lock (and start without a subprocess each).

    ``CHURN_EXECUTOR=multiprocess`` runs each step in its own process (isolation: a step
    that crashes or leaks memory takes only itself down), one at a time, because every
    step opens the single-writer DuckDB file. Steps can only run side by side once the
    warehouse is a server that takes concurrent writers (see the README).
    """
    if os.environ.get("CHURN_EXECUTOR", "in_process") == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": 1}, name="churn_multiprocess")
    return dg.in_process_executor


defs = dg.Definitions(
    assets=[*bronze.assets, *silver.assets, *gold.assets, *ml.assets, *dashboards.assets, *campaigns.assets],
    asset_checks=[*gold.asset_checks, *ml.asset_checks],
    jobs=[churn_cycle],
    schedules=triggers.schedules,
    sensors=triggers.sensors,
    resources=default_resources(),
    executor=executor(),
)
