"""Who writes the words: Claude through the official SDK, or the offline templates.

Claude: the SDK retries 408/409/429/5xx and timeouts with backoff and obeys retry-after;
a 429 that says the spend limit is reached stops every further call at once. A text that
fails validation gets one corrective turn; after that the caller falls back to the
template. Every call's cost is reserved against the run's budget before it is made.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.generation import Generation
from churn_assets.defs.campaigns.prompts import RULES, corrective_message, parse_answer, system_blocks, user_message
from churn_assets.defs.campaigns.validate import problems

if TYPE_CHECKING:  # the SDK is imported where a call is made: every run and sensor tick loads this module
    import anthropic


@dataclass
class Prices:
    input_per_mtok: float = 1.0
    output_per_mtok: float = 5.0
    cache_write_per_mtok: float = 1.25
    cache_read_per_mtok: float = 0.10

    def cost(self, usage) -> float:
        return (
            (getattr(usage, "input_tokens", 0) or 0) * self.input_per_mtok
            + (getattr(usage, "output_tokens", 0) or 0) * self.output_per_mtok
            + (getattr(usage, "cache_creation_input_tokens", 0) or 0) * self.cache_write_per_mtok
            + (getattr(usage, "cache_read_input_tokens", 0) or 0) * self.cache_read_per_mtok
        ) / 1_000_000


class Budget:
    """Spend so far plus spend reserved by calls in flight never exceeds the limit."""

    def __init__(self, limit_usd: float):
        self.limit = limit_usd
        self.spent = 0.0
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> bool:
        with self._lock:
            if self.spent + self.reserved + amount > self.limit:
                return False
            self.reserved += amount
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved -= reserved
            self.spent += actual


def is_spend_limit(exc: anthropic.APIStatusError) -> bool:
    text = str(getattr(exc, "message", "") or exc).lower()
    return exc.status_code == 429 and any(
        w in text for w in ("spend limit", "credit balance", "billing", "usage limit")
    )


class ClaudeWriter:
    def __init__(self, client: anthropic.Anthropic, model: str, prices: Prices, budget: Budget, max_tokens: int = 700):
        self.client = client
        self.model = model
        self.prices = prices
        self.budget = budget
        self.max_tokens = max_tokens
        self.stopped = threading.Event()  # set once the spend limit answers
        self.stop_reason: str | None = None
        # Worst case of one call: the whole rules prompt uncached, plus max_tokens out.
        self._estimate = (
            len(RULES) / 3 + 200
        ) * prices.cache_write_per_mtok / 1e6 + max_tokens * prices.output_per_mtok / 1e6

    def write(self, decision: Decision) -> Generation:
        import anthropic

        gen = Generation(decision, self.model, "failed")
        messages = [{"role": "user", "content": user_message(decision)}]
        for _attempt in (1, 2):
            if self.stopped.is_set():
                gen.status, gen.detail, gen.error = "skipped_budget", self.stop_reason, "spend limit"
                return gen
            if not self.budget.reserve(self._estimate):
                gen.status, gen.detail, gen.error = "skipped_budget", "run budget reached", "run budget"
                return gen
            response = None
            try:
                response = self.client.messages.create(
                    model=self.model, max_tokens=self.max_tokens, system=system_blocks(), messages=messages
                )
            except anthropic.RateLimitError as exc:
                if is_spend_limit(exc):
                    self.stop_reason = f"spend limit reached: {exc.message}"
                    self.stopped.set()
                    gen.status, gen.detail, gen.error = "skipped_budget", self.stop_reason, "spend limit"
                else:
                    gen.status, gen.error = "failed", "HTTP 429"
                    gen.detail = f"rate limited after retries: {exc.message}"
                return gen
            except anthropic.APIStatusError as exc:
                gen.status, gen.error = "failed", f"HTTP {exc.status_code}"
                gen.detail = f"HTTP {exc.status_code} after retries"
                return gen
            except anthropic.APIConnectionError as exc:  # APITimeoutError included
                kind = "timeout" if isinstance(exc, anthropic.APITimeoutError) else "connection error"
                gen.status, gen.detail, gen.error = "failed", f"{type(exc).__name__} after retries", kind
                return gen
            finally:
                # Failed calls are not billed; answered ones cost what their usage says.
                actual = self.prices.cost(response.usage) if response is not None else 0.0
                self.budget.settle(self._estimate, actual)
            gen.api_calls += 1
            gen.input_tokens += (
                (response.usage.input_tokens or 0)
                + (getattr(response.usage, "cache_read_input_tokens", 0) or 0)
                + (getattr(response.usage, "cache_creation_input_tokens", 0) or 0)
            )
            gen.output_tokens += response.usage.output_tokens or 0
            gen.cost_usd += actual
            if response.stop_reason == "refusal":
                gen.status, gen.detail, gen.error = "refused", "the model declined to write this copy", "refused"
                return gen
            text = "".join(getattr(block, "text", "") for block in response.content)
            try:
                subject, texts = parse_answer(text)
                wrong = problems(decision, subject, texts)
            except ValueError as exc:
                subject, texts, wrong = None, {}, [f"unreadable answer ({exc})"]
            gen.checked += 1
            if not wrong:
                gen.passed += 1
                gen.status, gen.subject, gen.texts, gen.error = "ok", subject, texts, None
                return gen
            gen.status, gen.detail, gen.error = "invalid", "; ".join(wrong)[:500], "invalid copy"
            messages += [
                {"role": "assistant", "content": text or "(empty)"},
                {"role": "user", "content": corrective_message(wrong)},
            ]
        return gen
