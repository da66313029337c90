"""Each landed file is ingested exactly once; cost and rows follow new data."""

from __future__ import annotations

import os
import shutil
import time
from datetime import date

import pytest

from churn_assets.generator import generate_history, generate_increment
from churn_assets.landing import discover
from churn_assets_tests.helpers import materialize, one, query

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

DATA = "*gold/churn_features"  # the data layers; the model has tests of its own
# After the generated history (ending 2026-11-01) and its increments: no negative day count.
AS_OF = "2026-11-02T00:00:00"


def counts(home):
    return {
        t: one(home, f"SELECT count(*) FROM {t}")
        for t in (
            "bronze.churn_users_bronze",
            "bronze.churn_orders_bronze",
            "bronze.churn_app_events",
            "silver.churn_users",
            "silver.churn_orders",
            "gold.churn_features",
        )
    }


def test_second_run_ingests_nothing(home):
    generate_history(home, customers=2_000, seed=7, end=date(2026, 11, 1), progress=False)
    assert materialize(home, DATA, as_of=AS_OF).success
    first = counts(home)
    manifest = one(home, "SELECT count(*) FROM bronze.ingest_manifest")
    result = materialize(home, DATA, as_of=AS_OF)
    assert result.success
    assert counts(home) == first
    assert one(home, "SELECT count(*) FROM bronze.ingest_manifest") == manifest
    mats = result.get_asset_materialization_events()
    new = {e.asset_key.to_user_string(): e.materialization.metadata["rows_new"].value for e in mats}
    assert new["bronze/churn_users_bronze"] == new["bronze/churn_orders_bronze"] == new["bronze/churn_app_events"] == 0
    assert new["silver/churn_users"] == new["silver/churn_orders"] == 0


def test_relanded_file_under_new_name_adds_nothing(home):
    generate_history(home, customers=1_000, seed=3, end=date(2026, 11, 1), progress=False)
    assert materialize(home, DATA, as_of=AS_OF).success
    before = counts(home)
    for source, ext in (("users", "json"), ("orders", "json"), ("events", "csv")):
        original = sorted((home / "landing" / source).glob(f"*.{ext}"))[0]
        shutil.copy(original, home / "landing" / source / f"resent-copy.{ext}")
    assert materialize(home, DATA, as_of=AS_OF).success
    assert counts(home) == before
    dup = query(
        home,
        "SELECT path, status, rows_loaded, detail FROM bronze.ingest_manifest "
        "WHERE path LIKE '%resent-copy%' ORDER BY path",
    )
    assert [(p.split("/")[0], s, n) for p, s, n, _ in dup] == [
        ("events", "duplicate", 0),
        ("orders", "duplicate", 0),
        ("users", "duplicate", 0),
    ]
    assert all("same content as" in d for *_, d in dup)


def test_increment_adds_exactly_its_records(home):
    generate_history(home, customers=3_000, seed=11, end=date(2026, 11, 1), progress=False)
    assert materialize(home, DATA, as_of=AS_OF).success
    before = counts(home)
    silver_users_before = dict(query(home, "SELECT user_id, last_activity_date FROM silver.churn_users"))
    report = generate_increment(home, fraction=0.05)
    assert materialize(home, DATA, as_of=AS_OF).success
    after = counts(home)
    assert after["bronze.churn_users_bronze"] - before["bronze.churn_users_bronze"] == report.records["users"]
    assert after["bronze.churn_orders_bronze"] - before["bronze.churn_orders_bronze"] == report.records["orders"]
    assert after["bronze.churn_app_events"] - before["bronze.churn_app_events"] == report.records["events"]
    # Re-sent profiles replace the earlier version (latest wins): silver grows only by new customers.
    inc_files = [f for f in report.files["users"]]
    marks = ", ".join("?" * len(inc_files))
    new_ids = {
        r[0]
        for r in query(home, f"SELECT id FROM bronze.churn_users_bronze WHERE _source_file IN ({marks})", inc_files)
    }
    resent = new_ids & set(silver_users_before)
    assert resent and len(new_ids - resent) > 0
    assert after["silver.churn_users"] == before["silver.churn_users"] + len(new_ids - resent)
    newer = dict(query(home, "SELECT user_id, last_activity_date FROM silver.churn_users"))
    assert all(newer[u] > silver_users_before[u] for u in resent)
    # Expected silver orders growth: the increment's orders with both keys.
    marks = ", ".join("?" * len(report.files["orders"]))
    valid = one(
        home,
        f"""SELECT count(*) FROM bronze.churn_orders_bronze
        WHERE id IS NOT NULL AND user_id IS NOT NULL AND _source_file IN ({marks})""",
        report.files["orders"],
    )
    assert after["silver.churn_orders"] == before["silver.churn_orders"] + valid
    assert after["gold.churn_features"] >= before["gold.churn_features"]


def test_incomplete_and_hidden_files_are_not_picked_up(home):
    folder = home / "landing" / "users"
    folder.mkdir()
    (folder / "ready.json").write_text('{"id":"a"}\n')
    (folder / "writing.json").write_text('{"id":"b"}\n')
    (folder / ".part-0001.json.tmp").write_text('{"id":"c"}\n')
    (folder / "_SUCCESS").write_text("")
    old = time.time() - 60
    # Writers' temporary names are not on the allow-list of data extensions, however old.
    for temp in ("x.json.part", "x.json.filepart", "x.json.partial", "x.json.crc", "notes.txt"):
        (folder / temp).write_text('{"id":"d"}\n')
        os.utime(folder / temp, (old, old))
    os.utime(folder / "ready.json", (old, old))
    os.utime(folder / ".part-0001.json.tmp", (old, old))
    found = discover(home / "landing", "users", {}, settle_seconds=5)
    assert [f.relpath for f in found] == ["users/ready.json"]
    # Once its mtime is older than the settle time, the file is complete.
    os.utime(folder / "writing.json", (old, old))
    ready = found[0]
    known = {"users/ready.json": (ready.size, ready.mtime)}
    assert [f.relpath for f in discover(home / "landing", "users", known, settle_seconds=5)] == ["users/writing.json"]
    # A file renamed into place is complete at once: the rename moved its ctime past its mtime.
    (folder / "renamed.json.part").write_text('{"id":"e"}\n')
    time.sleep(0.02)
    os.replace(folder / "renamed.json.part", folder / "renamed.json")
    assert "users/renamed.json" in [f.relpath for f in discover(home / "landing", "users", known, settle_seconds=5)]
