"""One campaign run: pick the at-risk customers, decide, write (once per distinct
decision), validate, personalize, record, and hand the ready messages to the outbox."""

from __future__ import annotations

import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from churn_assets.defs.campaigns.decide import Decision, decide
from churn_assets.defs.campaigns.prompts import PROMPT_VERSION
from churn_assets.defs.campaigns.templates import PLACEHOLDER
from churn_assets.defs.campaigns.validate import problems
from churn_assets.defs.campaigns.generation import Generation, template_generation
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
        outbox VARCHAR)""",
]


@dataclass
class CampaignResult:
    targets: int = 0
    in_cooldown: int = 0
    decisions: int = 0
    cache_hits: int = 0
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    validated: int = 0
    valid: int = 0
    outbox: str | None = None
    outboxed: int = 0
    stopped: str | None = None


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
    """The first name as data: printable, one line, no braces, at most 40 characters."""
    name = re.sub(r"[\x00-\x1f\x7f{}<>]", " ", raw or "").strip()
    name = re.sub(r"\s+", " ", name)[:40].strip()
    return name or "there"


def personalize(texts: dict[str, str], name: str) -> dict[str, str]:
    return {lang: text.replace(PLACEHOLDER, name) for lang, text in texts.items()}


def _cached(con, key: str) -> Generation | None:
    rows = con.execute(
        "SELECT generator, decision, subject, texts FROM campaigns.copy_cache WHERE cache_key = ? ORDER BY created_at DESC LIMIT 1",
        [key],
    ).fetchall()
    if not rows:
        return None
    generator, decision, subject, texts = rows[0]
    d = json.loads(decision)
    return Generation(Decision(d["style"], tuple(d["languages"]), d["offer"], d["urgency"], d["season"]),
                      generator, "ok", subject, json.loads(texts))


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
    targets, result.in_cooldown = select_targets(con, cooldown_days, cap)
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
        final = gen
        fallback_reason = None
        if gen.status != "ok" and gen.status != "skipped_budget" and fallback_to_template:
            fallback_reason = gen.status
            final = template_generation(gen.decision)
        if final.status == "ok":
            result.validated += 1
            result.valid += not problems(final.decision, final.subject, final.texts)
        if gen.status == "ok" and not from_cache:
            con.execute(
                "INSERT INTO campaigns.copy_cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [key, PROMPT_VERSION, gen.generator, gen.decision.as_json(), gen.subject, json.dumps(gen.texts),
                 gen.input_tokens, gen.output_tokens, gen.cost_usd, _now()],
            )
        status = "ready" if final.status == "ok" else final.status
        detail = f"template after model {fallback_reason}: {gen.detail}" if fallback_reason else gen.detail
        rows = []
        for i, customer in enumerate(by_key[key]):
            texts = personalize(final.texts, first_name(customer["firstname"])) if status == "ready" else {}
            first = i == 0 and not from_cache  # the generation's tokens and cost are counted once
            rows.append([
                str(uuid.uuid4()), run_id, customer["user_id"], customer["canal"], gen.decision.style,
                ",".join(gen.decision.languages), gen.decision.offer, gen.decision.urgency, gen.decision.season,
                final.subject if status == "ready" else None, json.dumps(texts, ensure_ascii=False),
                final.generator, PROMPT_VERSION, key, gen.input_tokens if first else 0,
                gen.output_tokens if first else 0, gen.cost_usd if first else 0.0, status, detail, _now(), None,
            ])
            result.statuses[status] = result.statuses.get(status, 0) + 1
        # One statement per generation, committed on its own: a kill loses nothing written.
        con.executemany(f"INSERT INTO campaigns.retention_messages VALUES ({', '.join('?' * 21)})", rows)
        result.api_calls += gen.api_calls if not from_cache else 0
        result.input_tokens += gen.input_tokens if not from_cache else 0
        result.output_tokens += gen.output_tokens if not from_cache else 0
        result.cost_usd += gen.cost_usd if not from_cache else 0.0
        fault_point("after_generation")

    todo = []
    for key, decision in decisions.items():
        cached = _cached(con, key)
        if cached is not None:
            result.cache_hits += 1
            record(key, cached, from_cache=True)
        else:
            todo.append(key)
    if writer is None:
        for key in todo:
            record(key, template_generation(decisions[key]), from_cache=False)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = {pool.submit(writer.write, decisions[key]): key for key in todo}
            # Written from this thread only: DuckDB writes stay on one connection.
            for future in as_completed(futures):
                record(futures[future], future.result(), from_cache=False)
        result.stopped = writer.stop_reason
    result.outbox, result.outboxed = write_outbox(con, outbox_dir, run_id)
    return result


def write_outbox(con, outbox_dir: Path, run_id: str) -> tuple[str | None, int]:
    """Every ready message not yet handed over (this run's, and any a killed run left),
    into a new file, atomically; then marked as handed over."""
    cur = con.execute(
        """SELECT message_id, user_id, channel, style, languages, offer, subject, texts, created_at
           FROM campaigns.retention_messages WHERE status = 'ready' AND outbox IS NULL ORDER BY created_at, message_id"""
    )
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    if not rows:
        return None, 0
    outbox_dir.mkdir(parents=True, exist_ok=True)
    final = outbox_dir / f"{run_id}.jsonl"
    tmp = outbox_dir / f".{run_id}.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({
                "message_id": r["message_id"], "user_id": r["user_id"], "channel": r["channel"], "style": r["style"],
                "languages": r["languages"].split(","), "offer": r["offer"], "subject": r["subject"],
                "texts": json.loads(r["texts"]), "created_at": r["created_at"].isoformat(),
            }, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    con.execute(
        "UPDATE campaigns.retention_messages SET outbox = ? WHERE status = 'ready' AND outbox IS NULL AND message_id IN (SELECT unnest(?))",
        [final.name, [r["message_id"] for r in rows]],
    )
    return str(final), len(rows)
