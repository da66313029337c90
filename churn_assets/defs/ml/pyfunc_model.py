"""The code MLflow logs with every churn_model version ("models from code"): MLflow runs
this file to build the pyfunc, instead of unpickling an object. Keep it this small."""

import mlflow

from churn_assets.defs.ml.model import ChurnModel

mlflow.models.set_model(ChurnModel())
