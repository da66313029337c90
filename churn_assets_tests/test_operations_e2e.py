"""End to end with the real webserver and daemon on loopback: cadence switching, the
landing sensor driving the cycle, one writer at a time, alerts to a webhook."""

from __future__ import annotations

import time
from datetime import date

import dagster as dg
import duckdb
import pytest

from churn_assets.generator import generate_history, generate_increment
from churn_assets_tests.live import LiveDagster

pytestmark = pytest.mark.slow


def one(home, sql):
    # DuckDB has one writer process at a time, and readers wait for it: the test reads
    # between runs, as the dashboard page lets a person read during them.
    con = _connect_when_free(home)
    try:
        return con.execute(sql).fetchall()[0][0]
    finally:
        con.close()


def _connect_when_free(home, timeout=120):
    deadline = time.time() + timeout
    while True:
        try:
            return duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        except duckdb.IOException:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def modes(live) -> str:
    return next(line for line in live.churn("mode").splitlines() if line.startswith("cadence:"))


def failure_sensor_ticks(live, after: float) -> list:
    """The failure sensor's finished ticks that started after ``after`` (epoch seconds)."""
    with live.instance() as instance:
        state = next(s for s in instance.all_instigator_state() if s.instigator_name == "churn_failure_alerts")
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
    return [t for t in ticks if t.status.value != "STARTED" and t.timestamp > after]


def test_cadence_switching_landing_sensor_alerts_and_one_writer(tmp_path):
    home = tmp_path / "churn"
    generate_history(home, customers=4_000, seed=3, end=date(2026, 11, 1), progress=False)
    # A ceiling of 5 s makes the first full cycles "abnormally long" for the duration alert.
    with LiveDagster(home, env={"CHURN_ALERT_DURATION_CEILING_SECONDS": "5"}) as live:
        assert modes(live) == "cadence: hourly"

        # Two runs requested at the same moment: one after the other, never at the same time.
        # The second is the failing run the alerts below are about (one cycle fewer than a
        # second good run): every step before its model ran and wrote to the warehouse; only the
        # model, misconfigured, fails. Had the two runs overlapped, a writing step before the
        # model would fail on DuckDB's lock. No retry (churn_cycle's tags allow one): it would
        # fail the same way and hold the run queue the landing sensor below waits on.
        first = live.submit()
        bad = live.submit(
            {"ops": {"ml__churn_model": {"config": {"num_leaves": -3, "force": True}}}},
            tags={"dagster/max_retries": "0"},
        )
        assert live.wait_run(first) == dg.DagsterRunStatus.SUCCESS
        assert live.wait_run(bad) == dg.DagsterRunStatus.FAILURE
        with live.instance() as instance:
            a, b = (instance.get_run_record_by_id(r) for r in (first, bad))
            steps = {s.step_key: s.status.value for s in instance.get_run_step_stats(bad)}
        assert a.end_time <= b.start_time or b.end_time <= a.start_time  # never at the same time
        assert {k for k, v in steps.items() if v != "SUCCESS"} == {"ml__churn_model"}, steps
        assert {"bronze__churn_users_bronze", "silver__churn_users", "gold__churn_features"} <= steps.keys()
        log = (home / "dagster-dev.log").read_text()
        assert "Could not set lock" not in log and "lock on file" not in log

        # Always-on: a new increment reaches gold and the predictions without anyone asking.
        # (Meanwhile the failure sensor alerts on the failed run: checked below.)
        assert "continuous" in live.churn("mode", "continuous")
        assert modes(live) == "cadence: continuous"
        customers = one(home, "SELECT count(*) FROM gold.churn_features")
        scored_at = one(home, "SELECT max(scored_at) FROM gold.churn_prediction")
        report = generate_increment(home, fraction=0.02)
        run = live.wait_for(
            lambda: [
                r
                for r in live.runs(**{"churn/trigger": "landing_sensor"})
                if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
            ],
            timeout=180,
        )[0]
        assert run.dagster_run.tags["churn/files"] == "3"
        assert (
            one(home, "SELECT count(*) FROM bronze.churn_users_bronze WHERE _source_file LIKE '%i000001%'")
            == report.records["users"]
        )
        assert one(home, "SELECT count(*) FROM gold.churn_features") > customers
        assert one(home, "SELECT max(scored_at) FROM gold.churn_prediction") > scored_at
        assert one(home, "SELECT count(*) FROM gold.churn_prediction") == one(
            home, "SELECT count(*) FROM gold.churn_features"
        )

        # Back to hourly: exactly one trigger on.
        assert "hourly" in live.churn("mode", "hourly")
        assert modes(live) == "cadence: hourly"

        # The failed run: exactly one failure alert for it, at the webhook, with a link.
        hook = live.webhook
        live.wait_for(lambda: [x for x in hook.received if x["kind"] == "failure" and x["run_id"] == bad], timeout=120)
        # A later tick of the failure sensor, begun after the alert came: still one. A tick, not
        # a fixed sleep: several usually passed during the landing run, and under load a sleep
        # may hold none.
        came = next(t for x, t in zip(hook.received, hook.received_at) if x["kind"] == "failure" and x["run_id"] == bad)
        live.wait_for(lambda: failure_sensor_ticks(live, came), timeout=120)
        failures = [x for x in live.webhook.received if x["kind"] == "failure" and x["run_id"] == bad]
        assert len(failures) == 1
        assert (
            failures[0]["job_name"] == "churn_cycle"
            and failures[0]["link"].endswith(f"/runs/{bad}")
            and failures[0]["reason"]
        )

        # Abnormally long runs are flagged, not killed.
        slow = live.wait_for(lambda: [x for x in live.webhook.received if x["kind"] == "slow"], timeout=120)
        assert "ceiling of 5s" in slow[0]["reason"]
        with live.instance() as instance:
            assert instance.get_run_by_id(slow[0]["run_id"]).status in (
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.FAILURE,
            )
