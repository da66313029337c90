"""`churn sql` on the DuckDB engine: a read-only query printed as a table or CSV, without the
writer's lock; while another process writes the file, one line naming that process."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import duckdb

from churn_assets.cli import main
from churn_assets.settings import environment_scope


def _sql(home, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with environment_scope(CHURN_HOME=str(home)):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["sql", *args])
    return code, out.getvalue(), err.getvalue()


def _warehouse(home):
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA gold")
    con.execute(
        "CREATE TABLE gold.churn_features AS "
        "SELECT * FROM (VALUES ('u1', 'FR', 3), ('u2', NULL, 1)) t(user_id, country, order_count)"
    )
    con.close()


def test_table_and_csv(home):
    _warehouse(home)
    code, out, err = _sql(home, "SELECT user_id, country, order_count FROM gold.churn_features ORDER BY user_id")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "user_id | country | order_count",
        "--------+---------+------------",
        "u1      | FR      | 3",
        "u2      | NULL    | 1",
        "(2 rows)",
    ]
    code, out, _ = _sql(home, "SELECT user_id, country FROM gold.churn_features ORDER BY user_id", "--csv")
    assert (code, out) == (0, "user_id,country\nu1,FR\nu2,\n")


def test_read_only_and_one_line_while_a_run_writes(home):
    _warehouse(home)
    code, _, err = _sql(home, "DELETE FROM gold.churn_features")
    assert code == 1 and err.count("\n") == 1 and "read-only" in err.lower()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(60)",
            str(home / "warehouse.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        code, out, err = _sql(home, "SELECT count(*) FROM gold.churn_features")
    finally:
        writer.kill()
        writer.wait()
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert f"is being written by pid {writer.pid}: query it when that run ends" in err
