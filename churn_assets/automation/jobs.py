"""The one workflow of the seed: every asset, in dependency order, one run at a time."""

import dagster as dg

from churn_assets.automation.settings import Monitoring

_monitoring = Monitoring()

churn_cycle = dg.define_asset_job(
    "churn_cycle",
    selection=dg.AssetSelection.all(),
    description="The whole loop: bronze -> silver -> gold -> dashboards, model retraining and scoring -> retention campaign.",
    tags={
        # Hard timeout, enforced by run monitoring (dagster.yaml): the run is stopped.
        "dagster/max_runtime": str(_monitoring.max_runtime_seconds),
        # A run that failed on a transient fault is retried once, from the failed step.
        "dagster/max_retries": "1",
        "dagster/retry_strategy": "FROM_FAILURE",
    },
)
