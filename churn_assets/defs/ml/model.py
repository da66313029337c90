"""The churn model as an MLflow pyfunc: plain columns in, churn probabilities out.

The LightGBM booster is stored as its own text format and the categorical vocabulary as
JSON, so the registered model needs no pickle of training-time objects: any process with
this package installed loads ``models:/churn_model@champion`` and scores.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd


class ChurnModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        with open(context.artifacts["vocabulary"]) as fh:
            self.vocabulary = json.load(fh)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from churn_assets.defs.ml.features import FEATURES, as_categories

        return self.booster.predict(as_categories(model_input[FEATURES], self.vocabulary))
