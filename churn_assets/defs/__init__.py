"""The Dagster definitions, one folder per domain in the order the data flows
(loaded by ``churn_assets.definitions``)."""
