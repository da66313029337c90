"""The Spark engine without a cluster: the one copy of the transformation SQL (DuckDB's
dialect) transpiled for Spark, with nothing DuckDB-only left and every parameter bound; the
whole-file rules bronze runs on the workers. Row-for-row equality of the two engines is
checked on a real cluster in test_spark_engine.py."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

sqlglot = pytest.importorskip("sqlglot", reason="the spark extra is not installed (CHURN_EXTRAS=spark scripts/setup)")

from churn_assets.defs.campaigns.targets import RECENT_VIEW, TARGETS_TEMPLATE, TOP_TARGETS_TEMPLATE  # noqa: E402
from churn_assets.defs.dashboards.metrics import METRICS  # noqa: E402
from churn_assets.defs.gold.features import DATA_VALUES, SANE_VALUES, churn_features_sql, gold_quality  # noqa: E402
from churn_assets.defs.silver.spark import KEY_COLUMN, silver_spark_sql  # noqa: E402
from churn_assets.defs.silver.transform import ORDERS_SELECT, USERS_SELECT  # noqa: E402
from churn_assets.engine import qualify  # noqa: E402
from churn_assets.transpile import TranspileError, duckdb_to_spark  # noqa: E402

DUCKDB_ONLY = re.compile(
    r"\b(TRY_STRPTIME|STRPTIME|ARG_MIN|STRUCT_PACK|PSEUDONYM|DATE_DIFF|EPOCH_US)\s*\(|\bINT128\b|\$|\?|::", re.I
)


@pytest.mark.parametrize(
    "sql,named,positional",
    [
        (churn_features_sql(), {"as_of": datetime(2023, 6, 10)}, ()),
        (churn_features_sql("(SELECT user_id FROM x)"), {"as_of": datetime(2023, 6, 10)}, ()),
        (USERS_SELECT.format(new="v"), None, ["k" * 32]),
        (ORDERS_SELECT.format(new="v"), None, ()),
        *[(m.sql, {"as_of": datetime(2023, 6, 10)}, ()) for m in METRICS],
        (TARGETS_TEMPLATE.format(recent=f"SELECT user_id FROM {RECENT_VIEW}"), None, [100]),
        (TOP_TARGETS_TEMPLATE.format(recent=f"SELECT user_id FROM {RECENT_VIEW}"), None, [100, 100]),
    ],
)
def test_the_duckdb_sql_transpiles_to_spark_only(sql, named, positional):
    out = duckdb_to_spark(sql, named, positional)
    assert not DUCKDB_ONLY.search(out), out
    # Spark's parser takes it back: the output is Spark SQL, not a dialect mix.
    assert sqlglot.parse_one(out, read="spark") is not None


def test_what_sqlglot_leaves_is_rewritten():
    out = duckdb_to_spark(USERS_SELECT.format(new="v"), positional=["KEY"])
    # The keyed pseudonym as DuckDB computes it: sha256(key || sha256(key || email)), in hex.
    assert "SHA2(CONCAT('KEY', SHA2(CONCAT('KEY', email), 256)), 256) AS email" in out
    # Silver on Spark binds the key to a column, so the key's value is never in a plan.
    spark_sql = silver_spark_sql("silver.churn_users", "v")
    assert f"SHA2(CONCAT({KEY_COLUMN}, SHA2(CONCAT({KEY_COLUMN}, email), 256)), 256) AS email" in spark_sql
    assert "TRY_TO_TIMESTAMP(creation_date, 'MM-dd-yyyy HH:mm:ss')" in out
    # trunc() of a number: Spark's own trunc() is for dates; a cast to BIGINT truncates.
    assert "THEN CAST(CAST(gender AS BIGINT) AS INT) END AS gender" in out
    gold = duckdb_to_spark(churn_features_sql(), {"as_of": datetime(2023, 6, 10, 12)})
    # The event order's 128-bit number in Spark's widest integer type (up to 8.5e37 here).
    assert (
        "MIN_BY(platform, CAST(COALESCE(UNIX_MICROS(ts), 4611686018427387904) AS DECIMAL(38, 0)) * "
        "18446744073709551616 + CAST(_file_id AS DECIMAL(38, 0)) * 4294967296 + _row_no)" in gold
    )
    assert "CAST('2023-06-10 12:00:00' AS TIMESTAMP)" in gold


def test_month_differences_count_boundaries_as_duckdb():
    """DuckDB's date_diff('month') counts month boundaries crossed (Jan 31 -> Feb 1 is 1); Spark's
    datediff(MONTH) whole months elapsed (0): the transpiler writes DuckDB's meaning out."""
    out = duckdb_to_spark("SELECT date_diff('month', a, b) AS m, date_diff('year', a, b) AS y FROM t")
    assert "((YEAR(b) - YEAR(a)) * 12 + MONTH(b) - MONTH(a)) AS m" in out
    assert "(YEAR(b) - YEAR(a)) AS y" in out
    assert "DATEDIFF(DAY" in duckdb_to_spark("SELECT date_diff('day', a::DATE, b::DATE) FROM t")


def test_parameters_must_all_be_bound():
    with pytest.raises(TranspileError, match=r"\$as_of"):
        duckdb_to_spark(churn_features_sql())
    with pytest.raises(TranspileError, match="left over"):
        duckdb_to_spark("SELECT 1", positional=["x"])


def test_the_quality_rules_run_through_the_same_transpiler():
    seen = []

    class Recorder:
        def execute(self, sql, params=None):
            seen.append(duckdb_to_spark(sql))
            return self

        def fetchall(self):
            return [(10, 10, *(0,) * (len(SANE_VALUES) + len(DATA_VALUES)))]

    assert gold_quality(Recorder())["one_row_per_customer"] == (10, 0)
    # One pass for every rule.
    assert len(seen) == 1 and "gold.churn_features" in seen[0]
    assert "COUNT_IF(NOT COALESCE(order_count >= 1, FALSE))" in seen[0] or "FILTER(WHERE" in seen[0]


def test_schema_names_become_the_sessions_views():
    out = qualify("SELECT g.user_id FROM gold.churn_features AS g JOIN silver.churn_users u USING (user_id)")
    assert "FROM gold__churn_features AS g JOIN silver__churn_users AS u" in out
    assert qualify("SELECT * FROM other.t") == "SELECT * FROM other.t"


def test_spark_bronze_quarantines_what_the_duckdb_reader_cannot_read():
    """The whole-file rules the Spark engine runs on its workers, on real bytes."""
    import gzip

    from churn_assets.defs.bronze.spark import decode

    line = b'{"id": "a", "churn": true}\n'
    assert decode("u.json", line, "users") == (line.decode(), None)
    assert decode("u.json.gz", gzip.compress(b"\xef\xbb\xbf" + line), "users") == (line.decode(), None)
    assert "not a readable gzip" in decode("u.json.gz", gzip.compress(line)[:20], "users")[1]
    assert decode("u.json.zip", b"PK\x03\x04...", "users")[1] == "compressed in a format the reader does not take"
    assert "NUL byte at offset 3" in decode("u.json", b'{"i\x00', "users")[1]
    assert "not valid UTF-8" in decode("u.json", b'{"id": "\xff"}\n', "users")[1]
    assert "JSON array" in decode("u.json", b'[{"id": "a"}]', "users")[1]
    header = b"user_id,event_id,platform,date,action,session_id,url\n"
    assert decode("e.csv", header + b"u,e,ios,d,view,s,/\n", "events")[1] is None
    assert "none of the expected columns" in decode("e.csv", b"a,b\n1,2\n", "events")[1]
    assert "order" in decode("e.csv", b"event_id,user_id,platform,date,action,session_id,url\n", "events")[1]


def test_md5_number_is_rewritten_with_duckdbs_numbers():
    """The model's holdout and sample rules use DuckDB's md5_number (a 128-bit integer, which
    Spark lacks): the rewrite's arithmetic, replayed in Python on the Spark expression's own
    steps, gives DuckDB's numbers for 3,000 keys; on a cluster, test_spark_engine.py checks
    the same customers land in the holdout and the sample on both engines."""
    import duckdb

    from churn_assets.defs.ml.features import PLACE_MODULUS
    from churn_assets.transpile import md5_number_word_factors

    rows = (
        duckdb.connect()
        .execute(
            f"SELECT md5(s), md5_number(s) % 100, md5_number(s) % 7, md5_number(s) % {PLACE_MODULUS}, "
            "md5_number(s)::VARCHAR "
            "FROM (SELECT 'u' || i::VARCHAR AS s FROM range(3000) t(i))"
        )
        .fetchall()
    )
    numbers: list[int] = []
    for digest, mod100, mod7, mod_place, number in rows:
        # REGEXP_REPLACE(REVERSE(MD5(x)), '(.)(.)', '$2$1'): the digest's bytes reversed.
        number_hex = re.sub("(.)(.)", r"\2\1", digest[::-1])
        assert int(number_hex, 16) == int(number)
        words = [int(number_hex[8 * i : 8 * i + 8], 16) for i in range(4)]
        for modulus, expected in ((100, mod100), (7, mod7), (PLACE_MODULUS, mod_place)):
            assert (
                sum(w * f for w, f in zip(words, md5_number_word_factors(modulus), strict=True)) % modulus == expected
            )
        numbers.append(int(number))
    assert len({n % 100 for n in numbers}) == 100


def test_the_training_sql_transpiles_and_other_md5_number_uses_are_refused():
    from churn_assets.defs.ml.features import PLACE_MODULUS, holdout_sql, training_sql

    samples = (
        training_sql(0, True),
        training_sql(2_000_000, True),
        training_sql(0, True, 50),
        training_sql(100, True, 50),
        holdout_sql(50, True),
    )
    for sql in samples:
        out = duckdb_to_spark(sql)
        assert not re.search(r"MD5_NUMBER|EXCLUDE", out, re.I), out
        assert sqlglot.parse_one(out, read="spark") is not None
    out = duckdb_to_spark(training_sql(100, portable=True))
    assert "REGEXP_REPLACE(REVERSE(MD5(user_id)), '(.)(.)', '$2$1')" in out
    # One md5 per customer: the split is its remainder mod 100, the sample's rank the quotient.
    assert f") % {PLACE_MODULUS} AS _place" in out and out.count("MD5(user_id)") == 4  # its four words
    assert "_place % 100 < 20 AS is_holdout" in out and "_place DIV 100 AS _rank_key" in out
    for other in ("SELECT md5_number(user_id) + 1 FROM t", "SELECT user_id FROM t ORDER BY md5_number(user_id)"):
        with pytest.raises(TranspileError, match="md5_number"):
            duckdb_to_spark(other)
    # A modulus whose words' weighted sum would pass a BIGINT on Spark is refused, not wrapped.
    duckdb_to_spark(f"SELECT md5_number(user_id) % {2**29 - 1} FROM t")
    with pytest.raises(TranspileError, match="overflow"):
        duckdb_to_spark(f"SELECT md5_number(user_id) % {2**31 + 11} FROM t")


def test_a_spark_connect_server_that_does_not_answer_is_one_line_without_the_token(tmp_path):
    """sc:// is taken (no longer refused); a server that is not there fails the run's start with
    one line naming host and port, in seconds (importing the client's packages, then a refused
    TCP connect) rather than the gRPC client's minutes of retries; the URL's token is not printed."""
    import socket
    import time

    from churn_assets.engine import connect_address, run_problem

    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        master = f"sc://127.0.0.1:{port}/;token=s3cret-token;use_ssl=false"
        t0 = time.perf_counter()
        problem = run_problem("spark", master, str(tmp_path / "spark_warehouse"))
        took = time.perf_counter() - t0
    assert problem.startswith(f"no Spark Connect server answers at sc://127.0.0.1:{port} (")
    assert "\n" not in problem and "s3cret" not in problem and took < 60
    assert connect_address("sc://connect-host") == ("connect-host", 15002)
    assert connect_address(master) == ("127.0.0.1", port)
    # What is neither a master nor a Connect URL is refused by name.
    assert "is not a master URL" in run_problem("spark", "yarn", str(tmp_path))
    assert run_problem("duckdb", master, str(tmp_path)) is None
