"""The churn model as MLflow stores it: LightGBM's own text format plus JSON, no pickle.

A registered version is an MLflow pyfunc logged as "models from code": the directory holds
``booster.txt`` (``Booster.save_model``), ``vocabulary.json`` (the category lists of the
categorical features, in training order) and ``pyfunc_model.py`` (the few lines that
build ``ChurnModel`` from this package). Nothing in it is a pickle, so loading it never
unpickles. The pipeline itself scores without even running that file: ``load_scorer``
reads the booster and the vocabulary only.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

BOOSTER = "booster"  # artifact names inside the logged model (MLmodel -> python_function.artifacts)
VOCABULARY = "vocabulary"
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")


_LIGHTGBM_IMPORT = threading.Lock()


def lightgbm():
    """LightGBM, imported without its scikit-learn layer.

    LightGBM imports scikit-learn whenever it is installed (MLflow installs it), for its
    ``LGBMClassifier`` family: 0.9 of the 1.2 s ``import lightgbm`` takes here, on every run
    that scores or trains, and on the GIL beside the run's steps. The project uses LightGBM's
    own API (``Dataset``, ``train``, ``Booster``) and never scikit-learn, so scikit-learn is
    hidden while LightGBM is first imported (``None`` in ``sys.modules`` makes an import fail,
    and LightGBM then goes without that layer). Once scikit-learn is imported (a test comparing
    metrics with it), LightGBM comes whole, as nothing changes for the API used here.
    """
    with _LIGHTGBM_IMPORT:
        hide = "lightgbm" not in sys.modules and "sklearn" not in sys.modules
        if hide:
            sys.modules["sklearn"] = None
        try:
            import lightgbm
        finally:
            if hide and sys.modules.get("sklearn", ...) is None:
                del sys.modules["sklearn"]
        return lightgbm


def score(booster, vocabulary: dict[str, list[str]], frame: pd.DataFrame) -> np.ndarray:
    """Churn probabilities: the one scoring rule of training, registry and serving."""
    from churn_assets.defs.ml.features import FEATURES, as_categories

    return booster.predict(as_categories(frame[FEATURES], vocabulary))


def score_polars(booster, vocabulary: dict[str, list[str]], df) -> np.ndarray:
    """``score`` of ``to_model_frame(df)``, straight from a Polars frame (no string per row)."""
    from churn_assets.defs.ml.features import model_matrix

    return booster.predict(model_matrix(df, vocabulary))


@dataclass
class Scorer:
    booster: object
    vocabulary: dict[str, list[str]]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return score(self.booster, self.vocabulary, frame)

    def predict_polars(self, df) -> np.ndarray:
        return score_polars(self.booster, self.vocabulary, df)


def read_scorer(booster_file: str | Path, vocabulary_file: str | Path) -> Scorer:
    return Scorer(lightgbm().Booster(model_file=str(booster_file)), json.loads(Path(vocabulary_file).read_text()))


@cache
def _pyfunc_class() -> type:
    # Module-wide names: MLflow resolves the hints of ``predict`` (a DataFrame in, an array out).
    global np, pd
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    class ChurnModel(mlflow.pyfunc.PythonModel):
        """The pyfunc face of the model, for ``mlflow.pyfunc.load_model`` and ``mlflow models serve``."""

        def load_context(self, context) -> None:
            self.scorer = read_scorer(context.artifacts[BOOSTER], context.artifacts[VOCABULARY])

        def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
            return self.scorer.predict(model_input)

    ChurnModel.__module__, ChurnModel.__qualname__ = __name__, "ChurnModel"
    return ChurnModel


def __getattr__(name: str):
    # ``ChurnModel`` (what ``pyfunc_model.py`` imports, in this release and in the copies logged
    # with earlier versions) subclasses MLflow's PythonModel, so it is built on first use: every
    # code-location load imports this module, and MLflow costs seconds to import.
    if name == "ChurnModel":
        return _pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
