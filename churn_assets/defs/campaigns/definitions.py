"""Retention campaigns: decisions in code, copy by Claude, the outbox; with the resources only they use."""

import dagster as dg

from churn_assets.defs.campaigns.assets import assets
from churn_assets.defs.campaigns.resources import AnthropicResource, CampaignPolicyResource
from churn_assets.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.load()
    return dg.Definitions(
        assets=assets,
        resources={
            "anthropic": AnthropicResource.from_settings(settings),
            "campaign_policy": CampaignPolicyResource.from_settings(settings),
        },
    )
