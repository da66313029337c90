"""One landing contract (``churn_assets.landing``): the bronze tables, the parser and the generator
take their fields from it, and finding files costs a sensor none of the heavy libraries. What
discovery offers and the manifest remembers: every landed record in a table or in quarantine, once."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import date, datetime

import duckdb

from churn_assets.generator import generate_history
from churn_assets.landing import OPEN_LINE_FACTOR, SPECS, TIMESTAMP_REGEX
from churn_assets.timeutil import LANDING_TS_FORMAT
from churn_assets.warehouse import BRONZE_LINEAGE, ensure_schema
from churn_assets_tests.helpers import REPO

HEAVY = ("pyarrow", "duckdb", "polars", "numpy", "dagster", "pandas")


def test_finding_files_imports_no_heavy_library():
    code = f"import sys, churn_assets.landing; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sensors_find_files_through_the_landing_contract_only():
    tree = ast.parse((REPO / "churn_assets" / "defs" / "automation" / "triggers.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "churn_assets.landing" in imported
    assert not [m for m in imported if m.startswith("churn_assets.defs.bronze")]


def test_bronze_tables_have_the_contract_columns_then_the_lineage():
    con = duckdb.connect()
    ensure_schema(con)
    for spec in SPECS.values():
        columns = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'bronze' AND table_name = ? ORDER BY ordinal_position",
            [spec.table],
        ).fetchall()
        assert columns == [*spec.columns, *BRONZE_LINEAGE]


def test_the_timestamp_pattern_is_the_landing_format():
    con = duckdb.connect()
    written = datetime(2023, 6, 2, 6, 49, 21).strftime(LANDING_TS_FORMAT)
    assert written == "06-02-2023 06:49:21"
    for value, fits in (
        (written, True),
        ("2023-06-02 06:49:21", False),
        ("2023/06-02-2023 06:49:21", False),
        ("06-02-2023", False),
    ):
        assert con.execute("SELECT regexp_full_match(?, ?)", [value, TIMESTAMP_REGEX]).fetchall()[0][0] is fits


def test_the_generator_writes_the_contract_fields_in_order(tmp_path):
    report = generate_history(tmp_path, customers=300, seed=3, end=date(2026, 1, 1), progress=False)
    for source, spec in SPECS.items():
        files = report.files[source]
        assert files and all(f.endswith(spec.extension) for f in files)
        text = (tmp_path / "landing" / files[0]).read_text()
        if spec.fmt == "csv":
            assert text.splitlines()[0].split(",") == spec.column_names
            continue
        records = [json.loads(line) for line in text.splitlines()]
        widest = max(records, key=len)
        assert list(widest) == spec.column_names  # every field, in file order
        kinds = {"VARCHAR": str, "DOUBLE": float, "BOOLEAN": bool}
        for name, kind in spec.columns:
            assert {type(r[name]) for r in records if name in r} == {kinds[kind]}, (source, name)
        for name in spec.timestamps:
            assert all(datetime.strptime(r[name], LANDING_TS_FORMAT) for r in records if name in r)


# --- discovery and the manifest: every landed record in a table or in quarantine, once ---------------
# Imports of what these tests check stay inside them: on code without it, each fails alone.


def _land(path, text: str, age: float = 60.0) -> None:
    """Write a file as if landed ``age`` seconds ago (settled, its last line final)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))


def _ingest(tmp_path, con, source: str = "users", settle: float = 1.0):
    from churn_assets.defs.bronze.ingest import ingest_source

    return ingest_source(con, tmp_path / "landing", source, "run", settle_seconds=settle, batch_bytes=1 << 20)


def _ids(con, table: str = "churn_users_bronze", column: str = "id") -> list[str]:
    return sorted(i for (i,) in con.execute(f"SELECT {column} FROM bronze.{table}").fetchall())


def test_discover_takes_sub_folders_and_names_other_files(tmp_path):
    from churn_assets.landing import discover, unrecognized_files

    orders = tmp_path / "landing" / "orders"
    for name in (
        "a.json",
        "dt=2026-11-24/part-0.json",
        "dt=2026-11-24/hour=01/part-1.json.gz",
        "notes.txt",
        "export.json.1",
        "dt=2026-11-24/day.tsv",
        # writers' temporaries, hidden files and work folders: neither read nor reported
        ".hidden.json",
        "x.json.tmp",
        "x.json.part",
        "x.json~",
        "_SUCCESS",
        "_temporary/0/part-2.json",
        ".staging/part-3.json",
    ):
        _land(orders / name, "{}\n")
    found = discover(tmp_path / "landing", "orders", {}, settle_seconds=1)
    assert [f.relpath for f in found] == [
        "orders/a.json",
        "orders/dt=2026-11-24/hour=01/part-1.json.gz",
        "orders/dt=2026-11-24/part-0.json",
    ]
    assert unrecognized_files(tmp_path / "landing", "orders") == [
        "orders/dt=2026-11-24/day.tsv",
        "orders/export.json.1",
        "orders/notes.txt",
    ]


def test_a_file_read_to_its_last_newline_is_offered_again_once_its_last_line_is_final(tmp_path):
    from churn_assets.landing import OPEN_LINE_FACTOR, discover

    path = tmp_path / "landing" / "users" / "export.json"
    _land(path, '{"id":"1"}\n{"id":"2"}', age=0)
    st = path.stat()
    known = {"users/export.json": (st.st_size, st.st_mtime, True)}  # read up to its last newline
    settled = st.st_mtime + 2  # still for the settle time, not yet for 10 windows
    assert discover(tmp_path / "landing", "users", known, settle_seconds=1, now=settled) == []
    final = st.st_mtime + OPEN_LINE_FACTOR + 1
    [again] = discover(tmp_path / "landing", "users", known, settle_seconds=1, now=final)
    assert again.final
    read_whole = {"users/export.json": (st.st_size, st.st_mtime, False)}
    assert discover(tmp_path / "landing", "users", read_whole, settle_seconds=1, now=final) == []


def test_a_duplicate_whose_copy_was_retired_is_read_as_a_file_of_its_own():
    from churn_assets.defs.bronze.versions import FileState, plan_change, retired_copies

    content = b'{"id":"A1"}\n'
    digest = hashlib.sha256(content).hexdigest()
    dup = FileState(1, len(content), 0.0, len(content), digest, "duplicate", (2,))
    rewritten = FileState(2, 9, 0.0, 9, "other", "loaded", (3,))
    assert retired_copies({"users/b.json": dup, "users/a.json": rewritten}, {"other"}) == {"users/b.json"}
    # A copy that was appended to still holds the content (its first segment): nothing to restore.
    assert retired_copies({"users/b.json": dup}, {digest, "appended"}) == set()
    # One read up to its last newline is read whole once final: restoring it now would repeat.
    assert retired_copies({"users/b.json": replace(dup, prefix_hash="cut", open_tail=True)}, {"other"}) == set()
    assert plan_change(dup, content)[:2] == ("unchanged", len(content))
    event, start, why = plan_change(replace(dup, copy_retired=True), content)
    assert (event, start) == ("restored", 0) and "retired" in why


def test_duplicate_of_a_rewritten_file_loads_its_records_once(tmp_path):
    con = duckdb.connect()
    ensure_schema(con)
    users = tmp_path / "landing" / "users"
    _land(users / "a.json", '{"id":"A1"}\n{"id":"A2"}\n')
    _land(users / "b.json", '{"id":"A1"}\n{"id":"A2"}\n')  # the same bytes: a duplicate, 0 records
    first = _ingest(tmp_path, con)
    assert (first.files_loaded, first.files_duplicate, _ids(con)) == (1, 1, ["A1", "A2"])
    _land(users / "a.json", '{"id":"C1"}\n', age=30)  # a corrected export replaces a.json
    second = _ingest(tmp_path, con)
    # a.json's first version is retired; b.json, the content's only copy now, is read in the same run
    assert (second.files_new_version, second.rows_retired, second.rows_loaded) == (1, 2, 3)
    assert _ids(con) == ["A1", "A2", "C1"]
    assert _ingest(tmp_path, con).files_seen == 0
    assert _ids(con) == ["A1", "A2", "C1"]
    assert con.execute(
        "SELECT version, event, status, records FROM bronze.ingest_manifest WHERE path = 'users/b.json' ORDER BY 1"
    ).fetchall() == [(1, "new", "duplicate", 0), (2, "restored", "loaded", 2)]


def test_final_line_without_newline_loads_once_it_is_final(tmp_path):
    con = duckdb.connect()
    ensure_schema(con)
    settle = 0.05
    path = tmp_path / "landing" / "users" / "export.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"id":"nf-1"}\n{"id":"nf-2"}\n{"id":"nf-3"}')  # written in place, no rename
    time.sleep(2 * settle)  # settled, but the writer may still be on the last line
    assert _ingest(tmp_path, con, settle=settle).rows_loaded == 2
    time.sleep(OPEN_LINE_FACTOR * settle)  # still for 10 settle windows: the last line is final
    assert _ingest(tmp_path, con, settle=settle).rows_loaded == 1
    assert _ingest(tmp_path, con, settle=settle).files_seen == 0
    assert _ids(con) == ["nf-1", "nf-2", "nf-3"]
    assert con.execute(
        "SELECT event, records, offset_start, offset_end FROM bronze.ingest_manifest ORDER BY file_id"
    ).fetchall() == [("new", 2, 0, 28), ("appended", 1, 28, 41)]


def test_date_partitioned_files_load_once_under_their_relative_path(tmp_path):
    con = duckdb.connect()
    ensure_schema(con)
    order = '{"user_id":"x","id":"%s","transaction_date":"11-24-2026 10:00:00","item_count":1.0,"amount":10.0}\n'
    _land(tmp_path / "landing" / "orders" / "dt=2026-11-24" / "part-0.json", order % "ig-1")
    _land(tmp_path / "landing" / "orders" / "orders_20261124.txt", order % "ig-2")  # named, not read
    assert _ingest(tmp_path, con, "orders").rows_loaded == 1
    assert _ingest(tmp_path, con, "orders").files_seen == 0
    assert _ids(con, "churn_orders_bronze") == ["ig-1"]
    assert con.execute("SELECT path, rows_loaded FROM bronze.ingest_manifest").fetchall() == [
        ("orders/dt=2026-11-24/part-0.json", 1)
    ]
