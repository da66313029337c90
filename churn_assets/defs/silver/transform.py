"""Bronze -> silver, incrementally: each run reads only bronze rows of files it has not
read yet (a watermark on ``_file_id``, advanced in the same transaction as the writes).

Latest wins: a customer (or order) sent again replaces the earlier version, where
"later" is arrival order (file id, then position in the file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from churn_assets.defs.silver.changes import FEEDS, record_removed
from churn_assets.faults import fault_point
from churn_assets.timeutil import LANDING_TS_FORMAT as TS_FORMAT
from churn_assets.warehouse import advance, scalar, transaction, watermark

# The cleaning of each silver table, written once in DuckDB's SQL: the DuckDB engine runs it
# as is, the Spark engine transpiled (``defs/silver/spark.py``). ``{new}`` is the latest
# valid bronze row per key; ``?`` the pseudonym key. Columns in the silver DDL's order.
USERS_VALID = "id IS NOT NULL"
# Each expectation of a table -> the condition of a row it drops (counted in ops.data_quality):
# together, exactly the rows the VALID condition leaves out (``_upsert`` checks it on every run).
# Used as they are by both engines (not transpiled): plain SQL that DuckDB and Spark read alike.
USERS_DROPPED = {"user_valid_id": "id IS NULL"}


# A number (DOUBLE in bronze) whose truncation fits silver's INTEGER. Spark's cast(double as int)
# truncates; DuckDB's rounds, hence trunc(). NaN compares greater than any number in both engines.
def _fits_integer(column: str) -> str:
    return f"({column} > -2147483649 AND {column} < 2147483648)"


def as_integer(column: str) -> str:
    """``column`` truncated to an INTEGER; null where it cannot be one (NaN, infinite, beyond 32 bits).
    A plain cast raises on such a value (DuckDB, and Spark under ANSI mode): one odd number in a
    landed file would fail the step on every cycle. The row is kept; ``*_FLAGGED`` counts it."""
    return f"CASE WHEN {_fits_integer(column)} THEN trunc({column})::INTEGER END"


def _integer_expectations(table: str, columns: tuple[str, ...]) -> dict[str, str]:
    """expectation -> the condition of a kept row whose number ``as_integer`` made null."""
    return {f"{table}_{c}_integer": f"{c} IS NOT NULL AND NOT {_fits_integer(c)}" for c in columns}


# Expectations that keep the row (each -> the condition of a row that fails it), counted in
# ops.data_quality beside the dropped rows.
USERS_FLAGGED = _integer_expectations("user", ("gender", "age_group"))
USERS_SELECT = f"""SELECT id AS user_id, pseudonym(email, ?) AS email,
                   try_strptime(creation_date, '{TS_FORMAT}') AS creation_date,
                   try_strptime(last_activity_date, '{TS_FORMAT}') AS last_activity_date,
                   initcap(firstname) AS firstname, initcap(lastname) AS lastname,
                   address, canal, country, {as_integer("gender")} AS gender, {as_integer("age_group")} AS age_group,
                   churn::INTEGER AS churn, _file_id, _row_no
            FROM {{new}}"""
ORDERS_VALID = "id IS NOT NULL AND user_id IS NOT NULL"
ORDERS_DROPPED = {"order_valid_id": "id IS NULL", "order_valid_user_id": "id IS NOT NULL AND user_id IS NULL"}
ORDERS_FLAGGED = _integer_expectations("order", ("amount", "item_count"))
ORDERS_SELECT = f"""SELECT {as_integer("amount")} AS amount, id AS order_id, user_id,
                    {as_integer("item_count")} AS item_count,
                    try_strptime(transaction_date, '{TS_FORMAT}') AS creation_date, _file_id, _row_no
             FROM {{new}}"""


@dataclass
class SilverResult:
    table: str
    rows_read: int
    rows_written: int  # distinct keys inserted or replaced
    rows_new: int  # keys not seen before
    dropped: dict[str, int]  # expectation -> rows dropped
    rows_total: int
    flagged: dict[str, int] = field(default_factory=dict)  # expectation -> rows kept that fail it


def _define_macros(con) -> None:
    # Spark's initcap: words split on spaces, first letter upper, the rest lower.
    con.execute(
        """CREATE OR REPLACE TEMP MACRO initcap(s) AS
           array_to_string(list_transform(string_split(lower(s), ' '),
                                          lambda w: upper(left(w, 1)) || substr(w, 2)), ' ')"""
    )
    # Keyed pseudonym: sha256(key || sha256(key || value)). Unlike the reference's
    # unkeyed SHA-1, a dictionary of e-mails cannot be hashed without the key.
    con.execute("CREATE OR REPLACE TEMP MACRO pseudonym(v, k) AS sha256(k || sha256(k || v))")


def _upsert(
    con,
    *,
    consumer: str,
    source: str,
    key: str,
    target: str,
    target_key: str,
    valid: str,
    select: str,
    params: list,
    dropped: dict[str, str],
    flagged: dict[str, str],
    tell_gold: bool = False,
) -> tuple[int, int, int, int, dict[str, int], dict[str, int]]:
    """Upsert the new bronze rows of ``source`` into ``target``; latest arrival per key wins.

    Returns (rows read, keys written, keys that replaced an existing row, high watermark, per
    expectation of ``dropped`` (name -> the condition of a dropped row) the new rows it dropped,
    and per expectation of ``flagged`` the new valid rows that fail it and are kept; all counted
    in the same scan). The common cases take the fast path: no key twice in the new rows (no
    window), an empty target (no delete).
    """
    low = watermark(con, consumer, source)
    high = scalar(con, f"SELECT max(_file_id) FROM {source}") or low
    _rederive_retired(
        con,
        source=source,
        key=key,
        target=target,
        target_key=target_key,
        valid=valid,
        select=select,
        params=params,
        low=low,
    )
    new = f"(SELECT * FROM {source} WHERE _file_id > {int(low)} AND _file_id <= {int(high)})"
    # Distinct 64-bit hashes of the keys, a far cheaper aggregate than the strings: equal keys
    # always hash alike, so as many hashes as rows proves every key distinct. Fewer hashes
    # (a key sent twice, or a collision) take the exact count and the latest-wins window.
    tallies = "".join(f", count(*) FILTER ({condition})" for condition in dropped.values())
    tallies += "".join(f", count(*) FILTER (({valid}) AND ({condition}))" for condition in flagged.values())
    read, valid_rows, distinct, *counts = con.execute(
        f"SELECT count(*), count(*) FILTER ({valid}), count(DISTINCT hash({key})) FILTER ({valid}){tallies} FROM {new}"
    ).fetchall()[0]
    tallied = dict(zip(dropped, counts[: len(dropped)], strict=True))
    kept_failing = dict(zip(flagged, counts[len(dropped) :], strict=True))
    if read != valid_rows + sum(tallied.values()):  # the quality counts would be wrong without an error
        raise RuntimeError(f"{target}: the dropped-row conditions {dropped} do not cover the rows failing {valid}")
    if valid_rows == 0:
        return read, 0, 0, high, tallied, kept_failing
    if distinct < valid_rows:
        distinct = scalar(con, f"SELECT count(DISTINCT {key}) FILTER ({valid}) FROM {new}")
        new = f"""(SELECT * FROM {new} WHERE {valid}
                  QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _file_id DESC, _row_no DESC) = 1)"""
    else:
        new = f"(SELECT * FROM {new} WHERE {valid})"
    replaced = 0
    if scalar(con, f"SELECT count(*) > 0 FROM {target}"):
        # One scan of the target finds the rows being replaced, with the old images its change
        # feed keeps; the rest works on them.
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _replaced AS
                SELECT rowid AS row_id, _file_id, {", ".join(FEEDS[target].columns)} FROM {target}
                WHERE {target_key} IN (SELECT {key} FROM {new})"""
        )
        if tell_gold:
            con.execute("INSERT INTO ops.gold_pending_users SELECT DISTINCT user_id FROM _replaced")
        replaced = scalar(con, "SELECT count(*) FROM _replaced")
        if replaced:
            record_removed(con, target, "_replaced", high)
        con.execute(f"DELETE FROM {target} WHERE rowid IN (SELECT row_id FROM _replaced)")
        con.execute("DROP TABLE _replaced")
    con.execute(f"INSERT INTO {target} {select.format(new=new)}", params)
    return read, distinct, replaced, high, tallied, kept_failing


def _rederive_retired(
    con, *, source: str, key: str, target: str, target_key: str, valid: str, select: str, params: list, low: int
) -> int:
    """Take out the rows that came from a retired file version (bronze deleted its rows when a
    new version of the file arrived) and put back, for those keys, the latest remaining
    bronze row already read: the table then equals a fresh load of the landing folder.
    Gold is told every customer concerned. Returns the rows taken out."""
    from churn_assets.defs.bronze.manifest import retired_file_ids

    retired = retired_file_ids(con, FEEDS[target].source)
    if not retired:
        return 0
    ids = ", ".join(str(int(i)) for i in retired)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _retired AS SELECT rowid AS row_id, {target_key} AS k, user_id
            FROM {target} WHERE _file_id IN ({ids})"""
    )
    taken = scalar(con, "SELECT count(*) FROM _retired")
    if taken:
        con.execute(f"DELETE FROM {target} WHERE rowid IN (SELECT row_id FROM _retired)")
        earlier = f"""(SELECT * FROM {source}
                      WHERE _file_id <= {int(low)} AND {valid} AND {key} IN (SELECT k FROM _retired)
                      QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _file_id DESC, _row_no DESC) = 1)"""
        con.execute(f"INSERT INTO {target} {select.format(new=earlier)}", params)
        con.execute(
            f"""INSERT INTO ops.gold_pending_users
                SELECT user_id FROM _retired WHERE user_id IS NOT NULL
                UNION SELECT user_id FROM {target} WHERE {target_key} IN (SELECT k FROM _retired)"""
        )
        fault_point("silver_after_retire")
    con.execute("DROP TABLE _retired")
    return taken


def build_churn_users(con: duckdb.DuckDBPyConnection, pseudonym_key: str) -> SilverResult:
    _define_macros(con)
    feed = FEEDS["silver.churn_users"]
    with transaction(con):
        read, written, replaced, high, dropped, flagged = _upsert(
            con,
            consumer=feed.table,
            source=feed.bronze,
            key="id",
            target="silver.churn_users",
            target_key="user_id",
            valid=USERS_VALID,
            select=USERS_SELECT,
            params=[pseudonym_key],
            dropped=USERS_DROPPED,
            flagged=USERS_FLAGGED,
        )
        advance(con, feed.table, feed.bronze, high)
        fault_point("silver_before_commit")
        total = scalar(con, "SELECT count(*) FROM silver.churn_users")
    return SilverResult("silver.churn_users", read, written, written - replaced, dropped, total, flagged)


def build_churn_orders(con: duckdb.DuckDBPyConnection) -> SilverResult:
    feed = FEEDS["silver.churn_orders"]
    with transaction(con):
        read, written, replaced, high, dropped, flagged = _upsert(
            con,
            consumer=feed.table,
            source=feed.bronze,
            key="id",
            target="silver.churn_orders",
            target_key="order_id",
            valid=ORDERS_VALID,
            select=ORDERS_SELECT,
            params=[],
            dropped=ORDERS_DROPPED,
            flagged=ORDERS_FLAGGED,
            # An order re-sent under another customer changes that customer's aggregates
            # too: gold is told, since the new version no longer names them.
            tell_gold=True,
        )
        advance(con, feed.table, feed.bronze, high)
        fault_point("silver_before_commit")
        total = scalar(con, "SELECT count(*) FROM silver.churn_orders")
    return SilverResult("silver.churn_orders", read, written, written - replaced, dropped, total, flagged)
