"""Time, as the warehouse keeps it: naive UTC datetimes; and the landing files' timestamp format."""

from __future__ import annotations

from datetime import datetime, timezone

# How every landing file writes a timestamp (``06-02-2023 06:49:21``): the parser, the SQL
# (DuckDB's strptime takes the same codes) and the generator all use this one format.
LANDING_TS_FORMAT = "%m-%d-%Y %H:%M:%S"


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (how the warehouse stores instants)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def from_epoch(seconds: float) -> datetime:
    """A Unix timestamp (a file's mtime, a run's start) as a naive UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None)


def parse_as_of(value: str | None) -> datetime:
    """Parse ``CHURN_AS_OF`` (ISO date or date-time); empty or ``now`` means the wall clock.

    Returned as a naive UTC datetime, which is how every timestamp in the warehouse is kept.
    """
    if value is None or value.strip() == "" or value.strip().lower() == "now":
        return utcnow().replace(microsecond=0)
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
