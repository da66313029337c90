"""Bad landing input never crashes the cycle and never silently loses a record."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from churn_assets_tests.helpers import materialize, one, query, user_record

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test


def user(i, **kw):
    # The e-mail as before this record moved to helpers: one address for every user of this file.
    return user_record(f"u-{i}", **{"email": "a@x.org", **kw})


def records_landed(path) -> int:
    lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    return len(lines) - (1 if path.suffix == ".csv" else 0)


def write_bad_files(home):
    users = home / "landing" / "users"
    events = home / "landing" / "events"
    orders = home / "landing" / "orders"
    for d in (users, events, orders):
        d.mkdir(parents=True, exist_ok=True)
    (users / "malformed.json").write_text(
        "\n".join([user(1), "{this is not json", user(2), "[1, 2, 3]", user(3)]) + "\n"
    )
    full = "\n".join(user(i) for i in range(10, 15))
    (users / "truncated.json").write_text(full[: len(full) - 40])  # cut inside the last record
    (users / "empty.json").write_text("")
    (users / "extra_field.json").write_text(
        user(20, loyalty_tier="gold") + "\n" + user(21, gender="female") + "\n" + user(22) + "\n"
    )
    (users / "latin1.json").write_bytes(
        (user(30, firstname="José") + "\n").encode("latin-1") + (user(31) + "\n").encode()
    )
    header = "user_id,event_id,platform,date,action,session_id,url"
    (events / "extra_column.csv").write_text(
        header
        + ",campaign\n"
        + "u-1,e1,ios,06-06-2023 20:54:21,log,s1,https://x/,spring\n"
        + "u-2,e2,android,06-06-2023 20:54:21,view,s2,https://x/,\n"
    )
    (events / "ragged.csv").write_text(
        header
        + "\nu-1,e3,ios,06-06-2023 20:54:21,log,s3,https://x/\nu-1,e4,ios\nu-2,e5,ios,06-07-2023 01:00:00,click,s5,https://x/,extra,more\n"
    )
    (events / "bad_date.csv").write_text(header + "\nu-1,e6,ios,2023/06/06,log,s6,https://x/\n")
    (events / "not_utf8.csv").write_bytes(
        (header + "\nu-9,e7,ios,06-06-2023 20:54:21,log,s7,https://x/caf\xe9\n").encode("latin-1")
    )
    (orders / "ok.json").write_text(
        json.dumps(
            {
                "user_id": "u-1",
                "id": "o-1",
                "transaction_date": "06-05-2023 12:07:59",
                "item_count": 3.0,
                "amount": 57.0,
            }
        )
        + "\n"
    )
    return [*users.iterdir(), *events.iterdir(), *orders.iterdir()]


def test_every_landed_record_is_in_a_table_or_in_quarantine(home):
    files = write_bad_files(home)
    result = materialize(home, dg.AssetSelection.groups("bronze"))
    assert result.success
    for path in files:
        rel = f"{path.parent.name}/{path.name}"
        table = {"users": "churn_users_bronze", "orders": "churn_orders_bronze", "events": "churn_app_events"}[
            path.parent.name
        ]
        in_bronze = one(home, f"SELECT count(*) FROM bronze.{table} WHERE _source_file = ?", [rel])
        quarantined = one(home, "SELECT count(*) FROM bronze.quarantine WHERE source_file = ?", [rel])
        manifest = query(
            home, "SELECT records, rows_loaded, rows_quarantined FROM bronze.ingest_manifest WHERE path = ?", [rel]
        )
        assert manifest, rel
        assert in_bronze + quarantined == records_landed(path) == manifest[0][0], rel
        assert (in_bronze, quarantined) == manifest[0][1:], rel


def test_what_happens_to_each_kind_of_bad_input(home):
    write_bad_files(home)
    result = materialize(home, dg.AssetSelection.groups("bronze"))
    assert result.success
    reasons = dict(query(home, "SELECT source_file || ':' || row_no, reason FROM bronze.quarantine"))
    assert reasons["users/malformed.json:2"] == "malformed JSON"
    assert reasons["users/malformed.json:4"] == "JSON value is not an object"
    assert reasons["users/truncated.json:5"] == "malformed JSON"
    assert "not valid UTF-8" in reasons["users/latin1.json:1"] and "not valid UTF-8" in reasons["events/not_utf8.csv:1"]
    assert "found 3" in reasons["events/ragged.csv:2"] and "found 9" in reasons["events/ragged.csv:3"]
    status = dict(query(home, "SELECT path, status FROM bronze.ingest_manifest"))
    assert status["users/empty.json"] == "empty"
    assert status["users/latin1.json"] == "quarantined"
    # Records that parse but do not fit keep their raw text; the misfit column is null.
    rescued = dict(
        query(home, "SELECT id, _rescued_data FROM bronze.churn_users_bronze WHERE _rescued_data IS NOT NULL")
    )
    assert set(rescued) == {"u-20", "u-21"}
    assert json.loads(rescued["u-20"])["loyalty_tier"] == "gold"
    assert one(home, "SELECT gender FROM bronze.churn_users_bronze WHERE id = 'u-21'") is None
    extra = query(
        home,
        "SELECT event_id, _rescued_data FROM bronze.churn_app_events "
        "WHERE _source_file = 'events/extra_column.csv' ORDER BY event_id",
    )
    assert json.loads(extra[0][1])["campaign"] == "spring" and extra[1][1] is None
    assert one(home, "SELECT date FROM bronze.churn_app_events WHERE event_id = 'e6'") is None
    # The checks report it without failing the run (warn only, as the reference).
    checks = {
        (c.asset_key.to_user_string(), c.check_name): (c.passed, c.severity.value)
        for c in result.get_asset_check_evaluations()
    }
    assert checks[("bronze/churn_users_bronze", "correct_schema")] == (False, "WARN")
    assert checks[("bronze/churn_users_bronze", "records_parseable")] == (False, "WARN")
    assert checks[("bronze/churn_orders_bronze", "correct_schema")] == (True, "WARN")


def test_odd_values_in_landed_records_warn_and_the_cycle_goes_on(home):
    """Numbers with no 32-bit integer value, a refund, a label that is no boolean, a date ahead of the
    as-of: each reaches gold, is counted, and none stops the cycle (each once failed silver or
    the blocking gold check on every cycle while its file stayed in landing)."""
    from churn_assets.defs.dashboards.metrics import METRICS
    from churn_assets.defs.ml.features import load_training
    from churn_assets.warehouse import connect

    landing = home / "landing"
    for d in ("users", "orders", "events"):
        (landing / d).mkdir(exist_ok=True)
    odd_users = {
        "n1": {},  # its one order's amount is beyond 32 bits
        "n2": {"gender": float("nan")},  # json.dumps writes NaN, and DuckDB reads it
        "n3": {},  # its one order is a refund
        "n4": {"churn": 1},  # an integer: rescued, the label null
        "n5": {"creation_date": "06-11-2023 10:00:00"},  # a day after the as-of (AS_OF, 2023-06-10)
    }
    (landing / "users" / "odd.json").write_text("\n".join(user_record(k, **f) for k, f in odd_users.items()) + "\n")
    amounts = {"n1": 3e9, "n2": 20.0, "n3": -25.0, "n4": 20.0, "n5": 20.0}
    (landing / "orders" / "odd.json").write_text(
        "".join(
            json.dumps(
                {
                    "user_id": k,
                    "id": f"o-{k}",
                    "transaction_date": "06-05-2023 12:07:59",
                    "item_count": 1.0,
                    "amount": a,
                }
            )
            + "\n"
            for k, a in amounts.items()
        )
    )
    (landing / "events" / "odd.csv").write_text(
        "user_id,event_id,platform,date,action,session_id,url\n"
        + "".join(f"{k},e-{k},ios,06-06-2023 20:54:21,log,s-{k},https://x/\n" for k in odd_users)
    )
    result = materialize(home, dg.AssetSelection.assets(["gold", "churn_features"]).upstream())
    assert result.success
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "churn_features_valid")
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert check.metadata["amounts_non_negative"].value == 2  # the refund, and n1's unknown amount
    assert check.metadata["day_counts_non_negative"].value == 1
    assert check.metadata["label_is_binary"].value == 0
    assert one(home, "SELECT amount FROM silver.churn_orders WHERE order_id = 'o-n1'") is None
    assert one(home, "SELECT gender FROM silver.churn_users WHERE user_id = 'n2'") is None
    nulled = dict(query(home, "SELECT expectation, failed FROM ops.data_quality WHERE expectation LIKE '%_integer'"))
    assert nulled == {
        "order_amount_integer": 1,
        "order_item_count_integer": 0,
        "user_gender_integer": 1,
        "user_age_group_integer": 0,
    }
    gold = {
        r[0]: r[1:]
        for r in query(home, "SELECT user_id, total_amount, churn, days_since_creation FROM gold.churn_features")
    }
    assert set(gold) == set(odd_users)
    assert gold["n3"][0] == -25 and gold["n4"][1] is None and gold["n5"][2] == -1
    # A customer without a label is scored, not learned from, and shown as such.
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        assert "n4" not in set(load_training(con, 0).frame["user_id"].to_list())
        by_platform = next(m for m in METRICS if m.name == "churn_by_platform")
        assert con.execute(by_platform.sql).fetchall() == [("ios", "churned", 4), ("ios", "no label", 1)]
