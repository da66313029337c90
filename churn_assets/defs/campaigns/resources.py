"""The campaign domain's resources: Claude through the official SDK, and the contact policy."""

from __future__ import annotations

import dagster as dg

from churn_assets.settings import Settings


class AnthropicResource(dg.ConfigurableResource):
    """Claude through the official SDK. The key comes only from ``ANTHROPIC_API_KEY``;
    without it the campaign step writes with the offline templates."""

    api_key: str | None = None
    base_url: str | None = None  # ANTHROPIC_BASE_URL, e.g. a proxy or a test server
    model: str
    max_concurrency: int = 4
    max_retries: int = 4  # the SDK's own: 408/409/429/5xx and timeouts, with backoff and retry-after
    timeout_seconds: float = 30.0
    max_tokens: int = 700
    run_budget_usd: float
    # USD per million tokens; set them to the price list of the model in use.
    input_usd_per_mtok: float = 1.0
    output_usd_per_mtok: float = 5.0
    cache_write_usd_per_mtok: float = 1.25
    cache_read_usd_per_mtok: float = 0.10

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> AnthropicResource:
        values = {
            "api_key": settings.secret("anthropic_api_key"),
            "base_url": settings.anthropic_base_url,
            "model": settings.claude_model,
            "run_budget_usd": settings.campaign_budget_usd,
        }
        return cls(**{**values, **overrides})

    @property
    def offline(self) -> bool:
        return not self.api_key

    def writer(self):
        import anthropic

        from churn_assets.defs.campaigns.writer import Budget, ClaudeWriter, Prices

        client = anthropic.Anthropic(
            api_key=self.api_key,
            base_url=self.base_url or None,
            max_retries=self.max_retries,
            timeout=self.timeout_seconds,
        )
        prices = Prices(
            self.input_usd_per_mtok,
            self.output_usd_per_mtok,
            self.cache_write_usd_per_mtok,
            self.cache_read_usd_per_mtok,
        )
        return ClaudeWriter(client, self.model, prices, Budget(self.run_budget_usd), self.max_tokens)


class CampaignPolicyResource(dg.ConfigurableResource):
    """Contact limits of the retention campaign."""

    cooldown_days: int
    max_messages_per_run: int
    # A model text that fails twice (or a refusal, or an API failure) is replaced by the
    # rule-following template; off, such customers get no message this run.
    fallback_to_template: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> CampaignPolicyResource:
        values = {
            "cooldown_days": settings.campaign_cooldown_days,
            "max_messages_per_run": settings.campaign_max_messages,
        }
        return cls(**{**values, **overrides})
