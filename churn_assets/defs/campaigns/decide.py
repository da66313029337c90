"""What each message says is decided here, in code; the model only writes the words.

The rules (shared/reference/campaign-rules.md) and the precedence chosen where they conflict:
- style: PHONE and MOBILE get short copy (SMS/push, <= 160 characters a version); WEBAPP
  and an unknown channel get long, e-mail style copy with a subject.
- languages: English always; a second version in the country's language where it is not
  English-speaking (FR -> French, SPAIN -> Spanish).
- offer: rules 5 to 7 each vote (last order under $100 -> discount, over -> free shipping;
  fewer than 5 items -> bundle, more -> free shipping; under 30 days since the last order
  -> discount, over -> free shipping; exactly $100, 5 items or 30 days cast no vote). The
  majority wins; a tie goes to free shipping, then discount, then bundle (free shipping
  removes the most friction for a customer about to leave).
- urgency: every targeted customer is predicted to churn, so urgent; the copy never says why.
- season: the as-of date's season in the customer's hemisphere.
Identical decisions share one generated text (a cache keyed on them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date

SHORT_CHANNELS = {"PHONE", "MOBILE"}
SECOND_LANGUAGE = {"FR": "fr", "SPAIN": "es"}
SOUTHERN_HEMISPHERE = {"AU", "NZ", "AR", "BR", "CL", "ZA", "UY"}
OFFER_TIE_ORDER = ["free_shipping", "discount", "bundle"]


@dataclass(frozen=True)
class Decision:
    style: str  # "short" | "long"
    languages: tuple[str, ...]
    offer: str  # "discount" | "free_shipping" | "bundle"
    urgency: str  # "urgent" | "normal"
    season: str  # "winter" | "spring" | "summer" | "autumn"

    def key(self, prompt_version: str, model: str) -> str:
        payload = json.dumps({"v": prompt_version, "m": model, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def style_for(canal: str | None) -> str:
    return "short" if canal in SHORT_CHANNELS else "long"


def languages_for(country: str | None) -> tuple[str, ...]:
    second = SECOND_LANGUAGE.get(country or "")
    return ("en", second) if second else ("en",)


def offer_votes(last_amount: float, last_items: int, days_since_last_order: int) -> list[str]:
    votes = []
    if last_amount < 100:
        votes.append("discount")
    elif last_amount > 100:
        votes.append("free_shipping")
    if last_items < 5:
        votes.append("bundle")
    elif last_items > 5:
        votes.append("free_shipping")
    if days_since_last_order < 30:
        votes.append("discount")
    elif days_since_last_order > 30:
        votes.append("free_shipping")
    return votes


def offer_for(last_amount: float, last_items: int, days_since_last_order: int) -> str:
    votes = offer_votes(last_amount, last_items, days_since_last_order)
    if not votes:
        return "discount"
    return max(OFFER_TIE_ORDER, key=lambda o: (votes.count(o), -OFFER_TIE_ORDER.index(o)))


def season_for(day: date, country: str | None) -> str:
    northern = [
        "winter",
        "winter",
        "spring",
        "spring",
        "spring",
        "summer",
        "summer",
        "summer",
        "autumn",
        "autumn",
        "autumn",
        "winter",
    ]
    season = northern[day.month - 1]
    if (country or "") in SOUTHERN_HEMISPHERE:
        season = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}[season]
    return season


def decide(
    *,
    canal: str | None,
    country: str | None,
    last_amount: float,
    last_items: int,
    days_since_last_order: int,
    at_risk: bool,
    today: date,
) -> Decision:
    return Decision(
        style=style_for(canal),
        languages=languages_for(country),
        offer=offer_for(last_amount, last_items, days_since_last_order),
        urgency="urgent" if at_risk else "normal",
        season=season_for(today, country),
    )
