"""Dashboards: every figure a ``dashboard.*`` table, and the page that draws them."""

import dagster as dg

from churn_assets.defs.dashboards.assets import assets


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=assets)
