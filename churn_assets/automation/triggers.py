"""What starts the cycle, and what watches it.

Two cadences, exactly one of them on at a time (``churn mode``):
- ``churn_hourly`` (schedule, on by default): every hour, the whole cycle.
- ``churn_landing_sensor`` (off by default): every few seconds, complete new landing
  files -> one run for all of them; retraining and the campaign only when due.
- ``churn_auto_cadence`` (off by default): watches the arrival rate and behaves as one or
  the other, with hysteresis; each switch is logged and alerted.
Watching: ``churn_failure_alerts`` and ``churn_duration_alerts`` (on by default).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from churn_assets.automation.alerts import AlertsResource, duration_verdict
from churn_assets.automation.jobs import churn_cycle
from churn_assets.automation.settings import Cadence, Monitoring
from churn_assets.bronze.ingest import discover
from churn_assets.resources import LandingZoneResource
from churn_assets.settings import SOURCES

CADENCE = Cadence()
MONITORING = Monitoring()
PENDING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
TRAINING = [dg.AssetKey(["ml", "churn_model"]), dg.AssetKey(["ml", "churn_model_champion"])]
CAMPAIGN = [dg.AssetKey(["campaigns", "retention_messages"])]


# --- pure decisions ----------------------------------------------------------------------------------


def new_files(landing_root: Path, after: tuple[float, str] | None, settle_seconds: float, now: float) -> list:
    """Complete landing files newer than the cursor (mtime, path), oldest first.

    Only a trigger: a file the cursor passes over (landed with an old mtime) is still
    ingested by the next run, since bronze reads its own manifest, not this cursor.
    """
    found = [f for s in SOURCES for f in discover(landing_root, s, set(), settle_seconds, now)]
    found = [f for f in found if after is None or (f.mtime, f.relpath) > tuple(after)]
    return sorted(found, key=lambda f: (f.mtime, f.relpath))


def run_key_for(files: list) -> str:
    return "files-" + hashlib.sha1("\n".join(sorted(f.relpath for f in files)).encode()).hexdigest()[:16]


def is_due(last_materialized: float | None, every_minutes: float, now: float) -> bool:
    return last_materialized is None or now - last_materialized >= every_minutes * 60


@dataclass
class AutoState:
    mode: str = "hourly"
    switched_at: float = 0.0


def auto_cadence(state: AutoState, arrivals: list[float], now: float, cadence: Cadence) -> tuple[AutoState, str | None]:
    """The effective cadence from the landing arrival times (file mtimes), with hysteresis:
    up to continuous when the rate over the window reaches the threshold; back to hourly
    only after a quiet period with no arrival at all."""
    window = cadence.auto_window_minutes * 60
    rate = sum(1 for t in arrivals if now - t <= window) / cadence.auto_window_minutes
    if state.mode == "hourly" and rate >= cadence.auto_up_files_per_minute:
        return AutoState("continuous", now), f"{rate:.1f} files/min over {cadence.auto_window_minutes:g} min >= {cadence.auto_up_files_per_minute:g}"
    last = max(arrivals, default=0.0)
    if state.mode == "continuous" and now - last >= cadence.auto_quiet_minutes * 60 and now - state.switched_at >= cadence.auto_quiet_minutes * 60:
        return AutoState("hourly", now), f"no file for {cadence.auto_quiet_minutes:g} min"
    return state, None


# --- helpers on the instance ---------------------------------------------------------------------


def default_after(instance: dg.DagsterInstance) -> tuple[float, str] | None:
    """Where a sensor without a cursor starts: after the files the last successful cycle
    could already see (its start), so switching to continuous does not replay history."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=churn_cycle.name, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    return (records[0].start_time, "") if records and records[0].start_time else None


def pending_runs(instance: dg.DagsterInstance) -> int:
    return len(instance.get_run_ids(dg.RunsFilter(job_name=churn_cycle.name, statuses=PENDING)))


def last_materialized(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    event = instance.get_latest_materialization_event(key)
    return event.timestamp if event else None


def continuous_selection(instance: dg.DagsterInstance, now: float) -> tuple[list[dg.AssetKey] | None, list[str]]:
    """Every asset, less retraining and the campaign when they are not due. (None = all.)"""
    skipped = []
    excluded: list[dg.AssetKey] = []
    if not is_due(last_materialized(instance, TRAINING[0]), CADENCE.retrain_every_minutes, now):
        excluded += TRAINING
        skipped.append("retraining")
    if not is_due(last_materialized(instance, CAMPAIGN[0]), CADENCE.campaign_every_minutes, now):
        excluded += CAMPAIGN
        skipped.append("campaign")
    if not excluded:
        return None, skipped
    from churn_assets.definitions import defs

    keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k not in excluded]
    return keys, skipped


def _request_for_files(context, files: list, trigger: str) -> dg.RunRequest:
    now = time.time()
    selection, skipped = continuous_selection(context.instance, now)
    return dg.RunRequest(
        run_key=run_key_for(files),
        asset_selection=selection,
        tags={"churn/trigger": trigger, "churn/files": str(len(files)), "churn/skipped": ",".join(skipped) or "none",
              "churn/newest_file_mtime": f"{files[-1].mtime:.3f}"},
    )


# --- the triggers --------------------------------------------------------------------------------


@dg.schedule(
    name="churn_hourly",
    job=churn_cycle,
    cron_schedule=CADENCE.cron,
    execution_timezone=CADENCE.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Efficient cycles: the whole cycle every hour (CHURN_SCHEDULE_CRON, CHURN_SCHEDULE_TIMEZONE). "
    "Skips a tick while a cycle is already pending, so runs never pile up.",
)
def churn_hourly(context: dg.ScheduleEvaluationContext):
    if pending_runs(context.instance) >= CADENCE.max_pending_runs:
        return dg.SkipReason("a cycle is already queued or running")
    return dg.RunRequest(tags={"churn/trigger": "hourly"})


@dg.sensor(
    name="churn_landing_sensor",
    job=churn_cycle,
    minimum_interval_seconds=CADENCE.sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Always-on: polls the landing zone; all complete new files go into one run (run key = the file "
    "set); never starts a run while a cycle is pending. Retraining and the campaign run only when due.",
)
def churn_landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
    after = json.loads(context.cursor) if context.cursor else default_after(context.instance)
    files = new_files(Path(landing.root), after, landing.settle_seconds, time.time())
    if not files:
        return dg.SkipReason("no new complete file")
    if pending_runs(context.instance) >= CADENCE.max_pending_runs:
        # The cursor stays: these files trigger the next run.
        return dg.SkipReason(f"{len(files)} new files wait: a cycle is already queued or running")
    context.update_cursor(json.dumps([files[-1].mtime, files[-1].relpath]))
    return _request_for_files(context, files, "landing_sensor")


@dg.sensor(
    name="churn_auto_cadence",
    job=churn_cycle,
    minimum_interval_seconds=CADENCE.sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Auto cadence: continuous while files arrive fast (CHURN_AUTO_UP_FILES_PER_MINUTE over "
    "CHURN_AUTO_WINDOW_MINUTES), back to hourly after CHURN_AUTO_QUIET_MINUTES without a file. Switches are alerted.",
)
def churn_auto_cadence(context: dg.SensorEvaluationContext, landing: LandingZoneResource, alerts: AlertsResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    state = AutoState(cursor.get("mode", "hourly"), cursor.get("switched_at", 0.0))
    now = time.time()
    files = new_files(Path(landing.root), None, 0, now)
    state, reason = auto_cadence(state, [f.mtime for f in files], now, CADENCE)
    if reason:
        context.log.info(f"cadence switched to {state.mode}: {reason}")
        alerts.raise_alert("mode_switch", churn_cycle.name, f"auto-{int(now)}", f"cadence switched to {state.mode}: {reason}", context.log)
    after = cursor.get("after") or default_after(context.instance)
    request = None
    if pending_runs(context.instance) < CADENCE.max_pending_runs:
        if state.mode == "continuous":
            fresh = new_files(Path(landing.root), after, landing.settle_seconds, now)
            if fresh:
                after = [fresh[-1].mtime, fresh[-1].relpath]
                request = _request_for_files(context, fresh, "auto_continuous")
        else:
            hour = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H")
            if cursor.get("last_hour") != hour:
                cursor["last_hour"] = hour
                request = dg.RunRequest(run_key=f"auto-hourly-{hour}", tags={"churn/trigger": "auto_hourly"})
    context.update_cursor(json.dumps({**cursor, "mode": state.mode, "switched_at": state.switched_at, "after": after}))
    return request or dg.SkipReason(f"auto cadence: {state.mode}, nothing to start")


@dg.run_failure_sensor(
    name="churn_failure_alerts",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One alert per failed run (run id, job, reason, link): alerts table, webhook, Slack.",
)
def churn_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertsResource):
    run = context.dagster_run
    reason = context.failure_event.message or "run failed"
    alerts.raise_alert("failure", run.job_name, run.run_id, reason, context.log)


@dg.sensor(
    name="churn_duration_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Flags a running or finished run whose time exceeds CHURN_ALERT_DURATION_FACTOR x the median of "
    "the job's last successful runs, or CHURN_ALERT_DURATION_CEILING_SECONDS, without stopping it. Each tick also "
    "re-sends every alert not delivered yet (webhook or Slack down), until delivered or expired.",
)
def churn_duration_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource):
    now = time.time()
    since = datetime.fromtimestamp(now - 3600, timezone.utc)
    records = context.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    records += context.instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE], updated_after=since), limit=50
    )
    raised = 0
    for record in records:
        if not record.start_time:
            continue
        duration = (record.end_time or now) - record.start_time
        history = [
            r.end_time - r.start_time
            for r in context.instance.get_run_records(
                dg.RunsFilter(job_name=record.dagster_run.job_name, statuses=[dg.DagsterRunStatus.SUCCESS]),
                limit=MONITORING.duration_history_runs + 1,
            )
            if r.dagster_run.run_id != record.dagster_run.run_id and r.start_time and r.end_time
        ][: MONITORING.duration_history_runs]
        reason = duration_verdict(duration, history, MONITORING.duration_factor, MONITORING.duration_min_history,
                                  MONITORING.duration_ceiling_seconds)
        run = record.dagster_run
        if reason and alerts.raise_alert("slow", run.job_name, run.run_id, reason, context.log, deliver=False):
            raised += 1
    # Every tick also re-sends the alerts of any kind not delivered yet, within one time budget.
    report = alerts.deliver_pending(context.log)
    undelivered = f"; {len(report.pending)} alerts wait for delivery" if report.pending else ""
    return dg.SkipReason((f"{raised} duration alerts raised" if raised else "no abnormal duration") + undelivered)


schedules = [churn_hourly]
sensors = [churn_landing_sensor, churn_auto_cadence, churn_failure_alerts, churn_duration_alerts]
