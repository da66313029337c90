"""The model: retraining in MLflow, champion/challenger, scoring; with the resources only it uses."""

import dagster as dg

from churn_assets.defs.ml.assets import asset_checks, assets
from churn_assets.defs.ml.resources import MLflowResource, ModelPolicyResource
from churn_assets.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.load()
    return dg.Definitions(
        assets=assets,
        asset_checks=asset_checks,
        resources={
            "mlflow_store": MLflowResource.from_settings(settings),
            "model_policy": ModelPolicyResource.from_settings(settings),
        },
    )
