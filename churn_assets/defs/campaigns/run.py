"""One campaign run: pick the at-risk customers, decide, write (once per distinct
decision), validate, personalize, record, and hand the ready messages to the outbox."""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from churn_assets.defs.campaigns.decide import Decision, decide
from churn_assets.defs.campaigns.prompts import PROMPT_VERSION
from churn_assets.defs.campaigns.templates import PLACEHOLDER
from churn_assets.defs.campaigns.validate import NAME_MAX, problems
from churn_assets.defs.campaigns.generation import Generation, template_generation
from churn_assets.defs.campaigns import outbox
from churn_assets.faults import fault_point

DDL = [
    "CREATE SCHEMA IF NOT EXISTS campaigns",
    # One row per distinct decision written: identical decisions share one generation,
    # across runs (unchanged customers cost no call next cycle).
    """CREATE TABLE IF NOT EXISTS campaigns.copy_cache (
        cache_key VARCHAR, prompt_version VARCHAR, generator VARCHAR, decision VARCHAR,
        subject VARCHAR, texts VARCHAR, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE,
        created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS campaigns.retention_messages (
        message_id VARCHAR, run_id VARCHAR, user_id VARCHAR, channel VARCHAR, style VARCHAR,
        languages VARCHAR, offer VARCHAR, urgency VARCHAR, season VARCHAR, subject VARCHAR, texts VARCHAR,
        generator VARCHAR, prompt_version VARCHAR, input_hash VARCHAR, input_tokens BIGINT,
        output_tokens BIGINT, cost_usd DOUBLE, status VARCHAR, detail VARCHAR, created_at TIMESTAMP,
        outbox VARCHAR, model_error VARCHAR)""",
    # model_error: why a message meant for the model's copy has none (warehouses from before it get it here).
    "ALTER TABLE campaigns.retention_messages ADD COLUMN IF NOT EXISTS model_error VARCHAR",
    *outbox.DDL,
]
MESSAGE_COLUMNS = (
    "message_id, run_id, user_id, channel, style, languages, offer, urgency, season, subject, texts, generator, "
    "prompt_version, input_hash, input_tokens, output_tokens, cost_usd, status, detail, created_at, outbox, model_error"
)


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


def degradation_text(model_errors: dict[str, int], messages: int, from_template: int) -> str:
    """In words: how many messages lack the model's copy and why, or "" when none does."""
    if not model_errors:
        return ""
    why = ", ".join(f"{kind} {n:,}" for kind, n in sorted(model_errors.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"{sum(model_errors.values()):,} of {messages:,} messages without the model's copy ({why}); "
            f"{from_template:,} sent with the template instead")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ensure_tables(con) -> None:
    for statement in DDL:
        con.execute(statement)


def select_targets(con: duckdb.DuckDBPyConnection, cooldown_days: int, cap: int) -> tuple[list[dict], int]:
    """Customers predicted to churn, highest risk then value first, not contacted within
    the cooldown; at most ``cap``. Returns (targets, customers skipped for cooldown)."""
    since = _now() - timedelta(days=cooldown_days)
    recent = "SELECT user_id FROM campaigns.retention_messages WHERE status = 'ready' AND created_at >= ?"
    in_cooldown = con.execute(
        f"SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1 AND user_id IN ({recent})", [since]
    ).fetchall()[0][0]
    cur = con.execute(
        f"""WITH last_order AS (
                SELECT user_id, arg_max(amount, creation_date) AS amount, arg_max(item_count, creation_date) AS items,
                       max(creation_date) AS last_date
                FROM silver.churn_orders GROUP BY user_id)
            SELECT p.user_id, u.firstname, u.canal, u.country, p.churn_probability, f.total_amount,
                   lo.amount, lo.items, lo.last_date
            FROM gold.churn_prediction p
            JOIN silver.churn_users u USING (user_id)
            JOIN gold.churn_features f USING (user_id)
            JOIN last_order lo USING (user_id)
            WHERE p.churn_prediction = 1 AND p.user_id NOT IN ({recent})
            ORDER BY p.churn_probability DESC, f.total_amount DESC, p.user_id
            LIMIT ?""",
        [since, cap],
    )
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()], in_cooldown


def decision_for(customer: dict, today) -> Decision:
    days = (today - customer["last_date"].date()).days if customer["last_date"] else 10_000
    return decide(
        canal=customer["canal"], country=customer["country"], last_amount=float(customer["amount"] or 0),
        last_items=int(customer["items"] or 0), days_since_last_order=days, at_risk=True, today=today,
    )


def first_name(raw: str | None) -> str:
    """The first name as data: printable, one line, no braces, at most NAME_MAX characters."""
    # Controls, format characters (bidi, zero-width) and line separators become spaces.
    name = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in raw or "")
    name = re.sub(r"[{}<>]", " ", name).strip()
    name = re.sub(r"\s+", " ", name)[:NAME_MAX].strip()
    return name or "there"


def personalize(texts: dict[str, str], name: str) -> dict[str, str]:
    return {lang: text.replace(PLACEHOLDER, name) for lang, text in texts.items()}


def cached_copy(con, key: str) -> Generation | None:
    rows = con.execute(
        "SELECT generator, decision, subject, texts FROM campaigns.copy_cache WHERE cache_key = ? "
        "ORDER BY created_at DESC LIMIT 1",
        [key],
    ).fetchall()
    if not rows:
        return None
    generator, decision, subject, texts = rows[0]
    d = json.loads(decision)
    return Generation(Decision(d["style"], tuple(d["languages"]), d["offer"], d["urgency"], d["season"]),
                      generator, "ok", subject, json.loads(texts))


@dataclass
class Choice:
    copy: Generation | None  # what the customer is sent; None: nothing may be sent
    status: str
    detail: str | None
    model_error: str | None  # why the model's copy is not the one sent (None offline or when it is)


def choose_copy(gen: Generation, name: str, fallback_to_template: bool, template: Generation | None = None) -> Choice:
    """The copy one customer gets: the generated one if it passes every check with their
    real first name; else, when allowed, the template if it passes; else nothing: a text
    with any problem is never ``ready``."""
    if gen.status == "skipped_budget":
        return Choice(None, "skipped_budget", gen.detail, gen.error)
    if gen.status == "ok":
        wrong = problems(gen.decision, gen.subject, gen.texts, first_name=name)
        if not wrong:
            return Choice(gen, "ready", gen.detail, None)
        status, error, detail = "invalid", "invalid copy", "; ".join(wrong)[:500]
    else:
        status, error, detail = gen.status, gen.error or gen.status, gen.detail
    if gen.generator == "template":  # offline: there is no model, and no other copy to fall back to
        return Choice(None, "invalid", f"template: {detail}", None)
    if not fallback_to_template:
        return Choice(None, status, detail, error)
    template = template or template_generation(gen.decision)
    wrong = problems(template.decision, template.subject, template.texts, first_name=name)
    if wrong:
        return Choice(None, "invalid", f"template after model {status}: {'; '.join(wrong)}"[:500], error)
    return Choice(template, "ready", f"template after model {status}: {detail}", error)


def _count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


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
) -> CampaignResult:
    ensure_tables(con)
    result = CampaignResult()
    # A step retry is the same run: what an earlier attempt wrote counts against the cap.
    written = con.execute(
        "SELECT count(*) FROM campaigns.retention_messages WHERE run_id = ?", [run_id]).fetchall()[0][0]
    targets, result.in_cooldown = select_targets(con, cooldown_days, max(0, cap - written))
    result.targets = len(targets)
    generator_name = model_name if writer is not None else "template"
    by_key: dict[str, list[dict]] = {}
    decisions: dict[str, Decision] = {}
    for customer in targets:
        decision = decision_for(customer, as_of.date())
        key = decision.key(PROMPT_VERSION, generator_name)
        by_key.setdefault(key, []).append(customer)
        decisions[key] = decision
    result.decisions = len(decisions)

    def record(key: str, gen: Generation, from_cache: bool) -> None:
        if not from_cache:
            result.checked += gen.checked
            result.passed += gen.passed
        if gen.status == "failed":
            _count(result.api_errors, gen.error or "unknown")
        if gen.status == "ok" and not from_cache and gen.generator != "template":
            con.execute(
                "INSERT INTO campaigns.copy_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [key, PROMPT_VERSION, gen.generator, gen.decision.as_json(), gen.subject, json.dumps(gen.texts),
                 gen.input_tokens, gen.output_tokens, gen.cost_usd, _now()],
            )
        template = template_generation(gen.decision) if gen.generator != "template" and fallback_to_template else None
        rows = []
        for i, customer in enumerate(by_key[key]):
            name = first_name(customer["firstname"])
            choice = choose_copy(gen, name, fallback_to_template, template)
            sent = choice.copy
            first = i == 0 and not from_cache  # the generation's tokens and cost are counted once
            rows.append([
                str(uuid.uuid4()), run_id, customer["user_id"], customer["canal"], gen.decision.style,
                ",".join(gen.decision.languages), gen.decision.offer, gen.decision.urgency, gen.decision.season,
                sent.subject if sent else None,
                json.dumps(personalize(sent.texts, name) if sent else {}, ensure_ascii=False),
                sent.generator if sent else gen.generator, PROMPT_VERSION, key, gen.input_tokens if first else 0,
                gen.output_tokens if first else 0, gen.cost_usd if first else 0.0, choice.status, choice.detail, _now(),
                None, choice.model_error,
            ])
            _count(result.statuses, choice.status)
            if sent:
                _count(result.by_generator, sent.generator)
            if choice.model_error:
                _count(result.model_errors, choice.model_error)
        # One statement per generation, committed on its own: a kill loses nothing written.
        con.executemany(
            f"INSERT INTO campaigns.retention_messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 22)})", rows
        )
        result.api_calls += gen.api_calls if not from_cache else 0
        result.input_tokens += gen.input_tokens if not from_cache else 0
        result.output_tokens += gen.output_tokens if not from_cache else 0
        result.cost_usd += gen.cost_usd if not from_cache else 0.0
        fault_point("after_generation")

    todo = []
    for key, decision in decisions.items():
        cached = cached_copy(con, key)
        if cached is not None:
            # Checked again when used: the rules may have tightened since, or the copy was bad.
            result.checked += 1
            if problems(cached.decision, cached.subject, cached.texts):
                con.execute("DELETE FROM campaigns.copy_cache WHERE cache_key = ?", [key])
                result.cache_rejected += 1
                cached = None
            else:
                result.passed += 1
        if cached is not None:
            result.cache_hits += 1
            record(key, cached, from_cache=True)
        else:
            todo.append(key)
    if writer is None:
        for key in todo:
            gen = template_generation(decisions[key])
            gen.checked, gen.passed = 1, int(not problems(gen.decision, gen.subject, gen.texts))
            record(key, gen, from_cache=False)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = {pool.submit(writer.write, decisions[key]): key for key in todo}
            # Written from this thread only: DuckDB writes stay on one connection.
            for future in as_completed(futures):
                record(futures[future], future.result(), from_cache=False)
        result.stopped = writer.stop_reason
    result.outbox, result.outboxed, result.outbox_recovered = outbox.write_outbox(con, outbox_dir, run_id)
    return result
