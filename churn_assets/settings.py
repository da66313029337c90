"""Process-wide settings, read from the environment with documented defaults.

Only two settings matter to run the project: ``CHURN_HOME`` (the data root) and
``CHURN_AS_OF`` (the instant day counts are measured against). Everything else has a
default that works on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SOURCES = ("users", "orders", "events")

def churn_home() -> Path:
    return Path(os.environ.get("CHURN_HOME", "./data")).expanduser().resolve()


def warehouse_path(home: Path | None = None) -> Path:
    return (home or churn_home()) / "warehouse.duckdb"


def landing_dir(home: Path | None = None) -> Path:
    return (home or churn_home()) / "landing"


def parse_as_of(value: str | None) -> datetime:
    """Parse ``CHURN_AS_OF`` (ISO date or date-time); empty or ``now`` means the wall clock.

    Returned as a naive UTC datetime, which is how every timestamp in the warehouse is kept.
    """
    if value is None or value.strip() == "" or value.strip().lower() == "now":
        return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"CHURN_AS_OF={value!r} is not an ISO date or date-time (e.g. 2023-06-10 or 2023-06-10T12:00:00)"
        ) from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def as_of() -> datetime:
    return parse_as_of(os.environ.get("CHURN_AS_OF"))


@dataclass(frozen=True)
class IngestSettings:
    # A file is taken only once it has not been modified for this long: writers that do
    # not rename into place (cp, rsync, Spark) are still writing while the mtime moves.
    settle_seconds: float = field(default_factory=lambda: float(os.environ.get("CHURN_SETTLE_SECONDS", "2")))
    # Files loaded in one transaction (bounded so that memory does not follow history).
    batch_bytes: int = field(default_factory=lambda: int(os.environ.get("CHURN_BATCH_BYTES", str(256 * 1024 * 1024))))
