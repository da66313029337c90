"""The retention campaign: Claude writes, code decides, the outbox delivers."""

from pathlib import Path

import dagster as dg

from churn_assets.defs.campaigns.prompts import PROMPT_VERSION
from churn_assets.defs.campaigns.resources import AnthropicResource, CampaignPolicyResource
from churn_assets.defs.campaigns.run import CampaignResult, run_campaign
from churn_assets.defs.gold.assets import churn_features
from churn_assets.defs.ml.assets import churn_prediction
from churn_assets.defs.silver.assets import churn_orders, churn_users
from churn_assets.engine import EngineResource
from churn_assets.metadata import table_metadata
from churn_assets.resources import PipelineSettingsResource, WarehouseResource

KEY = dg.AssetKey(["campaigns", "retention_messages"])


@dg.asset(
    key=KEY,
    deps=[churn_prediction, churn_features, churn_users, churn_orders],
    group_name="campaigns",
    kinds={"anthropic", "duckdb"},
    pool="duckdb_warehouse",
    # Network-bound: a transient fault of the API retries the step (the SDK already
    # retried each call); what was generated before is cached and not asked again.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL),
    check_specs=[
        dg.AssetCheckSpec(
            "model_wrote_the_copy",
            asset=KEY,
            description="warns when messages meant for Claude's copy got the template or nothing (API errors, "
            "refusals, invalid copy, budget); passes offline, where the templates are the plan",
        )
    ],
    description="A personalized retention message for each customer predicted to churn (highest risk and value first, "
    "at most max_messages_per_run, none within cooldown_days of the last one). Offer, urgency, season and languages "
    "are decided in code; Claude writes the words (offline templates without ANTHROPIC_API_KEY); every text is "
    "validated. Each ready message goes to exactly one file $CHURN_HOME/outbox/<run>.jsonl for a downstream sender.",
)
def retention_messages(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    anthropic: AnthropicResource,
    campaign_policy: CampaignPolicyResource,
    pipeline_settings: PipelineSettingsResource,
    engine: EngineResource,
) -> dg.MaterializeResult:
    writer = None if anthropic.offline else anthropic.writer()
    # On Spark the at-risk customers are read from the cluster's tables; the ledger (copy cache,
    # messages, outbox files) stays in the DuckDB file, whose transactions its exactly-once handover needs.
    tables = engine.cursor() if engine.is_spark else None
    with warehouse.get_connection() as con:
        result = run_campaign(
            con,
            run_id=context.run.run_id,
            as_of=pipeline_settings.as_of_datetime(),
            outbox_dir=Path(pipeline_settings.home) / "outbox",
            writer=writer,
            model_name=anthropic.model,
            concurrency=anthropic.max_concurrency,
            cooldown_days=campaign_policy.cooldown_days,
            cap=campaign_policy.max_messages_per_run,
            fallback_to_template=campaign_policy.fallback_to_template,
            tables=tables,
        )
        metadata = table_metadata(con, "campaigns.retention_messages")
    if result.stopped:
        context.log.warning(f"campaign stopped early: {result.stopped}")
    if result.degraded:
        context.log.warning(f"campaign degraded: {result.degradation()}")
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "mode": "offline templates (no ANTHROPIC_API_KEY)" if anthropic.offline else f"Claude {anthropic.model}",
            "prompt_version": PROMPT_VERSION,
            "customers_targeted": result.targets,
            "customers_in_cooldown": result.in_cooldown,
            "distinct_decisions": result.decisions,
            "cache_hits": result.cache_hits,
            "api_calls": result.api_calls,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "cost_usd": dg.MetadataValue.float(round(result.cost_usd, 6)),
            **{f"messages_{status}": n for status, n in sorted(result.statuses.items())},
            "messages_by_generator": dg.MetadataValue.json(result.by_generator),
            "model_errors": dg.MetadataValue.json(result.model_errors),
            "api_errors": dg.MetadataValue.json(result.api_errors),
            "degraded": result.degradation() or "no",
            # Of the copies checked this run (the model's answers, cached copies, offline templates); absent when
            # none was (a total outage): a rate of nothing would read as a pass.
            **(
                {"validation_pass_rate": dg.MetadataValue.float(result.passed / result.checked)}
                if result.checked
                else {}
            ),
            "cached_copies_rejected": result.cache_rejected,
            "outbox": dg.MetadataValue.path(result.outbox) if result.outbox else "none (nothing ready)",
            "messages_outboxed": result.outboxed,
            "outbox_files_recovered": result.outbox_recovered,
            "stopped_early": result.stopped or "",
        },
        check_results=[_model_wrote_the_copy(result, anthropic.offline)],
    )


def _model_wrote_the_copy(result: CampaignResult, offline: bool) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="model_wrote_the_copy",
        passed=not result.degraded,
        severity=dg.AssetCheckSeverity.WARN,
        description=result.degradation()
        or ("offline templates, as configured" if offline else "every message has the model's copy"),
        metadata={
            "messages_by_generator": dg.MetadataValue.json(result.by_generator),
            "model_errors": dg.MetadataValue.json(result.model_errors),
        },
    )


assets = [retention_messages]
