"""The Dagster code location: every asset, check, job, schedule, sensor and resource."""

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

defs = dg.Definitions(
    assets=[*bronze.assets, *silver.assets, *gold.assets, *ml.assets, *dashboards.assets, *campaigns.assets],
    asset_checks=[*gold.asset_checks, *ml.asset_checks],
    jobs=[churn_cycle],
    schedules=triggers.schedules,
    sensors=triggers.sensors,
    resources=default_resources(),
    # One DuckDB file, one writer: the steps of a run share one process, so they
    # never contend for the file lock (and start without a subprocess each).
    executor=dg.in_process_executor,
)
