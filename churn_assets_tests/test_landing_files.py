"""Every landing file, good, bad, changed or stalled: loaded exactly once or quarantined,
and never blocking the cycle. On top of the shared reference sample; each changed-file
story ends with bronze, silver and gold equal to a fresh load of the final landing folder
and with gold equal to the plain-SQL oracle."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from churn_assets.defs.bronze.manifest import file_changes, quarantined_files
from churn_assets.defs.bronze.parse import MAX_RECORD_BYTES
from churn_assets.defs.dashboards.metrics import METRICS
from churn_assets.ops.alerts import AlertStore
from churn_assets.pseudonym_key import key_path
from churn_assets.warehouse import connect
from churn_assets_tests import reference_oracle
from churn_assets_tests.helpers import SAMPLE, land_sample, materialize, needs_sample, one, query
from churn_assets_tests.helpers import user_record as user
from churn_assets_tests.landing_state import accounting, differences, snapshot

pytestmark = [needs_sample, pytest.mark.slow]
DATA = "*gold/churn_features"
HEADER = "user_id,event_id,platform,date,action,session_id,url"


def sample_file(source: str, i: int) -> Path:
    return sorted((SAMPLE / source).iterdir())[i]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# One e-mail pseudonym key for every home of this file: each home would otherwise get its own
# random key, and silver's pseudonyms (and what gold derives from them) would differ from the fresh load's.
SHARED_KEY = "landing-files-" + "5" * 50


def share_key(home: Path) -> None:
    path = key_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(SHARED_KEY + "\n", encoding="ascii")
    path.chmod(0o600)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    share_key(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """The warehouse a fresh load of the sample gives: what every story must end with."""
    home = tmp_path_factory.mktemp("fresh")
    (home / "landing").mkdir()
    share_key(home)
    land_sample(home)
    assert materialize(home, DATA).success
    return snapshot(home)


def assert_equals_fresh(home: Path, fresh: dict) -> None:
    assert differences(snapshot(home), fresh) == {}
    expected, got, mismatches = reference_oracle.compare(SAMPLE, home / "warehouse.duckdb", "2023-06-10")
    assert (expected, got, mismatches) == (450, 450, [])
    assert accounting(home) == []


# --- bad files ---------------------------------------------------------------------------------------


def write_bad_files(landing: Path) -> dict[str, tuple[str, str | None, int]]:
    """Bad and awkward files beside the sample: relpath -> (expected status, reason part, records landed)."""
    users, events, orders = landing / "users", landing / "events", landing / "orders"
    out: dict[str, tuple[str, str | None, int]] = {}
    # A name that is not UTF-8 (bytes path): quarantined, its records with it.
    Path(os.fsdecode(os.fsencode(users) + b"/caf\xe9.json")).write_text(user("u-name") + "\n")
    out["users/caf\\xe9.json"] = ("quarantined", "file name is not valid UTF-8", 1)
    (users / "array.json").write_text("[\n" + user("u-arr-1") + ",\n" + user("u-arr-2") + "\n]\n")
    out["users/array.json"] = ("quarantined", "a JSON array", 4)
    (users / "binary.json").write_bytes(b"\x00\x01\x02binary\n" + user("u-bin").encode() + b"\n")
    out["users/binary.json"] = ("quarantined", "binary content", 2)
    long_line = user("u-long", address="x" * (MAX_RECORD_BYTES + 10))
    (users / "long_line.json").write_text(user("u-long-ok-1") + "\n" + long_line + "\n" + user("u-long-ok-2") + "\n")
    out["users/long_line.json"] = ("loaded", None, 3)
    # A large file with no newline at all (longer than a line may be).
    (users / "no_newline.json").write_text(json.dumps({"id": "u-nonl", "blob": "y" * (MAX_RECORD_BYTES * 2)}))
    out["users/no_newline.json"] = ("quarantined", "line longer than", 1)
    (users / "latin1.json").write_bytes((user("u-lat", firstname="José") + "\n").encode("latin-1"))
    out["users/latin1.json"] = ("quarantined", "not valid UTF-8", 1)
    (users / "zipped.json.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    out["users/zipped.json.zip"] = ("quarantined", "does not take", 1)
    (users / "wrong.json.gz").write_bytes(b"BZh91AY&SY" + b"\x00" * 20)
    out["users/wrong.json.gz"] = ("quarantined", "bzip2", 1)
    # Valid and common: read as they are.
    crlf = user("u-bom-1") + "\r\n" + user("u-bom-2") + "\r\n"
    (users / "bom_crlf.json").write_bytes(b"\xef\xbb\xbf" + crlf.encode())
    out["users/bom_crlf.json"] = ("loaded", None, 2)
    (users / "empty.json").write_text("")
    out["users/empty.json"] = ("empty", None, 0)
    (users / "lines.jsonl").write_text(user("u-jsonl") + "\n")
    out["users/lines.jsonl"] = ("loaded", None, 1)
    (users / "lines.ndjson").write_text(user("u-ndjson") + "\n")
    out["users/lines.ndjson"] = ("loaded", None, 1)
    (users / "packed.json.gz").write_bytes(gzip.compress((user("u-gz-1") + "\n" + user("u-gz-2") + "\n").encode()))
    out["users/packed.json.gz"] = ("loaded", None, 2)
    (events / "case_dup.csv").write_text(
        "user_id,USER_ID,platform,date,action,session_id,url\nu1,u2,ios,06-06-2023 20:54:21,log,s,https://x/\n"
    )
    out["events/case_dup.csv"] = ("quarantined", "differ only in case", 1)
    (events / "whitespace.csv").write_text(
        HEADER + "\nu-ws,e-ws1,ios,06-06-2023 20:54:21,log,s1,https://x/\n   \n\t\n"
        "u-ws,e-ws2,ios,06-06-2023 20:55:21,log,s1,https://x/\n"
    )
    out["events/whitespace.csv"] = ("loaded", None, 2)
    (events / "header_only.csv").write_text(HEADER + "\n")
    out["events/header_only.csv"] = ("empty", None, 0)
    crlf = HEADER + "\r\nu-b,e-b1,ios,06-06-2023 20:54:21,log,s,https://x/\r\n"
    (events / "bom_crlf.csv").write_bytes(b"\xef\xbb\xbf" + crlf.encode())
    out["events/bom_crlf.csv"] = ("loaded", None, 1)
    order = {
        "user_id": "u-1",
        "id": "o-bad-1",
        "transaction_date": "06-05-2023 12:07:59",
        "item_count": 3.0,
        "amount": 57.0,
    }
    (orders / "ok.json").write_text(json.dumps(order) + "\n")
    out["orders/ok.json"] = ("loaded", None, 1)
    # Writers' temporaries and markers are not data: never read.
    for name in (
        "users/tmp.json.part",
        "users/tmp.json.filepart",
        "events/tmp.csv.partial",
        "users/.hidden.json",
        "users/_SUCCESS",
        "orders/notes.txt",
    ):
        (landing / name).write_text(user("u-temp") + "\n")
    return out


def test_every_bad_file_kind_is_quarantined_and_the_rest_loads(home):
    land_sample(home)
    expected = write_bad_files(home / "landing")
    result = materialize(home, DATA)
    assert result.success
    # Every sample file is fully loaded: the reference counts hold beside the bad files.
    for table, n in (("churn_users_bronze", 2086), ("churn_orders_bronze", 2173), ("churn_app_events", 1125)):
        assert one(home, f"SELECT count(*) FROM bronze.{table} WHERE _source_file LIKE '%part-%'") == n
    manifest = {
        p: (s, d, r, lo, q)
        for p, s, d, r, lo, q in query(
            home, "SELECT path, status, detail, records, rows_loaded, rows_quarantined FROM bronze.ingest_manifest"
        )
    }
    for path, (status, reason, landed) in expected.items():
        got_status, detail, records, loaded, quarantined = manifest[path]
        assert got_status == status, (path, detail)
        assert records == landed == loaded + quarantined, path
        if reason:
            assert reason in detail, (path, detail)
    assert not [p for p in manifest if "tmp." in p or "hidden" in p or "SUCCESS" in p or p.endswith(".txt")]
    # A file the allow-list leaves unread (not a writer's temporary) is named, never skipped silently.
    [orders] = [
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.path == ["bronze", "churn_orders_bronze"]
    ]
    assert orders["files_unrecognized"].value == 1
    assert orders["files_unrecognized_names"].value == ["orders/notes.txt"]
    # Per file: rows in bronze + quarantine records = records landed = the manifest's count.
    assert accounting(home) == []
    assert one(home, "SELECT count(*) FROM bronze.churn_users_bronze WHERE id LIKE 'u-long-ok-%'") == 2
    assert one(home, "SELECT reason FROM bronze.quarantine WHERE source_file = 'users/long_line.json'") == (
        f"line longer than {MAX_RECORD_BYTES} bytes"
    )
    assert one(home, "SELECT row_no FROM bronze.quarantine WHERE source_file = 'users/long_line.json'") == 2
    # Row numbers are line numbers: blank lines skipped, not renumbered.
    assert (
        one(home, "SELECT max(_row_no) FROM bronze.churn_app_events WHERE _source_file = 'events/whitespace.csv'") == 4
    )
    ids = query(home, "SELECT id FROM bronze.churn_users_bronze WHERE id LIKE 'u-bom-%' OR id LIKE 'u-gz-%' ORDER BY 1")
    assert [r[0] for r in ids] == ["u-bom-1", "u-bom-2", "u-gz-1", "u-gz-2"]
    con = connect(home / "warehouse.duckdb", read_only=True)
    try:
        listed = {f["path"]: f for f in quarantined_files(con)}
    finally:
        con.close()
    assert {p for p, (s, *_) in expected.items() if s == "quarantined"} | {"users/long_line.json"} == set(listed)
    # The next cycle reads nothing again: no file blocks or repeats.
    before = one(home, "SELECT count(*) FROM bronze.ingest_manifest")
    assert materialize(home, DATA).success
    assert one(home, "SELECT count(*) FROM bronze.ingest_manifest") == before


# --- changed files -----------------------------------------------------------------------------------


def cut(lines: list[bytes], share: float) -> int:
    return max(1, int(len(lines) * share))


def write_lines(path: Path, lines: list[bytes], mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(b"".join(lines))


def changes(home: Path) -> list[tuple[str, int, str]]:
    con = connect(home / "warehouse.duckdb", read_only=True)
    try:
        return sorted((c["path"], c["version"], c["event"]) for c in file_changes(con))
    finally:
        con.close()


def test_appended_tail_is_read_once(home, fresh):
    land_sample(home)
    targets = [sample_file("users", 0), sample_file("orders", 0), sample_file("events", 0)]
    for src in targets:
        lines = lines_of(src)
        write_lines(home / "landing" / src.parent.name / src.name, lines[: cut(lines, 0.4)])
    assert materialize(home, DATA).success
    for share in (0.7, 1.0):
        for src in targets:
            lines = lines_of(src)
            dest = home / "landing" / src.parent.name / src.name
            write_lines(dest, lines[len(lines_of(dest)) : cut(lines, share) if share < 1 else len(lines)], "ab")
        assert materialize(home, DATA).success
    assert changes(home) == sorted((f"{s.parent.name}/{s.name}", 1, "appended") for s in targets for _ in range(2))
    assert_equals_fresh(home, fresh)


def test_rewritten_file_replaces_its_earlier_version(home, fresh):
    land_sample(home)
    orders, events, users = sample_file("orders", 1), sample_file("events", 1), sample_file("users", 1)
    o = [json.loads(x) for x in lines_of(orders)]
    for rec in o[:30]:
        rec["amount"] = (rec["amount"] or 0) * 2
    compact = {"separators": (",", ":"), "ensure_ascii": False}
    # Shorter than the sample's file, so that the sample reads as a rewrite, not a truncation.
    (home / "landing/orders" / orders.name).write_text("\n".join(json.dumps(r, **compact) for r in o[5:]) + "\n")
    e = lines_of(events)
    write_lines(home / "landing/events" / events.name, e[:1] + [x.replace(b",android,", b",ios,") for x in e[1:]])
    u = [json.loads(x) for x in lines_of(users)]
    for rec in u[:40]:
        rec["country"] = "USA"
    (home / "landing/users" / users.name).write_text("\n".join(json.dumps(r, **compact) for r in u[3:]) + "\n")
    assert materialize(home, DATA).success
    assert differences(snapshot(home), fresh)  # the altered versions differ from the sample
    for src in (orders, events, users):
        shutil.copy(src, home / "landing" / src.parent.name / src.name)
    result = materialize(home, DATA)
    assert result.success
    assert changes(home) == sorted((f"{s.parent.name}/{s.name}", 2, "rewritten") for s in (orders, events, users))
    assert_equals_fresh(home, fresh)
    # Counted on the data-quality dashboard, and one warning alert per source of the run.
    con = connect(home / "warehouse.duckdb", read_only=True)
    try:
        daily = next(m for m in METRICS if m.name == "ingestion_daily")
        values = con.execute(daily.sql).fetchall()
        rows = [dict(zip([d[0] for d in con.description], v)) for v in values]
    finally:
        con.close()
    assert sum(r["files_new_version"] for r in rows) == 3
    alerts = [a for a in AlertStore(home / "ops" / "alerts.db").all() if a["kind"].startswith("file_changed")]
    assert sorted(a["kind"] for a in alerts) == ["file_changed_events", "file_changed_orders", "file_changed_users"]
    assert all(a["run_id"] == result.run_id and "rewritten" in a["reason"] for a in alerts)
    assert materialize(home, DATA).success  # nothing changed: no new alert, no new manifest row
    assert len([a for a in AlertStore(home / "ops" / "alerts.db").all() if a["kind"].startswith("file_changed")]) == 3


def test_truncated_file_takes_its_extra_records_out_of_gold(home, fresh):
    land_sample(home)
    orders, events = sample_file("orders", 2), sample_file("events", 2)
    o = [json.loads(x) for x in lines_of(orders)]
    extra = [{**r, "id": f"extra-{i}", "amount": 99.0} for i, r in enumerate(o[:25])]
    (home / "landing/orders" / orders.name).write_text("\n".join(json.dumps(r) for r in o + extra) + "\n")
    assert sum(1 for r in extra if r.get("user_id")) >= 20
    e = lines_of(events)
    write_lines(home / "landing/events" / events.name, e + [x.replace(b",https:", b",https://extra") for x in e[1:20]])
    assert materialize(home, DATA).success
    extra_valid = sum(1 for r in extra if r.get("user_id"))
    assert one(home, "SELECT count(*) FROM silver.churn_orders WHERE order_id LIKE 'extra-%'") == extra_valid
    for src in (orders, events):
        shutil.copy(src, home / "landing" / src.parent.name / src.name)
    assert materialize(home, DATA).success
    assert changes(home) == sorted((f"{s.parent.name}/{s.name}", 2, "truncated") for s in (orders, events))
    assert_equals_fresh(home, fresh)


def test_correction_redelivered_after_quarantine(home, fresh):
    land_sample(home)
    users, orders = sample_file("users", 2), sample_file("orders", 3)
    (home / "landing/users" / users.name).write_bytes(users.read_bytes().replace(b'"FR"', b'"FR\xe9"', 1))
    o = lines_of(orders)
    write_lines(home / "landing/orders" / orders.name, o[:4] + [b"{broken\n"] + o[5:])
    assert materialize(home, DATA).success
    status = dict(query(home, "SELECT path, status FROM bronze.ingest_manifest"))
    assert status[f"users/{users.name}"] == "quarantined"
    assert one(home, "SELECT count(*) FROM bronze.quarantine WHERE source_file = ?", [f"orders/{orders.name}"]) == 1
    for src in (users, orders):
        shutil.copy(src, home / "landing" / src.parent.name / src.name)
    assert materialize(home, DATA).success
    assert changes(home) == sorted([(f"orders/{orders.name}", 2, "rewritten"), (f"users/{users.name}", 2, "rewritten")])
    detail = one(
        home, "SELECT detail FROM bronze.ingest_manifest WHERE path = ? AND version = 2", [f"users/{users.name}"]
    )
    assert "re-delivered after its version 1 was quarantined" in detail
    assert_equals_fresh(home, fresh)


def test_writer_paused_mid_file_loses_nothing(home, fresh):
    land_sample(home)
    orders = sample_file("orders", 0)
    data = orders.read_bytes()
    middle = data.index(b"\n", len(data) // 2) + 40  # inside a line
    dest = home / "landing/orders" / orders.name
    dest.write_bytes(data[:middle])
    complete_lines = data[:middle].count(b"\n")
    time.sleep(1.5)  # past the settle window (1 s), the writer still pausing
    settle = {"CHURN_SETTLE_SECONDS": "1"}
    assert materialize(home, DATA, env=settle).success
    loaded = query(
        home,
        "SELECT records, rows_loaded, rows_quarantined FROM bronze.ingest_manifest WHERE path = ?",
        [f"orders/{orders.name}"],
    )
    # What was there is loaded; the unfinished final line is neither loaded nor quarantined.
    assert loaded == [(complete_lines, complete_lines, 0)]
    time.sleep(3.5)  # the pause lasts 5 s in all
    with open(dest, "ab") as f:
        f.write(data[middle:])
    time.sleep(1.2)
    assert materialize(home, DATA, env=settle).success
    assert changes(home) == [(f"orders/{orders.name}", 1, "appended")]
    assert_equals_fresh(home, fresh)


def test_temporary_name_renamed_into_place_is_read_once(home, fresh):
    land_sample(home)
    old = time.time() - 600
    renames = []
    temps = (
        (sample_file("events", 3), ".partial"),
        (sample_file("orders", 1), ".part"),
        (sample_file("users", 0), ".filepart"),
    )
    for src, suffix in temps:
        final = home / "landing" / src.parent.name / src.name
        final.unlink()
        temp = final.with_name(final.name + suffix)
        shutil.copy(src, temp)
        os.utime(temp, (old, old))
        renames.append((temp, final))
    assert materialize(home, DATA).success
    assert not query(home, "SELECT path FROM bronze.ingest_manifest WHERE path LIKE '%part%l' OR path LIKE '%.part'")
    for temp, final in renames:
        os.replace(temp, final)
    assert materialize(home, DATA).success
    assert one(home, "SELECT count(*) FROM bronze.ingest_manifest WHERE status = 'duplicate'") == 0
    assert_equals_fresh(home, fresh)
