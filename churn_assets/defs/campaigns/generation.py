"""A generated copy and where it came from (kept free of the SDK: imported by every run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.templates import template_copy
from churn_assets.defs.campaigns.validate import problems


@dataclass
class Generation:
    decision: Decision
    generator: str
    status: str  # ok | invalid | refused | failed | skipped_budget
    subject: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    detail: str | None = None
    error: str | None = None  # why the model's copy is missing: "HTTP 500", "timeout", "refused", "invalid copy"...
    checked: int = 0  # model answers checked against the copy rules, and how many passed
    passed: int = 0


def template_generation(decision: Decision) -> Generation:
    subject, texts = template_copy(decision)
    return Generation(decision, "template", "ok", subject, texts)


def offline_generation(decision: Decision) -> Generation:
    """The template for a decision when there is no model, checked like a model's answer."""
    gen = template_generation(decision)
    gen.checked, gen.passed = 1, int(not problems(gen.decision, gen.subject, gen.texts))
    return gen
