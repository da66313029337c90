"""The code MLflow logs with every churn_model version ("models from code"): MLflow runs
this file to build the pyfunc, instead of unpickling an object. Keep it this small.

Dagster's loader imports it too (every module under ``defs/``), under its package name;
MLflow runs it under a name of its own. Only MLflow's run builds the model: loading the
code location does not import MLflow."""

if __name__ != "churn_assets.defs.ml.pyfunc_model":
    import mlflow

    from churn_assets.defs.ml.model import ChurnModel

    mlflow.models.set_model(ChurnModel())
