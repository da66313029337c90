"""Alert delivery against a real HTTP receiver on 127.0.0.1: retried with backoff inside a
tick, re-sent by later sensor ticks, bounded in time when the receiver hangs, expired and
recorded when it never recovers; delivered exactly once in every case."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from churn_assets.ops.alerts import AlertsResource, DeliveryPolicy, retry_wait
from churn_assets.settings import Settings
from churn_assets_tests.helpers import trigger

churn_duration_alerts, churn_failure_alerts = trigger("churn_duration_alerts"), trigger("churn_failure_alerts")


class Receiver:
    """A webhook that can answer 500 for the next N requests, or hang (accept, never answer)."""

    def __init__(self):
        self.received: list[dict] = []  # bodies it accepted (answered 2xx)
        self.requests = 0
        self.keys: list[str] = []
        self.fail_next = 0
        self.hanging = False
        self.release = threading.Event()
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hook.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if hook.hanging:
                    hook.release.wait(60)  # never answers this request; the connection just closes
                    return
                if hook.fail_next > 0:
                    hook.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.received.append(body)
                hook.keys.append(self.headers["Idempotency-Key"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def failure_context(instance, alerts):
    @dg.asset
    def broken():
        raise RuntimeError("the disk is full")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return result.run_id, dg.build_run_status_sensor_context(
        sensor_name="churn_failure_alerts",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
        resources={"alerts": alerts},
    ).for_run_failure()


def duration_tick(instance, alerts):
    """One tick of the duration sensor (nothing slow to flag: it only re-sends)."""
    t0 = time.monotonic()
    churn_duration_alerts(dg.build_sensor_context(instance=instance, resources={"alerts": alerts}))
    return time.monotonic() - t0


@pytest.mark.slow
def test_a_webhook_failing_twice_gets_the_alert_exactly_once(tmp_path, receiver):
    receiver.fail_next = 2
    alerts = AlertsResource.from_settings(Settings(), store_path=str(tmp_path / "alerts.db"), webhook_url=receiver.url)
    t0 = time.monotonic()
    assert alerts.raise_alert("failure", "churn_cycle", "run-1", "the disk is full") is True
    took = time.monotonic() - t0
    assert receiver.requests == 3 and len(receiver.received) == 1
    assert receiver.received[0]["run_id"] == "run-1" and receiver.received[0]["reason"] == "the disk is full"
    (row,) = alerts.store().all()
    assert receiver.keys == [row["alert_id"]]  # a receiver can deduplicate on it
    assert row["state"] == "delivered" and row["attempts"] == 3 and row["delivered_at"] and row["last_error"] == ""
    assert row["delivered_to"] == "table,webhook"
    # Two pauses in between: 0.5 s then 1 s.
    assert 1.4 < took < 5
    # The same (kind, run) again, and later ticks: nothing more is sent.
    assert alerts.raise_alert("failure", "churn_cycle", "run-1", "the disk is full") is False
    alerts.deliver_pending()
    assert receiver.requests == 3 and len(receiver.received) == 1


@pytest.mark.slow
def test_a_hanging_webhook_bounds_the_tick_and_gets_the_alert_once_it_recovers(tmp_path, receiver, instance):
    receiver.hanging = True
    alerts = AlertsResource.from_settings(
        Settings(),
        store_path=str(tmp_path / "alerts.db"),
        webhook_url=receiver.url,
        timeout_seconds=1.0,
        tick_budget_seconds=2.5,
        retry_after_seconds=0.5,
    )
    run_id, context = failure_context(instance, alerts)
    t0 = time.monotonic()
    churn_failure_alerts(context)
    took = time.monotonic() - t0
    assert took < 2.5 + 1, (
        f"the failure sensor's tick took {took:.1f}s"
    )  # budget + bookkeeping (the old single try: 5 s)
    (row,) = alerts.store().all()
    assert row["run_id"] == run_id and row["state"] == "pending" and row["delivered_at"] is None
    assert row["attempts"] == 2 and "webhook" in row["last_error"] and "timed out" in row["last_error"]
    assert receiver.received == [] and receiver.requests == 2
    # Still hanging: a later tick tries again, still within the bound.
    time.sleep(0.6)
    assert duration_tick(instance, alerts) < 2.5 + 1
    row = alerts.store().all()[0]
    assert row["state"] == "pending" and row["attempts"] >= 3 and receiver.received == []
    # The receiver recovers: the next due tick delivers, once.
    receiver.hanging = False
    time.sleep(retry_wait(2, alerts.policy()) + 0.1)
    assert duration_tick(instance, alerts) < 1
    for _ in range(3):
        duration_tick(instance, alerts)
    assert len(receiver.received) == 1 and receiver.received[0]["run_id"] == run_id
    row = alerts.store().all()[0]
    assert row["state"] == "delivered" and row["delivered_at"] and row["last_error"] == ""
    assert row["attempts"] == receiver.requests


@pytest.mark.slow
def test_a_tick_with_many_undelivered_alerts_stays_within_its_budget(tmp_path, receiver):
    receiver.hanging = True
    alerts = AlertsResource.from_settings(
        Settings(),
        store_path=str(tmp_path / "alerts.db"),
        webhook_url=receiver.url,
        timeout_seconds=0.5,
        tick_budget_seconds=1.5,
        retry_after_seconds=0.1,
    )
    for i in range(5):
        alerts.raise_alert("slow", "churn_cycle", f"run-{i}", "slow", deliver=False)
    t0 = time.monotonic()
    report = alerts.deliver_pending()
    assert time.monotonic() - t0 < 1.5 + 1
    assert report.out_of_budget and len(report.pending) == 5 and not report.delivered
    receiver.hanging = False
    time.sleep(0.3)
    report = alerts.deliver_pending()
    assert len(report.delivered) == 5
    assert sorted(b["run_id"] for b in receiver.received) == [f"run-{i}" for i in range(5)]


@pytest.mark.slow
def test_an_alert_never_delivered_expires_and_is_recorded(tmp_path, receiver):
    receiver.fail_next = 10**6
    alerts = AlertsResource.from_settings(
        Settings(),
        store_path=str(tmp_path / "alerts.db"),
        webhook_url=receiver.url,
        tick_budget_seconds=1,
        retry_after_seconds=0.1,
        expire_after_hours=1 / 3600,
    )
    alerts.raise_alert("failure", "churn_cycle", "run-x", "boom")
    time.sleep(2.2)  # raised_at has one-second resolution
    report = alerts.deliver_pending()
    (row,) = alerts.store().all()
    assert report.expired == [row["alert_id"]] and row["state"] == "expired" and row["expired_at"]
    assert row["attempts"] >= 1 and "HTTP Error 500" in row["last_error"] and row["delivered_at"] is None
    requests = receiver.requests
    receiver.fail_next = 0
    alerts.deliver_pending()
    assert receiver.requests == requests and receiver.received == []  # expired: never sent again


@pytest.mark.slow
def test_two_concurrent_ticks_send_an_alert_once(tmp_path, receiver):
    receiver.fail_next = 1
    alerts = AlertsResource.from_settings(
        Settings(), store_path=str(tmp_path / "alerts.db"), webhook_url=receiver.url, retry_after_seconds=0
    )
    alerts.raise_alert("failure", "churn_cycle", "run-c", "boom", deliver=False)
    threads = [threading.Thread(target=alerts.deliver_pending) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(receiver.received) == 1 and receiver.requests == 2


def test_an_alerts_store_of_the_previous_release_is_upgraded_without_resending(tmp_path, receiver):
    path = tmp_path / "alerts.db"
    with sqlite3.connect(path) as db:
        db.execute("""CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, raised_at TEXT, kind TEXT, job_name TEXT,
                      run_id TEXT, reason TEXT, link TEXT, delivered_to TEXT, UNIQUE (kind, run_id))""")
        db.execute(
            "INSERT INTO alerts VALUES ('old', '2026-01-01T00:00:00', 'failure', 'j', 'r0', 'x', 'l', 'table,webhook')"
        )
    alerts = AlertsResource.from_settings(Settings(), store_path=str(path), webhook_url=receiver.url)
    assert alerts.deliver_pending().delivered == [] and receiver.requests == 0
    assert alerts.store().all()[0]["state"] == "delivered"


def test_retry_waits_double_up_to_a_ceiling():
    policy = DeliveryPolicy(retry_after_seconds=5, retry_after_max_seconds=600)
    assert [retry_wait(n, policy) for n in (1, 2, 3, 4, 10)] == [5, 10, 20, 40, 600]
