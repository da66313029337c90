"""churn_assets: a retailer's hourly churn cycle as Dagster software-defined assets."""

__version__ = "0.1.0"
