"""How a trained model is shown: the feature-importance plot (logged to MLflow) and table (Dagster metadata)."""

from __future__ import annotations

import io

import pandas as pd
import polars as pl

from churn_assets.metadata import markdown_table

TOP_FEATURES = 13  # every feature of the reference: the plot and the table show them all


def importance_png(importance: pd.DataFrame) -> bytes:
    """A horizontal bar chart of the gain per feature, largest on top, as PNG bytes."""
    import matplotlib  # ~0.5 s to import: only a training step pays it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    top = importance.head(TOP_FEATURES).iloc[::-1]
    ax.barh(top["feature"], top["gain"], color="#4C78A8")
    ax.set_title("churn_model: feature importance (gain)")
    ax.set_xlabel("total gain")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def importance_markdown(importance: pd.DataFrame) -> str:
    return markdown_table(pl.from_pandas(importance.head(TOP_FEATURES)))
