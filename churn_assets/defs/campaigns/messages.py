"""From one generation to the messages its customers get (pure): which copy each customer
is sent, personalized with their first name, as rows of ``campaigns.retention_messages``."""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from datetime import datetime

from churn_assets.defs.campaigns.generation import Generation, template_generation
from churn_assets.defs.campaigns.templates import PLACEHOLDER
from churn_assets.defs.campaigns.validate import NAME_MAX, problems
from churn_assets.timeutil import utcnow


def first_name(raw: str | None) -> str:
    """The first name as data: printable, one line, no braces, at most NAME_MAX characters."""
    # Controls, format characters (bidi, zero-width) and line separators become spaces.
    name = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in raw or "")
    name = re.sub(r"[{}<>]", " ", name).strip()
    name = re.sub(r"\s+", " ", name)[:NAME_MAX].strip()
    return name or "there"


def personalize(texts: dict[str, str], name: str) -> dict[str, str]:
    return {lang: text.replace(PLACEHOLDER, name) for lang, text in texts.items()}


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


@dataclass
class MessageRow:
    """One row of ``campaigns.retention_messages``, its fields in the table's column order."""

    message_id: str
    run_id: str
    user_id: str
    channel: str | None
    style: str
    languages: str
    offer: str
    urgency: str
    season: str
    subject: str | None
    texts: str  # JSON: language -> personalized text; {} when nothing may be sent
    generator: str  # who wrote the copy sent (or, when none is, the generation's writer)
    prompt_version: str
    input_hash: str  # the decision's cache key
    input_tokens: int
    output_tokens: int
    cost_usd: float
    status: str
    detail: str | None
    created_at: datetime
    outbox: str | None  # set when the message is handed to an outbox file
    model_error: str | None


MESSAGE_COLUMNS = ", ".join(f.name for f in fields(MessageRow))


def message_rows(
    gen: Generation,
    customers: list[dict],
    *,
    key: str,
    run_id: str,
    prompt_version: str,
    from_cache: bool,
    fallback_to_template: bool,
    clock: Callable[[], datetime] = utcnow,
) -> list[MessageRow]:
    """A message for each customer of one generation. Its tokens and cost are carried by the
    first message only, and by none when the copy came from the cache (paid for earlier)."""
    template = template_generation(gen.decision) if gen.generator != "template" and fallback_to_template else None
    d = gen.decision
    rows = []
    # The checks read a name only for its length (``validate.problems``): one choice per length,
    # not per customer (1,000 checks took 0.4 s of a 100x campaign run).
    by_length: dict[int, Choice] = {}
    for i, customer in enumerate(customers):
        name = first_name(customer["firstname"])
        choice = by_length.get(len(name))
        if choice is None:
            choice = by_length[len(name)] = choose_copy(gen, name, fallback_to_template, template)
        sent = choice.copy
        paid = i == 0 and not from_cache
        rows.append(
            MessageRow(
                str(uuid.uuid4()),
                run_id,
                customer["user_id"],
                customer["canal"],
                d.style,
                ",".join(d.languages),
                d.offer,
                d.urgency,
                d.season,
                sent.subject if sent else None,
                json.dumps(personalize(sent.texts, name) if sent else {}, ensure_ascii=False),
                sent.generator if sent else gen.generator,
                prompt_version,
                key,
                gen.input_tokens if paid else 0,
                gen.output_tokens if paid else 0,
                gen.cost_usd if paid else 0.0,
                choice.status,
                choice.detail,
                clock(),
                None,
                choice.model_error,
            )
        )
    return rows


def as_values(row: MessageRow) -> list:
    return list(astuple(row))
