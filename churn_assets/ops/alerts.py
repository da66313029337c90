"""Alerts: recorded once per (kind, run) in a SQLite file every process may write to
(the DuckDB warehouse has one writer, and a running cycle holds it), then sent to a
webhook (CHURN_ALERT_WEBHOOK) and to Slack through dagster-slack when configured."""

from __future__ import annotations

import json
import sqlite3
import statistics
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg


@dataclass
class Alert:
    kind: str  # failure | slow | mode_switch
    job_name: str
    run_id: str
    reason: str
    link: str
    alert_id: str = ""
    raised_at: str = ""


def duration_verdict(duration: float, history: list[float], factor: float, min_history: int, ceiling: float) -> str | None:
    """Why a run of ``duration`` seconds is abnormally long, or None.

    Long past ``factor`` x the median of the job's recent successful runs (once there are
    ``min_history`` of them), or past a fixed ``ceiling`` (0 = none).
    """
    if ceiling and duration > ceiling:
        return f"running {duration:.0f}s, past the ceiling of {ceiling:.0f}s"
    if len(history) >= min_history:
        median = statistics.median(history)
        if median > 0 and duration > factor * median:
            return f"running {duration:.0f}s, more than {factor:g} x the median {median:.1f}s of the last {len(history)} successful runs"
    return None


class AlertStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS alerts (alert_id TEXT PRIMARY KEY, raised_at TEXT, kind TEXT, job_name TEXT,
                   run_id TEXT, reason TEXT, link TEXT, delivered_to TEXT, UNIQUE (kind, run_id))"""
            )

    def _connect(self):
        return sqlite3.connect(self.path, timeout=30)

    def record(self, alert: Alert) -> bool:
        """True when this (kind, run) had no alert yet: only then is it delivered."""
        alert.alert_id = alert.alert_id or str(uuid.uuid4())
        alert.raised_at = alert.raised_at or datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, '')",
                [alert.alert_id, alert.raised_at, alert.kind, alert.job_name, alert.run_id, alert.reason, alert.link],
            )
            return cur.rowcount == 1

    def mark_delivered(self, alert: Alert, targets: list[str]) -> None:
        with self._connect() as db:
            db.execute("UPDATE alerts SET delivered_to = ? WHERE alert_id = ?", [",".join(targets), alert.alert_id])

    def all(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM alerts ORDER BY raised_at DESC")]


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go: the alerts store always; the webhook and Slack when set."""

    store_path: str
    webhook_url: str | None = None
    slack_token: str | None = None
    slack_channel: str | None = None
    ui_url: str

    @classmethod
    def from_settings(cls, settings) -> AlertsResource:
        return cls(store_path=str(settings.alerts_db), webhook_url=settings.secret("alert_webhook"),
                   slack_token=settings.secret("slack_bot_token"), slack_channel=settings.slack_channel,
                   ui_url=settings.ui_url)

    def store(self) -> AlertStore:
        return AlertStore(Path(self.store_path))

    def link(self, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}"

    def raise_alert(self, kind: str, job_name: str, run_id: str, reason: str, log=None) -> bool:
        alert = Alert(kind, job_name, run_id, reason[:2000], self.link(run_id) if run_id else self.ui_url)
        store = self.store()
        if not store.record(alert):
            return False  # already raised for this run
        delivered = ["table"]
        if self.webhook_url:
            try:
                request = urllib.request.Request(
                    self.webhook_url, data=json.dumps(asdict(alert)).encode(), headers={"content-type": "application/json"}, method="POST"
                )
                urllib.request.urlopen(request, timeout=5).close()
                delivered.append("webhook")
            except Exception as exc:  # noqa: BLE001 - an unreachable webhook must not hide the alert
                if log:
                    log.warning(f"alert webhook failed: {type(exc).__name__}")
        if self.slack_token and self.slack_channel:
            try:
                from dagster_slack import SlackResource

                SlackResource(token=self.slack_token).get_client().chat_postMessage(
                    channel=self.slack_channel, text=f":rotating_light: {kind} · {job_name} · {reason}\n{alert.link}"
                )
                delivered.append("slack")
            except Exception as exc:  # noqa: BLE001
                if log:
                    log.warning(f"alert to Slack failed: {type(exc).__name__}")
        store.mark_delivered(alert, delivered)
        if log:
            log.info(f"alert {kind} for run {run_id}: {reason} -> {', '.join(delivered)}")
        return True
