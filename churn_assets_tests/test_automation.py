"""The cadence triggers and the monitoring, unit by unit (Dagster's build contexts)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from churn_assets import run_tags
from churn_assets.defs.automation.jobs import CYCLE_JOB
from churn_assets.defs.automation.mode import write_mode
from churn_assets.defs.automation.triggers import (
    BATCH_QUIET_SECONDS,
    AutoState,
    auto_cadence,
    run_key_for,
    wait_for_new_files,
)
from churn_assets.ops.alerts import AlertsResource, duration_verdict
from churn_assets.settings import Settings
from churn_assets_tests.helpers import load_defs, trigger
from churn_assets_tests.live import Webhook

churn_hourly, churn_landing_sensor = trigger("churn_hourly"), trigger("churn_landing_sensor")
churn_failure_alerts = trigger("churn_failure_alerts")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    # What a tick reads at run time (the cadence file among it) comes from this home.
    monkeypatch.setenv("CHURN_HOME", str(tmp_path))


def cadence(home, mode):
    write_mode(home / "cadence", mode)


@pytest.fixture
def instance():
    # A real (temporary) instance: schedule contexts need one they can reload.
    with dg.instance_for_test() as inst:
        yield inst


def land(root, rel, age_seconds=600.0):
    path = root / "landing" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"id":"x"}\n')
    if age_seconds is not None:  # None: just written (setting an old mtime reads as a rename into place)
        t = time.time() - age_seconds
        os.utime(path, (t, t))
    return path


def sensor_context(home, instance, cursor=None, settle=120, mode: str | None = "continuous", listen: float = 0):
    if mode:
        cadence(home, mode)  # the landing sensor acts in continuous mode only
    # The definitions as the code location loads them for this home. The settle time is long: loading
    # them takes seconds on a busy machine, and a file landed 1 s earlier must still be settling.
    loaded = load_defs(home, CHURN_SETTLE_SECONDS=str(settle), CHURN_SENSOR_LISTEN_SECONDS=str(listen))
    return dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=loaded,
        resources={k: loaded.resources[k] for k in ("landing", "alerts")},
    )


def add_run(instance, status):
    run = dg.DagsterRun(job_name="churn_cycle", run_id=f"run-{status.value.lower()}", status=status)
    instance.add_run(run)
    return run


def test_landing_sensor_takes_complete_files_once_in_one_run(tmp_path, instance):
    land(tmp_path, "users/a.json", age_seconds=301)
    land(tmp_path, "orders/b.json", age_seconds=300)
    land(tmp_path, "events/.c.csv.tmp")  # a writer's temporary: never data
    young = land(tmp_path, "events/d.csv", age_seconds=None)  # still being written
    result = churn_landing_sensor(sensor_context(tmp_path, instance))
    assert isinstance(result, dg.RunRequest)
    assert result.tags["churn/files"] == "2" and result.tags["churn/trigger"] == "landing_sensor"
    ctx = sensor_context(tmp_path, instance)
    result = churn_landing_sensor(ctx)
    cursor = ctx.cursor
    assert json.loads(cursor)[1] == "orders/b.json"  # up to the newest file taken
    # Nothing new: skip, whatever the number of ticks.
    assert isinstance(churn_landing_sensor(sensor_context(tmp_path, instance, cursor)), dg.SkipReason)
    # Once settled, the young file is taken, alone, under another run key.
    old = time.time() - 200
    os.utime(young, (old, old))
    nxt = churn_landing_sensor(sensor_context(tmp_path, instance, cursor))
    assert isinstance(nxt, dg.RunRequest) and nxt.tags["churn/files"] == "1" and nxt.run_key != result.run_key


def test_a_new_sensor_does_not_replay_what_the_last_cycle_saw(tmp_path, instance):
    @dg.op
    def noop():
        pass

    @dg.job(name="churn_cycle")
    def a_cycle():
        noop()

    land(tmp_path, "users/old.json", age_seconds=600)
    assert a_cycle.execute_in_process(instance=instance).success  # a successful cycle saw old.json
    assert isinstance(churn_landing_sensor(sensor_context(tmp_path, instance, settle=0)), dg.SkipReason)
    land(tmp_path, "users/new.json", age_seconds=0)
    request = churn_landing_sensor(sensor_context(tmp_path, instance, settle=0))
    assert isinstance(request, dg.RunRequest) and request.tags["churn/files"] == "1"


def test_run_key_is_the_file_set():
    class F:
        def __init__(self, p):
            self.relpath = p

    assert run_key_for([F("a"), F("b")]) == run_key_for([F("b"), F("a")]) != run_key_for([F("a")])


@pytest.mark.parametrize(
    "status", [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
)
def test_no_run_while_a_cycle_is_pending_and_the_files_wait(tmp_path, status, instance):
    land(tmp_path, "users/a.json")
    add_run(instance, status)
    ctx = sensor_context(tmp_path, instance)
    result = churn_landing_sensor(ctx)
    assert isinstance(result, dg.SkipReason) and "wait" in result.skip_message
    assert ctx.cursor is None  # not consumed: the next tick takes them
    cadence(tmp_path, "hourly")
    skipped = churn_hourly(dg.build_schedule_context(instance=instance))
    assert isinstance(skipped, dg.SkipReason) and "already queued or running" in skipped.skip_message


def test_a_tick_that_finds_a_cycle_pending_waits_for_it_and_takes_the_files_as_it_ends(tmp_path, instance):
    land(tmp_path, "users/a.json")
    run = add_run(instance, dg.DagsterRunStatus.STARTED)
    ctx = sensor_context(tmp_path, instance, listen=3.0)
    ends = threading.Timer(0.5, lambda: instance.report_run_canceled(run))  # the cycle ends mid-tick
    started = time.monotonic()
    ends.start()
    try:
        result = churn_landing_sensor(ctx)
    finally:
        ends.join()
    took = time.monotonic() - started
    assert isinstance(result, dg.RunRequest) and result.tags["churn/files"] == "1"
    assert 0.5 <= took < 3.0  # as the cycle ended, not at the window's end nor at the next tick
    # A cycle that outlasts the window: the tick skips after listening, and the files wait.
    land(tmp_path, "users/b.json")
    add_run(instance, dg.DagsterRunStatus.NOT_STARTED)
    ctx = sensor_context(tmp_path, instance, cursor=ctx.cursor, listen=1.0)
    started = time.monotonic()
    result = churn_landing_sensor(ctx)
    assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("1 new files wait")
    assert 1.0 <= time.monotonic() - started < 2.5
    assert json.loads(ctx.cursor)[1] == "users/a.json"  # b.json not consumed: the next tick takes it


@pytest.mark.slow  # 7 s of listening
def test_a_tick_listens_the_whole_window_unless_the_instance_runs_sensors_in_threads(tmp_path):
    # The project's instances run sensors in one thread: the daemon starts its next loop as soon as
    # a tick longer than its 5-s loop ends, so a tick may listen that long. Threaded (an instance
    # file written before), the daemon would skip the sensor while its tick still listens: 3 s.
    from churn_assets.defs import automation

    for shipped in ("dagster.yaml", "dagster.postgres.yaml"):
        config = yaml.safe_load((Path(automation.__file__).parent / shipped).read_text())
        assert config["sensors"]["use_threads"] is False, shipped
    seen = land(tmp_path, "users/a.json")
    cursor = json.dumps([seen.stat().st_mtime, "users/a.json"])  # taken already: nothing new lands
    took = {}
    for threaded in (False, True):
        with dg.instance_for_test(overrides={"sensors": {"use_threads": threaded, "num_workers": 1}}) as inst:
            ctx = sensor_context(tmp_path, inst, cursor=cursor, listen=4.0)
            started = time.monotonic()
            result = churn_landing_sensor(ctx)
            took[threaded] = time.monotonic() - started
        assert isinstance(result, dg.SkipReason) and result.skip_message == "no new complete file"
    assert took[False] >= 4.0
    assert 3.0 <= took[True] < 4.0


def test_the_cadence_file_says_which_trigger_acts(tmp_path, instance):
    land(tmp_path, "users/a.json")
    # Hourly (no file: the default): the landing sensor skips, says how to switch, forgets its cursor.
    ctx = sensor_context(tmp_path, instance, cursor=json.dumps([1.0, "users/z.json"]), mode="hourly")
    skipped = churn_landing_sensor(ctx)
    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message == "cadence is hourly: `churn mode continuous` makes this trigger act"
    assert ctx.cursor is None
    assert isinstance(churn_hourly(dg.build_schedule_context(instance=instance)), dg.RunRequest)
    # Continuous: the sensor takes the file, the schedule skips.
    assert isinstance(churn_landing_sensor(sensor_context(tmp_path, instance)), dg.RunRequest)
    skipped = churn_hourly(dg.build_schedule_context(instance=instance))
    assert skipped.skip_message == "cadence is continuous: `churn mode hourly` makes this trigger act"
    # Auto: both skip; the auto sensor acts (and nothing else).
    auto = trigger("churn_auto_cadence")
    assert isinstance(churn_landing_sensor(sensor_context(tmp_path, instance, mode="auto")), dg.SkipReason)
    assert isinstance(churn_hourly(dg.build_schedule_context(instance=instance)), dg.SkipReason)
    acted = auto(sensor_context(tmp_path, instance, mode="auto"))
    assert "cadence is" not in getattr(acted, "skip_message", "")
    assert auto(sensor_context(tmp_path, instance, mode="hourly")).skip_message.endswith(
        "`churn mode auto` makes this trigger act"
    )
    # A file naming no cadence: the hourly default acts (data stays fresh), the others skip and say why.
    (tmp_path / "cadence").write_text("weekly\n")
    assert isinstance(churn_hourly(dg.build_schedule_context(instance=instance)), dg.RunRequest)
    said = churn_landing_sensor(sensor_context(tmp_path, instance, mode=None)).skip_message
    assert "says 'weekly', not a cadence" in said and "hourly meanwhile" in said


def test_runs_for_landed_files_are_continuous_whichever_trigger_started_them(tmp_path, instance):
    """What the model domain reads to start its warm scorer (defs/ml/resources.py): the landing
    sensor's runs and the auto cadence's in its continuous phase, never the hourly schedule's."""
    land(tmp_path, "users/a.json")
    landing = churn_landing_sensor(sensor_context(tmp_path, instance))
    in_continuous_phase = json.dumps({"mode": "continuous", "switched_at": time.time()})
    auto = trigger("churn_auto_cadence")(sensor_context(tmp_path, instance, cursor=in_continuous_phase, mode="auto"))
    cadence(tmp_path, "hourly")
    hourly = churn_hourly(dg.build_schedule_context(instance=instance))
    requests = (landing, auto, hourly)
    assert [r.tags[run_tags.TRIGGER] for r in requests] == ["landing_sensor", "auto_continuous", "hourly"]
    assert [run_tags.is_continuous(r.tags) for r in requests] == [True, True, False]


def test_hourly_schedule_requests_the_whole_cycle(instance):
    add_run(instance, dg.DagsterRunStatus.SUCCESS)  # finished runs do not count
    request = churn_hourly(dg.build_schedule_context(instance=instance))
    assert isinstance(request, dg.RunRequest) and request.asset_selection is None
    assert churn_hourly.cron_schedule == "0 * * * *" and churn_hourly.execution_timezone == "UTC"


def test_expensive_steps_only_when_due_and_dashboards_on_their_own_cadence(tmp_path, instance):
    land(tmp_path, "users/a.json")
    first = churn_landing_sensor(sensor_context(tmp_path, instance))
    assert first.tags["churn/skipped"] == "none"  # nothing ever trained: due
    first_keys = {k.to_user_string() for k in first.asset_selection}
    assert {"ml/churn_model", "campaigns/retention_messages", "gold/churn_prediction"} <= first_keys
    # The dashboards never ride along: churn_refresh_sensor refreshes them (AutomationCondition).
    assert not {k for k in first_keys if k.startswith("dashboard/")}
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=["ml", "churn_model"]))
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=["campaigns", "retention_messages"]))
    land(tmp_path, "users/b.json")
    later = churn_landing_sensor(sensor_context(tmp_path, instance))
    keys = {k.to_user_string() for k in later.asset_selection}
    assert later.tags["churn/skipped"] == "retraining,campaign"
    # What fresh predictions need, and nothing else: bronze -> silver -> gold -> scoring.
    assert keys == {
        "bronze/churn_users_bronze",
        "bronze/churn_orders_bronze",
        "bronze/churn_app_events",
        "silver/churn_users",
        "silver/churn_orders",
        "gold/churn_features",
        "gold/churn_prediction",
    }


def fake_time(start: float = 1000.0):
    """A clock and a sleep that advances it, with things to do at given times (a writer landing a file)."""
    now = [start]
    due: list[tuple[float, object]] = []

    def clock():
        return now[0]

    def sleep(seconds):
        now[0] += seconds
        for t, action in [d for d in due if d[0] <= now[0]]:
            due.remove((t, action))
            action()

    return clock, sleep, lambda after, action: due.append((start + after, action))


def rename_into_place(root, rel, text='{"id":"x"}\n'):
    final = root / "landing" / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name("." + final.name + ".part")
    tmp.write_text(text)
    time.sleep(0.02)  # past a tick of the file clock, so the rename shows (as the generator does)
    os.replace(tmp, final)


def test_a_tick_takes_a_file_as_it_lands_and_its_batch_with_it(tmp_path):
    clock, sleep, at = fake_time()
    at(1.0, lambda: rename_into_place(tmp_path, "users/a.json"))
    at(1.2, lambda: rename_into_place(tmp_path, "orders/b.json"))  # the rest of the increment, just after
    at(1.3, lambda: rename_into_place(tmp_path, "events/c.csv", "user_id\n"))
    at(9.0, lambda: rename_into_place(tmp_path, "users/late.json"))  # long after: the next tick's
    found = wait_for_new_files(tmp_path / "landing", None, 120, 3.0, clock=clock, sleep=sleep)
    assert sorted(f.relpath for f in found) == ["events/c.csv", "orders/b.json", "users/a.json"]
    # Taken as it landed (within a poll and the batch's quiet time), not at the window's end.
    assert clock() - 1000.0 <= 1.0 + 2 * BATCH_QUIET_SECONDS + 0.2


def test_a_batch_with_a_file_of_every_source_is_taken_without_the_quiet_time(tmp_path):
    clock, sleep, at = fake_time()
    at(1.0, lambda: rename_into_place(tmp_path, "users/a.json"))
    at(1.0, lambda: rename_into_place(tmp_path, "orders/b.json"))
    at(1.0, lambda: rename_into_place(tmp_path, "events/c.csv", "user_id\n"))
    found = wait_for_new_files(tmp_path / "landing", None, 120, 3.0, clock=clock, sleep=sleep)
    assert sorted(f.relpath for f in found) == ["events/c.csv", "orders/b.json", "users/a.json"]
    assert clock() - 1000.0 < 1.0 + BATCH_QUIET_SECONDS  # at the first look after they landed
    # Two of the three sources: the batch may not be whole, so it waits for the quiet time.
    clock, sleep, at = fake_time()
    after = (found[-1].mtime, found[-1].relpath)
    at(1.0, lambda: rename_into_place(tmp_path, "users/d.json"))
    at(1.0, lambda: rename_into_place(tmp_path, "orders/e.json"))
    found = wait_for_new_files(tmp_path / "landing", after, 120, 3.0, clock=clock, sleep=sleep)
    assert sorted(f.relpath for f in found) == ["orders/e.json", "users/d.json"]
    assert clock() - 1000.0 >= 1.0 + BATCH_QUIET_SECONDS


def test_a_tick_never_takes_a_file_still_being_written(tmp_path):
    clock, sleep, at = fake_time()
    path = tmp_path / "landing" / "users" / "writing.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"id":"a"}\n')  # written in place, just now: not complete before the settle time

    def append():
        with path.open("a") as f:
            f.write('{"id":"b"}\n')

    at(1.0, append)
    assert wait_for_new_files(tmp_path / "landing", None, 120, 3.0, clock=clock, sleep=sleep) == []
    assert 3.0 <= clock() - 1000.0 < 3.5  # it listened the whole window, and only that
    # No listening: one look, as before.
    assert wait_for_new_files(tmp_path / "landing", None, 120, 0, clock=clock, sleep=sleep) == []


def test_duration_rule():
    history = [10.0, 12.0, 11.0, 9.0]
    assert duration_verdict(20, history, 3, 3, 0) is None
    assert "3 x the median 10.5s" in duration_verdict(40, history, 3, 3, 0)
    assert duration_verdict(40, history[:2], 3, 3, 0) is None  # too little history to judge
    assert "ceiling of 30s" in duration_verdict(31, [], 3, 3, 30)


def test_auto_cadence_switches_with_hysteresis():
    c = Settings(auto_up_files_per_minute=1.0, auto_window_minutes=10, auto_quiet_minutes=30)
    now = 100_000.0
    state, reason = auto_cadence(AutoState(), [now - 60 * i for i in range(5)], now, c)
    assert state.mode == "hourly" and reason is None  # 0.5 files/min
    state, reason = auto_cadence(state, [now - 30 * i for i in range(12)], now, c)
    assert state.mode == "continuous" and "files/min" in reason
    # Slower, but files still come: stays continuous (no flapping)...
    state2, reason = auto_cadence(state, [now + 600], now + 700, c)
    assert state2.mode == "continuous" and reason is None
    # ...until a quiet period without any file.
    state3, reason = auto_cadence(state2, [now + 600], now + 600 + 31 * 60, c)
    assert state3.mode == "hourly" and "no file for 30 min" in reason


def test_a_failed_run_raises_exactly_one_alert(tmp_path, instance):
    hook = Webhook()
    alerts = AlertsResource.from_settings(
        Settings(), store_path=str(tmp_path / "alerts.db"), webhook_url=hook.url, ui_url="http://ui"
    )

    @dg.asset
    def broken():
        raise RuntimeError("the disk is full")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="churn_failure_alerts",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
        resources={"alerts": alerts},
    ).for_run_failure()
    churn_failure_alerts(context)
    churn_failure_alerts(context)  # the same failure seen twice: still one alert
    assert len(hook.received) == 1
    alert = hook.received[0]
    assert (
        alert["kind"] == "failure"
        and alert["run_id"] == result.run_id
        and alert["job_name"] == result.dagster_run.job_name
    )
    assert alert["link"] == f"http://ui/runs/{result.run_id}" and alert["reason"]
    stored = alerts.store().all()
    assert len(stored) == 1 and stored[0]["delivered_to"] == "table,webhook"
    hook.close()


def test_dashboards_refresh_on_their_own_cadence_once_their_inputs_changed(tmp_path, instance):
    """The dashboards' AutomationCondition, evaluated as churn_refresh_sensor does it, with Dagster's own
    evaluator: every 15 min, only once what a figure reads has changed since the tick."""
    from datetime import datetime, timedelta, timezone

    defs = load_defs(tmp_path)
    graph = defs.resolve_asset_graph()
    dashboards = [k for k in graph.get_all_asset_keys() if k.path[0] == "dashboard"]
    page, features = dg.AssetKey(["dashboard", "page"]), dg.AssetKey(["gold", "churn_features"])
    # The chart previews follow the figures they draw, as the page does (and skip while recent).
    previews = dg.AssetKey(["dashboard", "chart_previews"])
    no_inputs = {dg.AssetKey(["dashboard", "pipeline_runs"]), dg.AssetKey(["dashboard", "alerts"])}
    # The prediction figures read gold through gold/churn_prediction, which carries what they group by.
    prediction = dg.AssetKey(["gold", "churn_prediction"])
    reads_features = {k for k in dashboards if {features, prediction} & set(graph.get(k).parent_keys)}

    def gold_written() -> None:  # as a landing run writes them: gold, then the predictions
        for key in (features, prediction):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key))

    assert len(reads_features) >= 5

    t = datetime(2026, 11, 2, 10, 5, tzinfo=timezone.utc)
    cursor = None

    def evaluate(minutes: float) -> set:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(defs, instance, evaluation_time=t + timedelta(minutes=minutes))
        cursor = result.cursor
        return {k for k in dashboards if result.get_num_requested(k)}

    def evaluate_next(minutes: float) -> set:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs, instance, evaluation_time=t + timedelta(minutes=minutes), cursor=cursor
        )
        cursor = result.cursor
        return {k for k in dashboards if result.get_num_requested(k)}

    assert evaluate(0) == set()  # the first look starts the clock
    assert evaluate_next(5) == set()  # no tick since (10:10)
    # 10:15 passed, nothing upstream changed: only what reads no warehouse table, and the page drawing it.
    assert evaluate_next(11) == no_inputs | {page}
    assert evaluate_next(11.5) == set()  # the sensor's next look (every 30 s): requested once
    # Gold changes: the figures that read it follow at the next evaluation, once; the others do not.
    gold_written()
    assert evaluate_next(12) == reads_features | {page, previews}
    assert evaluate_next(13) == set()
    # Gold changes again: nothing until 10:30 has passed, then every figure (and the page) once.
    gold_written()
    assert evaluate_next(20) == set()
    assert evaluate_next(26) == reads_features | no_inputs | {page, previews}
    assert evaluate_next(26.5) == set()
    # Gold changed, and a run writing it again is in progress when 10:45 passes (continuous mode:
    # nearly always). Every figure is still requested at once: one refresh run, which the run
    # queue (one at a time) starts after the writer. Waiting for a gap split it into several.
    gold_written()
    instance.create_run_for_job(
        defs.resolve_job_def(CYCLE_JOB), asset_selection=frozenset({features}), status=dg.DagsterRunStatus.STARTED
    )
    assert evaluate_next(41) == reads_features | no_inputs | {page, previews}
    assert evaluate_next(41.5) == set()
