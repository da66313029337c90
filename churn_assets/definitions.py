"""The Dagster code location: every asset, check, job and resource of churn_assets."""


import dagster as dg

from churn_assets.bronze import assets as bronze
from churn_assets.campaigns import assets as campaigns
from churn_assets.dashboards import assets as dashboards
from churn_assets.gold import assets as gold
from churn_assets.ml import assets as ml
from churn_assets.resources import default_resources
from churn_assets.silver import assets as silver

churn_cycle = dg.define_asset_job(
    "churn_cycle",
    selection=dg.AssetSelection.all(),
    description="The whole loop: bronze -> silver -> gold -> dashboards, model retraining and scoring -> retention campaign.",
)

defs = dg.Definitions(
    assets=[*bronze.assets, *silver.assets, *gold.assets, *ml.assets, *dashboards.assets, *campaigns.assets],
    asset_checks=[*gold.asset_checks, *ml.asset_checks],
    jobs=[churn_cycle],
    resources=default_resources(),
    # One DuckDB file, one writer: the steps of a run share one process, so they
    # never contend for the file lock (and start without a subprocess each).
    executor=dg.in_process_executor,
)
