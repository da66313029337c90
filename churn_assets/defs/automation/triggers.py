"""What starts the cycle, and what watches it.

Three cadence triggers, all on in Dagster; the cadence file (``churn mode``, see ``mode.py``)
says which one acts, the others skip:
- ``churn_hourly`` (schedule; the default cadence): every hour, the whole cycle.
- ``churn_landing_sensor`` (``continuous``): complete new landing files, taken as they land
  -> one run for all of them, bronze to predictions; retraining and the campaign only when
  due; the dashboards are left to ``churn_refresh_sensor``.
- ``churn_auto_cadence`` (``auto``): watches the arrival rate and behaves as one or
  the other, with hysteresis; each switch is logged and alerted.
Watching: ``churn_failure_alerts`` and ``churn_duration_alerts`` (on by default).
Declared: ``churn_refresh_sensor`` (on by default) materializes the assets that carry an
``AutomationCondition`` (the dashboards) on their own cadence, whatever the mode.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from churn_assets import run_tags
from churn_assets.defs.automation.jobs import CYCLE_JOB
from churn_assets.defs.automation.mode import gate
from churn_assets.defs.campaigns.assets import retention_messages
from churn_assets.defs.ml.assets import churn_model, churn_model_champion
from churn_assets.landing import SOURCES, discover
from churn_assets.ops.alerts import AlertsResource, duration_verdict
from churn_assets.resources import LandingZoneResource
from churn_assets.settings import Settings

PENDING = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
TRAINING = [churn_model.key, churn_model_champion.key]
CAMPAIGN = [retention_messages.key]


# --- pure decisions ----------------------------------------------------------------------------------


def new_files(landing_root: Path, after: tuple[float, str] | None, settle_seconds: float, now: float) -> list:
    """Complete landing files newer than the cursor (mtime, path), oldest first.

    Only a trigger: a file the cursor passes over (landed with an old mtime) is still
    ingested by the next run, since bronze reads its own manifest, not this cursor.
    """
    found = [f for s in SOURCES for f in discover(landing_root, s, set(), settle_seconds, now)]
    found = [f for f in found if after is None or (f.mtime, f.relpath) > tuple(after)]
    return sorted(found, key=lambda f: (f.mtime, f.relpath))


# A tick that found a file waits until no further file has come for this long: the files a
# writer lands together (an increment's users, orders and events) go into one run.
BATCH_QUIET_SECONDS = 0.4
POLL_SECONDS = 0.1  # three directory listings: cheap
PENDING_POLL_SECONDS = 0.2  # one query of the run storage


def wait_for_new_files(
    landing_root: Path,
    after: tuple[float, str] | None,
    settle_seconds: float,
    listen_seconds: float,
    clock=time.time,
    sleep=time.sleep,
) -> list:
    """``new_files``, waiting up to ``listen_seconds`` for the first complete one.

    Dagster's sensor daemon starts a tick every 5 s at most, so a tick that only looked once
    would leave a file waiting 2.5 s on average; one that listens through that interval
    (``listen_window``) takes it as it lands. Completeness is the same test as ever (renamed into
    place, or still for ``settle_seconds``): waiting never makes a half-written file count."""
    start = clock()
    found = new_files(landing_root, after, settle_seconds, start)
    while not found and clock() - start < listen_seconds:
        sleep(POLL_SECONDS)
        found = new_files(landing_root, after, settle_seconds, clock())
    # Once one has come, gather the rest of its batch (bounded: a steady stream still starts runs).
    # A new file of every source is a whole batch already (an increment): no quiet time to wait.
    while found and not every_source(found) and listen_seconds > 0 and clock() - start < 2 * listen_seconds:
        sleep(BATCH_QUIET_SECONDS)
        more = new_files(landing_root, after, settle_seconds, clock())
        if len(more) == len(found):
            break
        found = more
    return found


# Threaded sensors (``sensors: use_threads`` in dagster.yaml): the daemon skips a sensor whose tick
# is still running when its next 5-s loop starts, so a tick must end well inside the loop.
THREADED_LISTEN_SECONDS = 3.0


def listen_window(listen_seconds: float, threaded: bool) -> float:
    """How long a tick listens. Unthreaded (the project's instance), the daemon starts its next
    loop as soon as a tick outlasting the 5-s loop ends: a tick may listen the whole loop."""
    return min(listen_seconds, THREADED_LISTEN_SECONDS) if threaded else listen_seconds


def wait_while(busy, seconds: float, clock=time.time, sleep=time.sleep) -> bool:
    """Whether ``busy()`` still holds after waiting up to ``seconds`` for it to end (polled)."""
    start = clock()
    while busy():
        if clock() - start >= seconds:
            return True
        sleep(PENDING_POLL_SECONDS)
    return False


def every_source(files: list) -> bool:
    return {f.relpath.split("/", 1)[0] for f in files} >= set(SOURCES)


def run_key_for(files: list) -> str:
    return "files-" + hashlib.sha1("\n".join(sorted(f.relpath for f in files)).encode()).hexdigest()[:16]


def is_due(last_materialized: float | None, every_minutes: float, now: float) -> bool:
    return last_materialized is None or now - last_materialized >= every_minutes * 60


@dataclass
class AutoState:
    mode: str = "hourly"
    switched_at: float = 0.0


def auto_cadence(
    state: AutoState, arrivals: list[float], now: float, cadence: Settings
) -> tuple[AutoState, str | None]:
    """The effective cadence from the landing arrival times (file mtimes), with hysteresis:
    up to continuous when the rate over the window reaches the threshold; back to hourly
    only after a quiet period with no arrival at all."""
    window = cadence.auto_window_minutes * 60
    rate = sum(1 for t in arrivals if now - t <= window) / cadence.auto_window_minutes
    if state.mode == "hourly" and rate >= cadence.auto_up_files_per_minute:
        return AutoState("continuous", now), (
            f"{rate:.1f} files/min over {cadence.auto_window_minutes:g} min >= {cadence.auto_up_files_per_minute:g}"
        )
    last = max(arrivals, default=0.0)
    quiet = cadence.auto_quiet_minutes * 60
    if state.mode == "continuous" and now - last >= quiet and now - state.switched_at >= quiet:
        return AutoState("hourly", now), f"no file for {cadence.auto_quiet_minutes:g} min"
    return state, None


# --- helpers on the instance ---------------------------------------------------------------------


def default_after(instance: dg.DagsterInstance) -> tuple[float, str] | None:
    """Where a sensor without a cursor starts: after the files the last successful cycle
    could already see (its start), so switching to continuous does not replay history."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=CYCLE_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    return (records[0].start_time, "") if records and records[0].start_time else None


def pending_runs(instance: dg.DagsterInstance) -> int:
    return len(instance.get_run_ids(dg.RunsFilter(job_name=CYCLE_JOB, statuses=PENDING)))


def last_materialized(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    event = instance.get_latest_materialization_event(key)
    return event.timestamp if event else None


def not_due(instance: dg.DagsterInstance, now: float, settings: Settings) -> tuple[list[dg.AssetKey], list[str]]:
    """Retraining and the campaign when they are not due in continuous mode: (keys, names)."""
    skipped = []
    excluded: list[dg.AssetKey] = []
    if not is_due(last_materialized(instance, TRAINING[0]), settings.continuous_retrain_minutes, now):
        excluded += TRAINING
        skipped.append("retraining")
    if not is_due(last_materialized(instance, CAMPAIGN[0]), settings.continuous_campaign_minutes, now):
        excluded += CAMPAIGN
        skipped.append("campaign")
    return excluded, skipped


def on_own_cadence(asset_graph) -> list[dg.AssetKey]:
    """The assets that carry an automation condition: they refresh on their own cadence
    (``churn_refresh_sensor``), so a run for new files leaves them out."""
    return [k for k in asset_graph.get_all_asset_keys() if asset_graph.get(k).automation_condition is not None]


def _request_for_files(context, files: list, trigger: str) -> dg.RunRequest:
    now = time.time()
    graph = context.repository_def.asset_graph
    excluded, skipped = not_due(context.instance, now, Settings.load())
    excluded += on_own_cadence(graph)
    # The code location's own graph less what is not due and what refreshes on its own cadence.
    selection = sorted(k for k in graph.get_all_asset_keys() if k not in excluded)
    return dg.RunRequest(
        run_key=run_key_for(files),
        asset_selection=selection,
        tags={
            run_tags.TRIGGER: trigger,
            run_tags.FILES: str(len(files)),
            run_tags.SKIPPED: ",".join(skipped) or "none",
            run_tags.NEWEST_FILE_MTIME: f"{files[-1].mtime:.3f}",
        },
    )


# --- the triggers --------------------------------------------------------------------------------


def _acts(context, mode: str, settings: Settings) -> str | None:
    """None when the cadence file names ``mode``; else why this trigger skips (see ``mode.gate``).
    A sensor that skips forgets where it stopped: when it acts again, it starts after the last
    cycle (``default_after``), not at files the cycles in between already took."""
    acts, say = gate(settings.cadence_path, mode)
    if acts:
        if say:
            context.log.warning(say)
        return None
    if isinstance(context, dg.SensorEvaluationContext) and context.cursor:
        context.update_cursor(None)
    return say


def churn_hourly(context: dg.ScheduleEvaluationContext):
    settings = Settings.load()
    skip = _acts(context, "hourly", settings)
    if skip:
        return dg.SkipReason(skip)
    if pending_runs(context.instance) >= settings.max_pending_runs:
        return dg.SkipReason("a cycle is already queued or running")
    return dg.RunRequest(tags={run_tags.TRIGGER: run_tags.HOURLY})


def churn_landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
    skip = _acts(context, "continuous", Settings.load())
    if skip:
        return dg.SkipReason(skip)
    after = json.loads(context.cursor) if context.cursor else default_after(context.instance)
    start, limit = time.time(), Settings.load().max_pending_runs
    threaded = bool((context.instance.get_settings("sensors") or {}).get("use_threads"))
    window = listen_window(landing.listen_seconds, threaded)
    # A cycle still pending: wait for it within the listen window rather than skip at once, so
    # files that land as it ends are taken by this tick, not the next one (up to 5 s later).
    if wait_while(lambda: pending_runs(context.instance) >= limit, window):
        # The cursor stays: new files trigger the next run, once this one is done.
        waiting = len(new_files(Path(landing.root), after, landing.settle_seconds, time.time()))
        return dg.SkipReason(f"{waiting} new files wait: a cycle is already queued or running")
    listen = max(0.0, window - (time.time() - start))
    files = wait_for_new_files(Path(landing.root), after, landing.settle_seconds, listen)
    if not files:
        return dg.SkipReason("no new complete file")
    context.update_cursor(json.dumps([files[-1].mtime, files[-1].relpath]))
    return _request_for_files(context, files, run_tags.LANDING_SENSOR)


def churn_auto_cadence(context: dg.SensorEvaluationContext, landing: LandingZoneResource, alerts: AlertsResource):
    settings = Settings.load()
    skip = _acts(context, "auto", settings)
    if skip:
        return dg.SkipReason(skip)
    cursor = json.loads(context.cursor) if context.cursor else {}
    state = AutoState(cursor.get("mode", "hourly"), cursor.get("switched_at", 0.0))
    now = time.time()
    files = new_files(Path(landing.root), None, 0, now)
    state, reason = auto_cadence(state, [f.mtime for f in files], now, settings)
    if reason:
        context.log.info(f"cadence switched to {state.mode}: {reason}")
        alerts.raise_alert(
            "mode_switch", CYCLE_JOB, f"auto-{int(now)}", f"cadence switched to {state.mode}: {reason}", context.log
        )
    after = cursor.get("after") or default_after(context.instance)
    request = None
    if pending_runs(context.instance) < settings.max_pending_runs:
        if state.mode == "continuous":
            fresh = new_files(Path(landing.root), after, landing.settle_seconds, now)
            if fresh:
                after = [fresh[-1].mtime, fresh[-1].relpath]
                request = _request_for_files(context, fresh, run_tags.AUTO_CONTINUOUS)
        else:
            hour = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H")
            if cursor.get("last_hour") != hour:
                cursor["last_hour"] = hour
                request = dg.RunRequest(run_key=f"auto-hourly-{hour}", tags={run_tags.TRIGGER: run_tags.AUTO_HOURLY})
    context.update_cursor(json.dumps({**cursor, "mode": state.mode, "switched_at": state.switched_at, "after": after}))
    return request or dg.SkipReason(f"auto cadence: {state.mode}, nothing to start")


def churn_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertsResource):
    run = context.dagster_run
    reason = context.failure_event.message or "run failed"
    alerts.raise_alert("failure", run.job_name, run.run_id, reason, context.log)


def churn_duration_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource):
    settings = Settings.load()
    now = time.time()
    since = datetime.fromtimestamp(now - 3600, timezone.utc)
    records = context.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    records += context.instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE], updated_after=since),
        limit=50,
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
                limit=settings.alert_duration_history + 1,
            )
            if r.dagster_run.run_id != record.dagster_run.run_id and r.start_time and r.end_time
        ][: settings.alert_duration_history]
        reason = duration_verdict(
            duration,
            history,
            settings.alert_duration_factor,
            settings.alert_duration_min_history,
            settings.alert_duration_ceiling_seconds,
        )
        run = record.dagster_run
        if reason and alerts.raise_alert("slow", run.job_name, run.run_id, reason, context.log, deliver=False):
            raised += 1
    # Every tick also re-sends the alerts of any kind not delivered yet, within one time budget.
    report = alerts.deliver_pending(context.log)
    undelivered = f"; {len(report.pending)} alerts wait for delivery" if report.pending else ""
    return dg.SkipReason((f"{raised} duration alerts raised" if raised else "no abnormal duration") + undelivered)


# --- the definitions: names, intervals and default states (read when the code location loads) -------


def build(settings: Settings, job) -> tuple[list[dg.ScheduleDefinition], list[dg.SensorDefinition]]:
    """The schedule and sensors around the tick functions above. Intervals and the cron come
    from the settings as the code location loads; what a tick decides, it reads at the tick."""
    hourly = dg.schedule(
        name="churn_hourly",
        job=job,
        cron_schedule=settings.schedule_cron,
        execution_timezone=settings.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Cadence `hourly` (the default; `churn mode`): the whole cycle every hour "
        "(CHURN_SCHEDULE_CRON, CHURN_SCHEDULE_TIMEZONE). "
        "Skips a tick while a cycle is already pending, so runs never pile up.",
    )(churn_hourly)
    # All three cadence triggers are on; the cadence file says which one acts (``churn mode``).
    landing = dg.sensor(
        name="churn_landing_sensor",
        job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Cadence `continuous` (`churn mode continuous`): polls the landing zone; all complete new "
        "files go into one run (run key = the file "
        "set); never starts a run while a cycle is pending. Retraining and the campaign run only when due.",
    )(churn_landing_sensor)
    auto = dg.sensor(
        name="churn_auto_cadence",
        job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Cadence `auto` (`churn mode auto`): continuous while files arrive fast "
        "(CHURN_AUTO_UP_FILES_PER_MINUTE over "
        "CHURN_AUTO_WINDOW_MINUTES), back to hourly after CHURN_AUTO_QUIET_MINUTES without a file. "
        "Switches are alerted.",
    )(churn_auto_cadence)
    failures = dg.run_failure_sensor(
        name="churn_failure_alerts",
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="One alert per failed run (run id, job, reason, link): alerts table, webhook, Slack.",
    )(churn_failure_alerts)
    durations = dg.sensor(
        name="churn_duration_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        description="Flags a running or finished run whose time exceeds CHURN_ALERT_DURATION_FACTOR x the median "
        "of the job's last successful runs, or CHURN_ALERT_DURATION_CEILING_SECONDS, without stopping it. Each tick "
        "also re-sends every alert not delivered yet (webhook or Slack down), until delivered or expired.",
    )(churn_duration_alerts)
    # Declarative automation: assets that declare an AutomationCondition (the dashboards: every
    # 15 min once their inputs changed) are evaluated here, in the daemon, every 30 s. Their
    # runs go through the same run queue as the cycle (one run at a time: one warehouse writer),
    # at a lower priority: fresh predictions do not wait behind a queued refresh.
    refresh = dg.AutomationConditionSensorDefinition(
        "churn_refresh_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        # Below every other run in the queue (default 0): a landing run queued beside a refresh starts first.
        run_tags={run_tags.TRIGGER: run_tags.AUTOMATION_CONDITION, "dagster/priority": "-1"},
        description="Slow-moving assets on their own cadence, declared on the assets (AutomationCondition): the "
        "dashboards every 15 min once something they read changed, in one run per tick (queued after a run writing "
        "their inputs). The landing sensor's runs leave these assets out, so fresh predictions do not wait for them.",
    )
    return [hourly], [landing, auto, failures, durations, refresh]
