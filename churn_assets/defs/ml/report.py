"""How a trained model is shown: the feature-importance plot (logged to MLflow) and table (Dagster metadata)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from churn_assets.metadata import markdown_table

if TYPE_CHECKING:  # imported where used: every code-location load imports this module
    import pandas as pd

TOP_FEATURES = 13  # every feature of the reference: the plot and the table show them all


def importance_png(importance: pd.DataFrame) -> bytes:
    """A horizontal bar chart of the gain per feature, largest on top, as PNG bytes. Drawn with
    Pillow: importing matplotlib alone took seconds of every training step."""
    from PIL import Image, ImageDraw

    top = importance.head(TOP_FEATURES)
    width, label_width, value_width, row, pad, title = 640, 190, 90, 24, 12, 28
    img = Image.new("RGB", (width, 2 * pad + title + row * len(top)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), "churn_model: feature importance (total gain)", fill="black")
    most = float(top["gain"].max() or 1.0)
    room = width - label_width - value_width - pad
    for i, (name, gain) in enumerate(zip(top["feature"], top["gain"])):
        y = pad + title + i * row
        bar = max(1, round(room * float(gain) / most))
        draw.text((pad, y + 6), str(name), fill="black")
        draw.rectangle([label_width, y + 3, label_width + bar, y + row - 3], fill="#4C78A8")
        draw.text((label_width + bar + 6, y + 6), f"{gain:,.0f}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def importance_markdown(importance: pd.DataFrame) -> str:
    top = importance.head(TOP_FEATURES)
    return markdown_table(list(top.columns), top.itertuples(index=False, name=None))
