"""Gold's build log (``defs/gold/changes.py``): what a reader of gold is told changed since it
last read, on a real DuckDB file with the warehouse's own schema."""

from __future__ import annotations

import pytest

from churn_assets.defs.gold.changes import changed_since, read_up_to, record_build
from churn_assets.warehouse import connect, ensure_schema


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(con)
    yield con
    con.close()


def changed(con, reader: str):
    sub = changed_since(con, reader)
    return None if sub is None else sorted(u for (u,) in con.execute(f"SELECT user_id FROM {sub}").fetchall())


def build(con, *users: str, every_row: bool = False) -> int:
    con.execute("CREATE OR REPLACE TEMP TABLE _affected AS SELECT unnest(?::VARCHAR[]) AS user_id", [list(users)])
    return record_build(con, None if every_row else "(SELECT user_id FROM _affected)")


def test_a_reader_sees_the_customers_of_the_builds_since_it_last_read(con):
    assert build(con, every_row=True) == 1  # the first, full build
    assert changed(con, "scoring") is None  # never read: everything
    read_up_to(con, "scoring")
    assert changed(con, "scoring") == []  # nothing built since
    build(con, "a", "b")
    build(con, "b", "c")
    assert changed(con, "scoring") == ["a", "b", "c"]
    read_up_to(con, "scoring")
    assert changed(con, "scoring") == []
    build(con, "d")
    build(con, every_row=True)  # a day-count refresh: every row moved
    build(con, "e")
    assert changed(con, "scoring") is None
    read_up_to(con, "scoring")
    assert changed(con, "scoring") == []


def test_the_log_keeps_what_some_reader_has_not_read(con):
    build(con, every_row=True)
    read_up_to(con, "scoring")
    read_up_to(con, "check")
    build(con, "a")
    read_up_to(con, "scoring")
    build(con, "b")  # the check has read neither: both kept for it
    assert changed(con, "check") == ["a", "b"] and changed(con, "scoring") == ["b"]
    read_up_to(con, "check")
    read_up_to(con, "scoring")
    build(con, "c")  # every reader has read "a" and "b": dropped
    assert [u for (u,) in con.execute("SELECT user_id FROM ops.gold_changes ORDER BY 1").fetchall()] == ["c"]
    assert changed(con, "check") == changed(con, "scoring") == ["c"]
