"""Bronze -> silver, incrementally: each run reads only bronze rows of files it has not
read yet (a watermark on ``_file_id``, advanced in the same transaction as the writes).

Latest wins: a customer (or order) sent again replaces the earlier version, where
"later" is arrival order (file id, then position in the file).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from churn_assets.warehouse import scalar, transaction

TS_FORMAT = "%m-%d-%Y %H:%M:%S"


@dataclass
class SilverResult:
    table: str
    rows_read: int
    rows_written: int  # distinct keys inserted or replaced
    rows_new: int  # keys not seen before
    dropped: dict[str, int]  # expectation -> rows dropped
    rows_total: int


def _watermark(con, consumer: str, source_table: str) -> int:
    return scalar(
        con,
        "SELECT max(file_id) FROM ops.watermarks WHERE consumer = ? AND source_table = ?",
        [consumer, source_table],
    ) or 0


def _advance(con, consumer: str, source_table: str, file_id: int) -> None:
    con.execute("DELETE FROM ops.watermarks WHERE consumer = ? AND source_table = ?", [consumer, source_table])
    con.execute("INSERT INTO ops.watermarks VALUES (?, ?, ?, now()::TIMESTAMP)", [consumer, source_table, file_id])


def _define_macros(con) -> None:
    # Spark's initcap: words split on spaces, first letter upper, the rest lower.
    con.execute(
        """CREATE OR REPLACE TEMP MACRO initcap(s) AS
           array_to_string(list_transform(string_split(lower(s), ' '), lambda w: upper(left(w, 1)) || substr(w, 2)), ' ')"""
    )
    # Keyed pseudonym: sha256(key || sha256(key || value)). Unlike the reference's
    # unkeyed SHA-1, a dictionary of e-mails cannot be hashed without the key.
    con.execute("CREATE OR REPLACE TEMP MACRO pseudonym(v, k) AS sha256(k || sha256(k || v))")


def build_churn_users(con: duckdb.DuckDBPyConnection, pseudonym_key: str) -> SilverResult:
    _define_macros(con)
    source = "bronze.churn_users_bronze"
    with transaction(con):
        low = _watermark(con, "silver.churn_users", source)
        high = scalar(con, f"SELECT max(_file_id) FROM {source}") or low
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _new_users AS
                SELECT * FROM {source} WHERE _file_id > ? AND _file_id <= ?""",
            [low, high],
        )
        read = scalar(con, "SELECT count(*) FROM _new_users")
        missing_id = scalar(con, "SELECT count(*) FROM _new_users WHERE id IS NULL")
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _latest_users AS
               SELECT * FROM _new_users WHERE id IS NOT NULL
               QUALIFY row_number() OVER (PARTITION BY id ORDER BY _file_id DESC, _row_no DESC) = 1"""
        )
        written = scalar(con, "SELECT count(*) FROM _latest_users")
        replaced = scalar(
            con, "SELECT count(*) FROM silver.churn_users WHERE user_id IN (SELECT id FROM _latest_users)"
        )
        con.execute("DELETE FROM silver.churn_users WHERE user_id IN (SELECT id FROM _latest_users)")
        con.execute(
            f"""INSERT INTO silver.churn_users
                SELECT id, pseudonym(email, ?), try_strptime(creation_date, '{TS_FORMAT}'),
                       try_strptime(last_activity_date, '{TS_FORMAT}'), initcap(firstname), initcap(lastname),
                       address, canal, country, trunc(gender)::INTEGER, trunc(age_group)::INTEGER,
                       churn::INTEGER, _file_id, _row_no
                FROM _latest_users""",
            [pseudonym_key],
        )
        _advance(con, "silver.churn_users", source, high)
        total = scalar(con, "SELECT count(*) FROM silver.churn_users")
        con.execute("DROP TABLE _new_users; DROP TABLE _latest_users")
    return SilverResult("silver.churn_users", read, written, written - replaced, {"user_valid_id": missing_id}, total)


def build_churn_orders(con: duckdb.DuckDBPyConnection) -> SilverResult:
    source = "bronze.churn_orders_bronze"
    with transaction(con):
        low = _watermark(con, "silver.churn_orders", source)
        high = scalar(con, f"SELECT max(_file_id) FROM {source}") or low
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _new_orders AS SELECT * FROM {source} WHERE _file_id > ? AND _file_id <= ?",
            [low, high],
        )
        read, missing_id, missing_user = con.execute(
            "SELECT count(*), count(*) FILTER (id IS NULL), count(*) FILTER (id IS NOT NULL AND user_id IS NULL) FROM _new_orders"
        ).fetchall()[0]
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _latest_orders AS
               SELECT * FROM _new_orders WHERE id IS NOT NULL AND user_id IS NOT NULL
               QUALIFY row_number() OVER (PARTITION BY id ORDER BY _file_id DESC, _row_no DESC) = 1"""
        )
        written = scalar(con, "SELECT count(*) FROM _latest_orders")
        replaced = scalar(
            con, "SELECT count(*) FROM silver.churn_orders WHERE order_id IN (SELECT id FROM _latest_orders)"
        )
        con.execute("DELETE FROM silver.churn_orders WHERE order_id IN (SELECT id FROM _latest_orders)")
        # Spark's cast(double as int) truncates; DuckDB's rounds, hence trunc().
        con.execute(
            f"""INSERT INTO silver.churn_orders
                SELECT trunc(amount)::INTEGER, id, user_id, trunc(item_count)::INTEGER,
                       try_strptime(transaction_date, '{TS_FORMAT}'), _file_id, _row_no
                FROM _latest_orders"""
        )
        _advance(con, "silver.churn_orders", source, high)
        total = scalar(con, "SELECT count(*) FROM silver.churn_orders")
        con.execute("DROP TABLE _new_orders; DROP TABLE _latest_orders")
    return SilverResult(
        "silver.churn_orders", read, written, written - replaced,
        {"order_valid_id": missing_id, "order_valid_user_id": missing_user}, total,
    )
