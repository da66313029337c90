"""Personal data stays in the warehouse's own tables and the outbox; the pseudonym key is
each installation's own.

The scan runs a full cycle on the shared sample (the real SDK against the fake Messages
API, a persistent Dagster instance, the embedded MLflow store) and searches every file
it left outside the warehouse and the outbox for the sample's e-mails, addresses, first
and last names (``pii_scan``). The scanner is shown to find values planted in each kind
of file it claims to read, and to find the names where they are allowed to be.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import dagster as dg
import duckdb
import pytest

import churn_assets
from churn_assets.defs.campaigns.resources import AnthropicResource
from churn_assets.defs.dashboards.page import vega_bundle
from churn_assets.defs.ml.features import FEATURES
from churn_assets.metadata import PREVIEW_COLUMNS, previewable, shareable_example
from churn_assets.pseudonym_key import MIN_LENGTH, PseudonymKeyError, key_path, pseudonym_key
from churn_assets.resources import PipelineSettingsResource
from churn_assets.settings import Settings
from churn_assets_tests.fake_anthropic import FakeAnthropic
from churn_assets_tests.helpers import (
    AS_OF,
    SAMPLE,
    land_sample,
    load_defs,
    materialize,
    needs_sample,
    one,
    query,
    trigger,
)
from churn_assets_tests.pii_scan import MIN_NAME_LENGTH, Scanner, needles_for, needles_of_landed_users

PEOPLE = [
    {
        "firstname": "Mary",
        "lastname": "Pittman",
        "email": "rachelclark@parks.com",
        "address": "246 Sandra Neck Suite 458\nHannahfurt, MP 53006",
    },
    {"firstname": "josé", "lastname": "O'NEIL", "email": "jo.se+1@example.org", "address": "USS Gibson\nFPO AP 50611"},
    {"firstname": "Al", "lastname": "Li", "email": "al@li.net", "address": "1 Elm St\nX"},
]


def _found(report) -> set[tuple[str, str, str]]:
    return {(h.where.split(" ")[0], h.kind, h.value) for h in report.hits}


# --- the scanner can fail ----------------------------------------------------------------------


def test_needles_names_capitalized_as_silver_does_and_short_names_skipped():
    needles, skipped = needles_for(PEOPLE)
    values = {(n.kind, n.value) for n in needles}
    assert {("first name", "josé"), ("first name", "José"), ("last name", "O'NEIL"), ("last name", "O'neil")} <= values
    assert ("address", "Hannahfurt, MP 53006") in values and ("email", "jo.se+1@example.org") in values
    # "Al" and "Li" are shorter than MIN_NAME_LENGTH; "X" is no address line.
    assert skipped == {"first name": 1, "last name": 1, "address": 1}
    assert not any(n.value in ("Al", "Li") for n in needles)


def test_scanner_finds_planted_values_in_every_kind_of_file(tmp_path):
    needles, _ = needles_for(PEOPLE)
    (tmp_path / "page.html").write_text("<td>Hello Mary,</td> <td>Jos&eacute;</td>")
    (tmp_path / "clean.txt").write_text("Maryland, mary, MARY, Pittmans, Al, Li; Sandra Neck; parks.com")
    (tmp_path / "log.jsonl.gz").write_bytes(gzip.compress(json.dumps({"to": "RachelClark@Parks.com"}).encode()))
    (tmp_path / "escaped.json").write_text(json.dumps(json.dumps({"who": "O'neil José"})))  # JSON in JSON, \u00e9
    (tmp_path / "url.txt").write_text("https://x.example/?e=jo.se%2B1%40example.org")
    db = sqlite3.connect(tmp_path / "events.db")
    db.execute("CREATE TABLE t (body BLOB)")
    db.execute("INSERT INTO t VALUES (?)", [zlib.compress(json.dumps({"a": PEOPLE[0]["address"]}).encode())])
    db.commit()
    db.close()
    con = duckdb.connect(str(tmp_path / "other.duckdb"))
    con.execute("CREATE TABLE p AS SELECT 'USS Gibson' AS line FROM range(3)")
    con.close()
    scanner = Scanner(needles)
    report = scanner.scan_tree(tmp_path)
    assert _found(report) == {
        ("page.html", "first name", "Mary"),
        ("page.html", "first name", "José"),
        ("log.jsonl.gz", "email", "rachelclark@parks.com"),
        ("escaped.json", "last name", "O'neil"),
        ("escaped.json", "first name", "José"),
        ("url.txt", "email", "jo.se+1@example.org"),
        ("events.db", "address", "246 Sandra Neck Suite 458"),
        ("events.db", "address", "Hannahfurt, MP 53006"),
        ("other.duckdb", "address", "USS Gibson"),
    }
    # Found inside the compressed stream and the SQLite cell, not by luck in the raw bytes.
    assert any(h.where.endswith("(gzip)") for h in report.hits)
    assert any("table t row 0 (zlib)" in h.where for h in report.hits)
    assert report.files == 7 and report.sqlite_rows >= 1 and report.table_rows == 3


# --- one list decides what a preview may show ---------------------------------------------------


def test_previews_show_only_listed_columns():
    personal = [
        "firstname",
        "lastname",
        "email",
        "address",
        "subject",
        "texts",
        "detail",
        "url",
        "_rescued_data",
        "raw",
    ]
    assert not set(personal) & PREVIEW_COLUMNS
    assert previewable(["user_id", *personal, "canal"], "silver.churn_users") == ["user_id", "canal"]
    assert previewable(["name", "value", "detail"], "dashboard.kpis") == ["name", "value", "detail"]
    assert previewable(["a_new_column"]) == []  # unknown until someone decides
    # The model's input example is made of features only, and each may be shown.
    assert set(FEATURES) <= PREVIEW_COLUMNS
    import pandas as pd

    with pytest.raises(ValueError, match="firstname"):
        shareable_example(pd.DataFrame({"canal": ["WEBAPP"], "firstname": ["Mary"]}))


# --- the scan after a full cycle ------------------------------------------------------------


def _dirty_users(home: Path) -> None:
    """Sample customers sent again, damaged: one record too broken to parse (quarantine),
    one that does not fit the schema (kept raw in _rescued_data), one that is not an object."""
    lines = (next(iter(sorted((SAMPLE / "users").glob("*.json"))))).read_text().splitlines()[:3]
    rescued = json.loads(lines[1])
    rescued["age_group"] = "forty"
    (home / "landing" / "users" / "zz-resent.json").write_text(
        lines[0][:-20] + "\n" + json.dumps(rescued) + "\n[" + lines[2] + "]\n"
    )


def _evaluate_alert_sensors(instance: dg.DagsterInstance, resources: dict, failed) -> None:
    churn_failure_alerts, churn_duration_alerts = trigger("churn_failure_alerts"), trigger("churn_duration_alerts")
    failure = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    churn_failure_alerts(
        dg.build_run_status_sensor_context(
            sensor_name="churn_failure_alerts",
            dagster_instance=instance,
            dagster_run=failed.dagster_run,
            dagster_event=failure,
            resources={"alerts": resources["alerts"]},
        ).for_run_failure()
    )
    churn_duration_alerts(dg.build_sensor_context(instance=instance, resources={"alerts": resources["alerts"]}))


@pytest.mark.slow
@needs_sample
def test_no_personal_value_outside_the_warehouse_and_the_outbox(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("CHURN_PSEUDONYM_KEY")  # the home's own key file, scanned like the rest
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    land_sample(home)
    _dirty_users(home)
    # Whatever the cycle writes to a temporary folder or its working directory is scanned too.
    (home / "tmp").mkdir()
    (home / "cwd").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(home / "tmp"))
    monkeypatch.chdir(home / "cwd")
    resources = load_defs(home, AS_OF).resources
    # The instance as `churn` makes it: SQLite run and event storage in files beside its config.
    (home / "dagster_home").mkdir()
    shutil.copy(Path(churn_assets.__file__).parent / "defs" / "automation" / "dagster.yaml", home / "dagster_home")
    with FakeAnthropic() as fake, dg.DagsterInstance.local_temp(tempdir=str(home / "dagster_home")) as instance:
        # Some answers go wrong, so that error paths (corrective turn, template fallback) run too.
        fake.script.extend(["invalid", "refusal", "malformed", "500", "500", "500", "500", "500"])
        anthropic = AnthropicResource.from_settings(Settings(), api_key="test-key-not-a-secret", base_url=fake.url)
        # A failed run first (a key that is too short), so that an alert is raised and drawn.
        short_key = PipelineSettingsResource(home=str(home), as_of=AS_OF, pseudonym_key="short")
        failed = materialize(
            home,
            ["bronze/churn_users_bronze", "silver/churn_users"],
            instance=instance,
            raise_on_error=False,
            pipeline_settings=short_key,
        )
        assert not failed.success
        _evaluate_alert_sensors(instance, resources, failed)
        result = materialize(home, "*", instance=instance, anthropic=anthropic)
        assert result.success
        requests = json.dumps([r["body"] for r in fake.requests], ensure_ascii=False)
    out, err = capfd.readouterr()

    ready = one(home, "SELECT count(*) FROM campaigns.retention_messages WHERE status = 'ready'")
    by_generator = dict(query(home, "SELECT generator, count(*) FROM campaigns.retention_messages GROUP BY 1"))
    assert ready > 100 and by_generator.get(anthropic.model, 0) > 0 and len(fake.requests) > 10
    assert one(home, "SELECT count(*) FROM bronze.quarantine") == 2
    assert one(home, "SELECT count(*) FROM bronze.churn_users_bronze WHERE _rescued_data IS NOT NULL") == 1
    alerts = sqlite3.connect(home / "ops" / "alerts.db").execute("SELECT kind FROM alerts").fetchall()
    assert ("failure",) in alerts
    # The page loses no figure's column to the list: every dashboard column is on it.
    columns = query(
        home, "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'dashboard'"
    )
    assert len(columns) > 50 and [c for t, c in columns if not previewable([c], f"dashboard.{t}")] == []

    users, needles, skipped = needles_of_landed_users(SAMPLE / "users")
    kinds = {k: sum(n.kind == k for n in needles) for k in ("email", "address", "first name", "last name")}
    # The page inlines the Vega library, the same for any data ("Mark", "Marks", "April" are in it).
    scanner = Scanner(needles, static={"dashboard/index.html": [vega_bundle()]})
    report = scanner.scan_tree(
        home, skip=[home / "landing", home / "outbox", home / "warehouse.duckdb", home / "warehouse.duckdb.wal"]
    )
    scanner.scan_text(out, "stdout of the cycle")
    scanner.scan_text(err, "stderr of the cycle")
    scanner.scan_text(requests, "requests to the Messages API")
    scanned = {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}
    print(
        f"\nscan: {len(users)} customers -> {len(needles)} values searched {kinds} "
        f"(names under {MIN_NAME_LENGTH} characters skipped: {skipped}); {report.files} files, "
        f"{report.bytes:,} bytes, {report.views:,} texts, {report.sqlite_rows:,} SQLite rows, "
        f"{report.table_rows} DuckDB/Parquet rows; hits: {len(report.hits)}"
    )
    for hit in report.hits[:20]:
        print("  HIT", hit)
    # The scan saw what it should: the event log, the run storage, MLflow, the page, alerts, the key.
    for must in (
        "mlflow/mlflow.db",
        "dashboard/index.html",
        "ops/alerts.db",
        "secrets/pseudonym.key",
        "dagster_home/history/runs.db",
    ):
        assert must in scanned, must
    assert any(p.startswith("dagster_home/history/runs/") for p in scanned)  # per-run event logs
    assert any(p.startswith("mlflow/artifacts/") and p.endswith("input_example.json") for p in scanned)
    assert report.hits == []

    # Positive control on the same run: the scanner finds the names where they may be.
    allowed = Scanner(needles).scan_tree(home / "outbox")
    first_names = {u["firstname"] for u in users}
    named = {h.value for h in allowed.hits}
    print(f"outbox (allowed): {allowed.files} files, {len(allowed.hits)} hits, {len(named)} distinct first names")
    assert named <= first_names and len(named) > 50  # texts carry first names, nothing else
    raw = Scanner(needles)
    for table in ("silver.churn_users", "bronze.quarantine"):
        raw.scan_text(json.dumps(query(home, f"SELECT * FROM {table} LIMIT 20"), default=str), table)
    assert {"first name", "last name", "address"} <= {h.kind for h in raw.report.hits}


# --- the pseudonym key ---------------------------------------------------------------------


def test_key_file_created_once_owner_only_and_stable(tmp_path):
    key = pseudonym_key(tmp_path)
    path = key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(key) == 64 and int(key, 16) >= 0
    before = path.stat()
    assert pseudonym_key(tmp_path) == key
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temporary left


def test_processes_starting_together_share_one_key(tmp_path):
    """Eight processes started at once (run workers) make or read the key file: one key.
    Plain subprocesses with a timeout: a multiprocessing pool hung the suite once when a
    worker of it died (the pool waits for it forever)."""
    code = (
        "import sys; from pathlib import Path; from churn_assets.pseudonym_key import pseudonym_key; "
        "print(pseudonym_key(Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    keys = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8
    assert len(set(keys)) == 1 and key_path(tmp_path).read_text().strip() == keys[0]


def test_env_key_wins_and_no_file_is_made(tmp_path):
    key = "k" * MIN_LENGTH
    assert pseudonym_key(tmp_path, key) == key
    assert not key_path(tmp_path).exists()


@pytest.mark.parametrize("configured", ["short", " " * 40, "x" * (MIN_LENGTH - 1)])
def test_short_key_refused_in_one_line(tmp_path, configured):
    with pytest.raises(PseudonymKeyError) as exc:
        pseudonym_key(tmp_path, configured)
    message = str(exc.value)
    assert "\n" not in message and "CHURN_PSEUDONYM_KEY" in message and f"at least {MIN_LENGTH}" in message


def test_key_file_others_can_read_or_too_short_is_refused(tmp_path):
    pseudonym_key(tmp_path)
    path = key_path(tmp_path)
    path.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="chmod 600"):
        pseudonym_key(tmp_path)
    path.chmod(0o600)
    path.write_text("abc\n")
    with pytest.raises(PseudonymKeyError, match=f"at least {MIN_LENGTH}"):
        pseudonym_key(tmp_path)


def _pseudonym(key: str, email: str) -> str:
    return hashlib.sha256((key + hashlib.sha256((key + email).encode()).hexdigest()).encode()).hexdigest()


def _silver_users(home: Path) -> dict[str, str]:
    (home / "landing").mkdir(parents=True, exist_ok=True)
    land_sample(home)
    assert materialize(home, ["bronze/churn_users_bronze", "silver/churn_users"]).success
    return dict(query(home, "SELECT user_id, email FROM silver.churn_users"))


@pytest.mark.slow
@needs_sample
def test_each_home_its_own_pseudonyms_and_the_env_key_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("CHURN_PSEUDONYM_KEY")  # each home's own key file
    a, b = _silver_users(tmp_path / "a"), _silver_users(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2086
    assert not set(a.values()) & set(b.values())  # no pseudonym in common
    emails = dict(query(tmp_path / "a", "SELECT id, email FROM bronze.churn_users_bronze"))
    key_a = key_path(tmp_path / "a").read_text().strip()
    assert all(a[u] == _pseudonym(key_a, emails[u]) for u in a)
    # CHURN_PSEUDONYM_KEY, read when the run starts, replaces the home's key.
    env_key = "e" * 40
    monkeypatch.setenv("CHURN_PSEUDONYM_KEY", env_key)
    c = _silver_users(tmp_path / "c")
    assert all(c[u] == _pseudonym(env_key, emails[u]) for u in c)
    assert not key_path(tmp_path / "c").exists()


@pytest.mark.slow
@needs_sample
def test_short_env_key_fails_the_step_with_that_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_PSEUDONYM_KEY", "too-short")
    (tmp_path / "landing").mkdir()
    land_sample(tmp_path)
    result = materialize(tmp_path, ["bronze/churn_users_bronze", "silver/churn_users"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    error = failure.step_failure_data.error
    assert error.message.strip().endswith(
        f"CHURN_PSEUDONYM_KEY is 9 characters; the e-mail pseudonym key needs at least {MIN_LENGTH} "
        "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
    )
    assert one(tmp_path, "SELECT count(*) FROM silver.churn_users") == 0
    assert not os.path.exists(key_path(tmp_path))
