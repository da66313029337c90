"""Alerts: recorded once per (kind, run) in a SQLite file every process may write to
(the DuckDB warehouse has one writer, and a running cycle holds it), then delivered to a
webhook (CHURN_ALERT_WEBHOOK) and to Slack through dagster-slack when configured.

Delivery is at-least-once per target and bounded in time: each attempt has a short
timeout, retries back off, and one call never spends more than ``tick_budget_seconds``
on the network, so a hanging webhook cannot stall a sensor. An alert not delivered yet
stays pending in the store and is re-sent by later sensor ticks until every configured
target took it (``delivered_at``) or it is older than ``expire_after_hours``
(``expired_at``); ``attempts`` and ``last_error`` say how it went. The webhook body
carries ``alert_id`` (also the ``Idempotency-Key`` header) so a receiver can drop a
duplicate after a reply lost in transit."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

# Columns added after the first release of the store (an existing alerts.db is upgraded).
_DELIVERY_COLUMNS = {
    "state": "TEXT NOT NULL DEFAULT 'delivered'",  # pending | delivered | expired; old rows were sent once
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "last_error": "TEXT NOT NULL DEFAULT ''",
    "delivered_at": "TEXT",
    "expired_at": "TEXT",
    "failed_ticks": "INTEGER NOT NULL DEFAULT 0",
    "next_attempt_at": "REAL NOT NULL DEFAULT 0",  # epoch seconds: not re-sent before
    "claimed_until": "REAL NOT NULL DEFAULT 0",  # epoch seconds: a tick is sending it
}


@dataclass
class Alert:
    kind: str  # failure | slow | mode_switch | warning
    job_name: str
    run_id: str
    reason: str
    link: str
    alert_id: str = ""
    raised_at: str = ""


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard delivery tries. Every number bounds time; none is a count of lost alerts."""

    timeout_seconds: float = 3.0  # one HTTP attempt (connect, and each read)
    tick_budget_seconds: float = 10.0  # all network time of one call (one sensor tick)
    attempts_per_tick: int = 3  # tries of one alert within one tick, with backoff between
    backoff_seconds: float = 0.5  # first pause between tries in a tick, doubled each time
    retry_after_seconds: float = 5.0  # first wait before a later tick re-sends, doubled per failed tick
    retry_after_max_seconds: float = 600.0
    expire_after_hours: float = 24.0


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    out_of_budget: bool = False


def duration_verdict(
    duration: float, history: list[float], factor: float, min_history: int, ceiling: float
) -> str | None:
    """Why a run of ``duration`` seconds is abnormally long, or None.

    Long past ``factor`` x the median of the job's recent successful runs (once there are
    ``min_history`` of them), or past a fixed ``ceiling`` (0 = none).
    """
    if ceiling and duration > ceiling:
        return f"running {duration:.0f}s, past the ceiling of {ceiling:.0f}s"
    if len(history) >= min_history:
        median = statistics.median(history)
        if median > 0 and duration > factor * median:
            return (
                f"running {duration:.0f}s, more than {factor:g} x the median {median:.1f}s "
                f"of the last {len(history)} successful runs"
            )
    return None


def retry_wait(failed_ticks: int, policy: DeliveryPolicy) -> float:
    """Seconds before a later tick re-sends an alert that failed ``failed_ticks`` ticks in a row."""
    return min(policy.retry_after_max_seconds, policy.retry_after_seconds * 2 ** max(0, failed_ticks - 1))


def expiry_cutoff(now: datetime, policy: DeliveryPolicy) -> datetime:
    """Alerts raised before this are no longer worth sending."""
    return now - timedelta(hours=policy.expire_after_hours)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class AlertStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS alerts (alert_id TEXT PRIMARY KEY, raised_at TEXT, kind TEXT,
                   job_name TEXT,
                   run_id TEXT, reason TEXT, link TEXT, delivered_to TEXT, UNIQUE (kind, run_id))"""
            )
            have = {r[1] for r in db.execute("PRAGMA table_info(alerts)")}
            for name, decl in _DELIVERY_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {decl}")

    @contextmanager
    def _connect(self):
        """One transaction on a connection that is closed afterwards (committed unless it raised)."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def record(self, alert: Alert) -> bool:
        """True when this (kind, run) had no alert yet: only then is it delivered."""
        alert.alert_id = alert.alert_id or str(uuid.uuid4())
        alert.raised_at = alert.raised_at or _utcnow().isoformat(timespec="seconds")
        with self._connect() as db:
            cur = db.execute(
                """INSERT OR IGNORE INTO alerts
                   (alert_id, raised_at, kind, job_name, run_id, reason, link, delivered_to, state)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 'table', 'pending')""",
                [alert.alert_id, alert.raised_at, alert.kind, alert.job_name, alert.run_id, alert.reason, alert.link],
            )
            return cur.rowcount == 1

    def due(self, now: float) -> list[str]:
        """Ids of pending alerts due for an attempt, oldest first."""
        with self._connect() as db:
            return [
                r[0]
                for r in db.execute(
                    "SELECT alert_id FROM alerts WHERE state = 'pending' "
                    "AND next_attempt_at <= ? AND claimed_until <= ? "
                    "ORDER BY raised_at",
                    [now, now],
                )
            ]

    def claim(self, alert_id: str, now: float, lease_seconds: float) -> tuple[Alert, list[str], int] | None:
        """Lease one pending alert to this caller, so that a concurrent tick does not send it
        too: (alert, targets it already reached, ticks that failed), or None if taken."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            cur = db.execute(
                "UPDATE alerts SET claimed_until = ? WHERE alert_id = ? AND state = 'pending' AND claimed_until <= ?",
                [now + lease_seconds, alert_id, now],
            )
            if cur.rowcount != 1:
                return None
            row = db.execute("SELECT * FROM alerts WHERE alert_id = ?", [alert_id]).fetchone()
        alert = Alert(
            row["kind"], row["job_name"], row["run_id"], row["reason"], row["link"], row["alert_id"], row["raised_at"]
        )
        return alert, [t for t in (row["delivered_to"] or "").split(",") if t], int(row["failed_ticks"])

    def attempted(
        self, alert_id: str, delivered_to: list[str], tries: int, error: str, *, done: bool, next_attempt_at: float
    ) -> None:
        """Record one tick's tries of an alert and release its lease."""
        failed = 1 if tries and not done else 0
        with self._connect() as db:
            db.execute(
                """UPDATE alerts SET delivered_to = ?, attempts = attempts + ?, failed_ticks = failed_ticks + ?,
                   last_error = ?, claimed_until = 0, next_attempt_at = ?,
                   state = CASE WHEN ? THEN 'delivered' ELSE state END,
                   delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END
                   WHERE alert_id = ?""",
                [
                    ",".join(delivered_to),
                    tries,
                    failed,
                    error[:500],
                    next_attempt_at,
                    done,
                    done,
                    _utcnow().isoformat(timespec="seconds"),
                    alert_id,
                ],
            )

    def expire_older_than(self, cutoff: datetime, now: float) -> list[dict]:
        """Give up on pending alerts raised before ``cutoff``; returns them (recorded as expired)."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = [
                dict(r)
                for r in db.execute(
                    "SELECT * FROM alerts WHERE state = 'pending' AND raised_at < ? AND claimed_until <= ?",
                    [cutoff.isoformat(timespec="seconds"), now],
                )
            ]
            db.executemany(
                "UPDATE alerts SET state = 'expired', expired_at = ? "
                "WHERE alert_id = ? AND state = 'pending' AND claimed_until <= ?",
                [[_utcnow().isoformat(timespec="seconds"), r["alert_id"], now] for r in rows],
            )
        return rows

    def all(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM alerts ORDER BY raised_at DESC")]


Sender = Callable[[Alert, float], None]  # (alert, timeout seconds); raises when not delivered


def deliver_due(
    store: AlertStore, senders: dict[str, Sender], policy: DeliveryPolicy, log=None, first: str | None = None
) -> DeliveryReport:
    """One tick of delivery: every due pending alert to every target it has not reached yet,
    retried with backoff, all within ``policy.tick_budget_seconds`` of network time.

    ``senders`` maps a target name to a function (alert, timeout) that raises on failure.
    An alert still pending afterwards waits ``retry_wait`` and is re-sent by a later tick.
    """
    report = DeliveryReport()
    deadline = time.monotonic() + policy.tick_budget_seconds
    for row in store.expire_older_than(expiry_cutoff(_utcnow(), policy), time.time()):
        report.expired.append(row["alert_id"])
        if log:
            log.warning(
                f"alert {row['kind']} for run {row['run_id']} expired undelivered after {row['attempts']} "
                f"attempts (last error: {row['last_error'] or 'none'})"
            )
    lease = policy.tick_budget_seconds + policy.timeout_seconds + 30
    due = store.due(time.time())
    if first in due:
        due.remove(first)
        due.insert(0, first)
    for alert_id in due:
        if deadline - time.monotonic() <= 0.05:
            report.out_of_budget = True
            report.pending.append(alert_id)
            continue
        claimed = store.claim(alert_id, time.time(), lease)
        if claimed is None:
            continue  # another tick has it
        alert, reached, failed_ticks = claimed
        tries, error = 0, ""
        for target, send in senders.items():
            if target in reached:
                continue
            for i in range(max(1, policy.attempts_per_tick)):
                remaining = deadline - time.monotonic()
                if remaining <= 0.05:
                    report.out_of_budget = True
                    break
                tries += 1
                try:
                    send(alert, min(policy.timeout_seconds, remaining))
                    reached.append(target)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure means: not delivered yet
                    error = f"{target}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    pause = policy.backoff_seconds * 2**i
                    if i + 1 >= policy.attempts_per_tick or time.monotonic() + pause >= deadline:
                        break
                    time.sleep(pause)
        done = all(t in reached for t in senders)
        wait = 0.0 if done or not tries else retry_wait(failed_ticks + 1, policy)
        store.attempted(
            alert.alert_id, reached, tries, "" if done else error, done=done, next_attempt_at=time.time() + wait
        )
        (report.delivered if done else report.pending).append(alert.alert_id)
        if log and done and tries:
            log.info(f"alert {alert.kind} for run {alert.run_id} delivered to {', '.join(reached)}")
        elif log and not done:
            log.warning(
                f"alert {alert.kind} for run {alert.run_id} not delivered yet "
                f"({error or 'out of time this tick'}); "
                f"re-sent by a later tick in {wait:.0f}s"
            )
    return report


def post_json(url: str, body: dict, timeout: float, headers: dict | None = None) -> None:
    """POST ``body`` as JSON; raises unless the answer is 2xx within ``timeout`` per socket operation."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # 4xx/5xx raise HTTPError
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}")


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: the alerts store always; the webhook and Slack when set."""

    store_path: str
    webhook_url: str | None = None
    slack_token: str | None = None
    slack_channel: str | None = None
    ui_url: str
    # Delivery bounds (see DeliveryPolicy): one attempt, one tick, and how long to keep trying.
    timeout_seconds: float
    tick_budget_seconds: float
    retry_after_seconds: float
    expire_after_hours: float

    @classmethod
    def from_settings(cls, settings, **overrides) -> AlertsResource:
        values = {
            "store_path": str(settings.alerts_db),
            "webhook_url": settings.secret("alert_webhook"),
            "slack_token": settings.secret("slack_bot_token"),
            "slack_channel": settings.slack_channel,
            "ui_url": settings.ui_url,
            "timeout_seconds": settings.alert_timeout_seconds,
            "tick_budget_seconds": settings.alert_tick_budget_seconds,
            "retry_after_seconds": settings.alert_retry_after_seconds,
            "expire_after_hours": settings.alert_expire_hours,
        }
        return cls(**{**values, **overrides})

    def store(self) -> AlertStore:
        return AlertStore(Path(self.store_path))

    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(
            timeout_seconds=self.timeout_seconds,
            tick_budget_seconds=self.tick_budget_seconds,
            retry_after_seconds=self.retry_after_seconds,
            expire_after_hours=self.expire_after_hours,
        )

    def link(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def senders(self) -> dict[str, Sender]:
        senders: dict[str, Sender] = {}
        if self.webhook_url:
            url = self.webhook_url

            def webhook(alert: Alert, timeout: float) -> None:
                # The id as idempotency key: a receiver can drop the copy sent after a lost reply.
                post_json(url, asdict(alert), timeout, {"Idempotency-Key": alert.alert_id})

            senders["webhook"] = webhook
        if self.slack_token and self.slack_channel:
            token, channel = self.slack_token, self.slack_channel

            def slack(alert: Alert, timeout: float) -> None:
                from dagster_slack import SlackResource

                client = SlackResource(token=token).get_client()
                client.timeout = timeout
                client.chat_postMessage(
                    channel=channel,
                    text=f":rotating_light: {alert.kind} · {alert.job_name} · {alert.reason}\n{alert.link}",
                )

            senders["slack"] = slack
        return senders

    def raise_alert(
        self, kind: str, job_name: str, run_id: str, reason: str, log=None, *, deliver: bool = True
    ) -> bool:
        """Record an alert once per (kind, run) and deliver it (with any other due one) within
        one tick's budget; False when it was already raised. ``deliver=False`` only records:
        the caller delivers once for several alerts with ``deliver_pending``."""
        alert = Alert(kind, job_name, run_id, reason[:2000], self.link(run_id) if run_id else self.ui_url)
        store = self.store()
        if not store.record(alert):
            return False  # already raised for this run
        if log:
            log.info(f"alert {kind} for run {run_id}: {reason}")
        if deliver:
            deliver_due(store, self.senders(), self.policy(), log, first=alert.alert_id)
        return True

    def deliver_pending(self, log=None) -> DeliveryReport:
        """Re-send the alerts not delivered yet whose retry time has come (one tick's budget)."""
        return deliver_due(self.store(), self.senders(), self.policy(), log)
