"""Bronze: landing files into ``bronze.*``, each file exactly once (shared resources only)."""

import dagster as dg

from churn_assets.defs.bronze.assets import assets


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=assets)
