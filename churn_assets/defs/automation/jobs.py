"""The one workflow of the seed: every asset, in dependency order, one run at a time."""

from __future__ import annotations

import dagster as dg

from churn_assets.settings import Settings

CYCLE_JOB = "churn_cycle"


def cycle_job(settings: Settings):
    return dg.define_asset_job(
        CYCLE_JOB,
        selection=dg.AssetSelection.all(),
        description="The whole loop: bronze -> silver -> gold -> dashboards, model retraining and scoring -> "
        "retention campaign.",
        tags={
            # Hard timeout, enforced by run monitoring (dagster.yaml): the run is stopped.
            "dagster/max_runtime": str(settings.max_runtime_seconds),
            # A run that failed on a transient fault is retried once, from the failed step.
            "dagster/max_retries": "1",
            "dagster/retry_strategy": "FROM_FAILURE",
        },
    )
