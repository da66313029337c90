"""Cadence and monitoring settings (environment, with defaults that work as they are)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _f(name: str, default: str) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Cadence:
    cron: str = field(default_factory=lambda: os.environ.get("CHURN_SCHEDULE_CRON", "0 * * * *"))
    timezone: str = field(default_factory=lambda: os.environ.get("CHURN_SCHEDULE_TIMEZONE", "UTC"))
    sensor_interval_seconds: int = field(default_factory=lambda: int(_f("CHURN_SENSOR_INTERVAL_SECONDS", "3")))
    # Continuous mode: the expensive steps run only when due.
    retrain_every_minutes: float = field(default_factory=lambda: _f("CHURN_CONTINUOUS_RETRAIN_MINUTES", "60"))
    campaign_every_minutes: float = field(default_factory=lambda: _f("CHURN_CONTINUOUS_CAMPAIGN_MINUTES", "60"))
    # Runs of the cycle queued or in progress at most: a trigger skips beyond it (no pile-up).
    max_pending_runs: int = field(default_factory=lambda: int(_f("CHURN_MAX_PENDING_RUNS", "1")))
    # Auto mode: files per minute that switch to continuous, and the quiet period back.
    auto_up_files_per_minute: float = field(default_factory=lambda: _f("CHURN_AUTO_UP_FILES_PER_MINUTE", "1.0"))
    auto_window_minutes: float = field(default_factory=lambda: _f("CHURN_AUTO_WINDOW_MINUTES", "10"))
    auto_quiet_minutes: float = field(default_factory=lambda: _f("CHURN_AUTO_QUIET_MINUTES", "30"))


@dataclass(frozen=True)
class Monitoring:
    # A run is abnormally long past factor x the median of the job's last successful runs...
    duration_factor: float = field(default_factory=lambda: _f("CHURN_ALERT_DURATION_FACTOR", "3"))
    duration_history_runs: int = field(default_factory=lambda: int(_f("CHURN_ALERT_DURATION_HISTORY", "10")))
    duration_min_history: int = field(default_factory=lambda: int(_f("CHURN_ALERT_DURATION_MIN_HISTORY", "3")))
    # ...or past this ceiling in seconds (0 = none). Neither stops the run.
    duration_ceiling_seconds: float = field(default_factory=lambda: _f("CHURN_ALERT_DURATION_CEILING_SECONDS", "1800"))
    # The hard timeout (dagster/max_runtime, enforced by run monitoring).
    max_runtime_seconds: int = field(default_factory=lambda: int(_f("CHURN_MAX_RUNTIME_SECONDS", "3600")))
    ui_url: str = field(default_factory=lambda: os.environ.get("CHURN_UI_URL", "http://127.0.0.1:3000"))
