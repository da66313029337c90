"""One campaign run, step by step: pick the at-risk customers (``targets.py``), decide, take
each distinct decision's copy from the cache or write it (``generation.py``, ``writer.py``),
turn it into checked, personalized messages (``messages.py``), record them (``store.py``),
and hand the ready ones to the outbox (``outbox.py``). What happened is counted in a
``CampaignResult``."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from churn_assets.defs.campaigns import outbox, store
from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.generation import Generation, offline_generation
from churn_assets.defs.campaigns.messages import MessageRow, message_rows
from churn_assets.defs.campaigns.prompts import PROMPT_VERSION
from churn_assets.defs.campaigns.targets import group_by_decision, select_targets
from churn_assets.defs.campaigns.validate import problems
from churn_assets.faults import fault_point
from churn_assets.warehouse import ensure_campaign_tables


def _count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass
class CampaignResult:
    targets: int = 0
    in_cooldown: int = 0
    decisions: int = 0
    cache_hits: int = 0
    cache_rejected: int = 0  # cached copies that failed today's checks: written again
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    by_generator: dict[str, int] = field(default_factory=dict)  # ready messages by who wrote them
    model_errors: dict[str, int] = field(default_factory=dict)  # messages meant for the model's copy without it, by why
    api_errors: dict[str, int] = field(default_factory=dict)  # generations whose call failed after the SDK's retries
    checked: int = 0  # model answers and cached copies checked against the rules, and how many passed
    passed: int = 0
    outbox: str | None = None
    outboxed: int = 0
    outbox_recovered: int = 0  # files an earlier, killed attempt left unfinished
    stopped: str | None = None

    @property
    def degraded(self) -> bool:
        return bool(self.model_errors)

    def degradation(self) -> str:
        return degradation_text(self.model_errors, sum(self.statuses.values()), self.by_generator.get("template", 0))

    def count_generation(self, gen: Generation, from_cache: bool) -> None:
        """A generation's checks, failures and cost; a cached copy was checked and paid for when cached."""
        if gen.status == "failed":
            _count(self.api_errors, gen.error or "unknown")
        if from_cache:
            return
        self.checked += gen.checked
        self.passed += gen.passed
        self.api_calls += gen.api_calls
        self.input_tokens += gen.input_tokens
        self.output_tokens += gen.output_tokens
        self.cost_usd += gen.cost_usd

    def count_messages(self, rows: list[MessageRow]) -> None:
        for row in rows:
            _count(self.statuses, row.status)
            if row.status == "ready":  # only a ready message has a copy sent, by its generator
                _count(self.by_generator, row.generator)
            if row.model_error:
                _count(self.model_errors, row.model_error)


def degradation_text(model_errors: dict[str, int], messages: int, from_template: int) -> str:
    """In words: how many messages lack the model's copy and why, or "" when none does."""
    if not model_errors:
        return ""
    why = ", ".join(f"{kind} {n:,}" for kind, n in sorted(model_errors.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"{sum(model_errors.values()):,} of {messages:,} messages without the model's copy ({why}); "
        f"{from_template:,} sent with the template instead"
    )


def usable_cached_copy(con: duckdb.DuckDBPyConnection, key: str, result: CampaignResult) -> Generation | None:
    """The cached copy for ``key`` if it still passes the rules; a failing one is dropped
    (the rules may have tightened since, or the copy was bad) and written again."""
    cached = store.cached_copy(con, key)
    if cached is None:
        return None
    result.checked += 1
    if problems(cached.decision, cached.subject, cached.texts):
        store.forget_copy(con, key)
        result.cache_rejected += 1
        return None
    result.passed += 1
    result.cache_hits += 1
    return cached


def generations(
    writer, decisions: dict[str, Decision], keys: list[str], concurrency: int
) -> Iterator[tuple[str, Generation]]:
    """(key, generation) for each key, as they complete: the templates offline, else the
    model's answers, ``concurrency`` calls at a time."""
    if writer is None:
        for key in keys:
            yield key, offline_generation(decisions[key])
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(writer.write, decisions[key]): key for key in keys}
        for future in as_completed(futures):
            # Yielded to the caller's thread: DuckDB writes stay on one connection.
            yield futures[future], future.result()


def run_campaign(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: str,
    as_of: datetime,
    outbox_dir: Path,
    writer,  # ClaudeWriter or None (offline)
    model_name: str,
    concurrency: int,
    cooldown_days: int,
    cap: int,
    fallback_to_template: bool = True,
    tables=None,  # where the at-risk customers are read when not in ``con``: a Spark engine's cursor
) -> CampaignResult:
    ensure_campaign_tables(con)
    result = CampaignResult()
    # A step retry is the same run: what an earlier attempt wrote counts against the cap.
    targets, result.in_cooldown = select_targets(
        con, cooldown_days, max(0, cap - store.messages_of_run(con, run_id)), tables
    )
    result.targets = len(targets)
    generator_name = model_name if writer is not None else "template"
    decisions, customers = group_by_decision(targets, as_of.date(), PROMPT_VERSION, generator_name)
    result.decisions = len(decisions)

    def record(key: str, gen: Generation, from_cache: bool) -> None:
        if gen.status == "ok" and not from_cache and gen.generator != "template":
            store.cache_copy(con, key, PROMPT_VERSION, gen)
        rows = message_rows(
            gen,
            customers[key],
            key=key,
            run_id=run_id,
            prompt_version=PROMPT_VERSION,
            from_cache=from_cache,
            fallback_to_template=fallback_to_template,
        )
        store.insert_messages(con, rows)
        result.count_generation(gen, from_cache)
        result.count_messages(rows)
        fault_point("after_generation")

    todo = []
    for key in decisions:
        cached = usable_cached_copy(con, key, result)
        if cached is None:
            todo.append(key)
        else:
            record(key, cached, from_cache=True)
    for key, gen in generations(writer, decisions, todo, concurrency):
        record(key, gen, from_cache=False)
    if writer is not None:
        result.stopped = writer.stop_reason
    result.outbox, result.outboxed, result.outbox_recovered = outbox.write_outbox(con, outbox_dir, run_id)
    return result
