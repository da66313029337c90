"""Silver: typed, cleaned, latest-wins customers and orders."""

import dagster as dg

from churn_assets.defs.silver.assets import assets


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=assets)
