"""Gold: one row of churn features per customer, and the blocking check that guards it."""

import dagster as dg

from churn_assets.defs.gold.assets import asset_checks, assets


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=assets, asset_checks=asset_checks)
