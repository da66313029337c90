"""When to retrain and when a challenger may replace the champion (pure: numbers in, decisions out)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    reason: str  # why not, in words ("" when training)


def trains_every_cycle(min_new_rows: int, force: bool = False) -> bool:
    """Whether the decision is to train whatever the store holds: forced, or 0 new rows asked."""
    return force or min_new_rows == 0


def retrain_decision(
    landed_rows: int, last_version: str | None, last_landed_rows: int, min_new_rows: int, force: bool = False
) -> RetrainDecision:
    """Train when forced, when no model is registered yet, or once ``min_new_rows`` bronze rows
    have landed since the last registered version (0: every cycle)."""
    since = landed_rows - last_landed_rows if last_version is not None else landed_rows
    if last_version is None or trains_every_cycle(min_new_rows, force) or since >= min_new_rows:
        return RetrainDecision(True, "")
    return RetrainDecision(False, f"{since} new rows since version {last_version}, retraining at {min_new_rows}")


def better_than_chance(auc: float, min_auc: float) -> bool:
    """At or above the floor: a model below it is never considered for promotion."""
    return auc >= min_auc


def promote(challenger_auc: float, champion_auc: float | None, tolerance: float, min_auc: float) -> bool:
    """Promote a challenger above the chance floor when there is no champion, or when it is
    not worse than the champion on the same holdout rows by more than ``tolerance``."""
    if not better_than_chance(challenger_auc, min_auc):
        return False
    return champion_auc is None or challenger_auc >= champion_auc - tolerance
