"""The engine that executes the cycle: DuckDB (the warehouse file, default) or
Apache Spark (``CHURN_ENGINE=spark``), and what the Spark side needs from below the domains.

On Spark every table is a parquet folder under ``CHURN_SPARK_WAREHOUSE`` (a path or an
object-store URI every worker reaches): ``<warehouse>/<schema>/<table>/``. Bronze tables are
append-only, one sub-folder per streaming micro-batch (``batch=<id>``, overwritten whole when a
batch is replayed); silver and gold are rebuilt into a new version folder and switched to it by
writing one pointer file (``_CURRENT``), so a reader sees the old or the new table, never half
of one. What this project does on that storage itself (pointers, listings, cleanup) goes
through ``storage.py``; Spark reads and writes the tables with its own connectors. No Delta
Lake: its jars come from Maven at run time, which a locked-down cluster cannot reach.

``pyspark`` is an optional extra: it is imported only when the Spark engine runs.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg

from churn_assets.settings import Settings, environment_scope
from churn_assets.storage import new_version, storage_problem, warehouse_store
from churn_assets.timeutil import utcnow
from churn_assets.transpile import duckdb_to_spark

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

# Tables a query may name as <schema>.<table>.
SCHEMAS = ("bronze", "silver", "gold", "ops", "dashboard")
# ops.data_quality on Spark: the DuckDB table's columns (one folder per write).
QUALITY_COLUMNS = (
    "run_id string, checked_at timestamp_ntz, layer string, table_name string, expectation string, passed long, "
    "failed long, dropped long, detail string"
)
# ops.watermarks and ops.gold_state on Spark (the DuckDB tables' columns, one row a build): when
# silver and gold last took in data, which the pipeline-health figure shows.
WATERMARK_COLUMNS = "consumer string, source_table string, file_id long, updated_at timestamp_ntz"
GOLD_STATE_COLUMNS = "table_name string, as_of timestamp_ntz, built_at timestamp_ntz"

_SESSIONS: dict[tuple[str, str], SparkSession] = {}


class EngineUnavailable(RuntimeError):
    """The Spark engine cannot start here; the message says what to install or set."""


# The session's SQL settings (a Spark Connect client may set only these): timestamps without a zone,
# as the DuckDB warehouse keeps them, with no shift by the JVM's zone.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.adaptive.enabled": "true",
}
# The application's settings (a driver in this process only; a Connect server has its own):
# a task lost with its worker is retried elsewhere (the default, said out loud).
APP_CONF = {"spark.task.maxFailures": "4"}


def is_connect(master: str) -> bool:
    """A Spark Connect URL (``sc://host:port``): the driver runs in the server, this process is a client."""
    return master.startswith("sc://")


def spark_session(
    master: str, warehouse: str, python: str = sys.executable, app_name: str = "churn_assets"
) -> SparkSession:
    """One application per process, one session per (master, warehouse): starting an
    application on a cluster takes seconds, so the steps of a run and the runs of one process
    share it; a session of its own per warehouse keeps each one's table views apart."""
    key = (master, warehouse)
    if key in _SESSIONS:
        return _SESSIONS[key]
    if _SESSIONS and next(iter(_SESSIONS))[0] != master:
        stop_sessions()
    if _SESSIONS and not is_connect(master):
        _SESSIONS[key] = next(iter(_SESSIONS.values())).newSession()
        return _SESSIONS[key]
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineUnavailable(
            "CHURN_ENGINE=spark needs pyspark: pip install 'churn_assets[spark]' (and Java 17)"
        ) from None
    if is_connect(master):
        import_connect_client()
        # The server owns the application (master, executors, their Python): a session is a
        # gRPC channel, cheap, so one of its own per warehouse with ``create`` (Connect's
        # ``newSession`` would start from the server's defaults, without SESSION_CONF).
        builder = SparkSession.builder.remote(master)
        for k, v in SESSION_CONF.items():
            builder = builder.config(k, v)
        _SESSIONS[key] = builder.create()
        return _SESSIONS[key]
    builder = SparkSession.builder.appName(app_name).master(master)
    for k, v in {**SESSION_CONF, **APP_CONF}.items():
        builder = builder.config(k, v)
    # The workers' Python: pyspark reads it from the environment when the context starts.
    with environment_scope(PYSPARK_PYTHON=python):
        session = builder.getOrCreate()
    _SESSIONS[key] = session
    return session


class EngineResource(dg.ConfigurableResource):
    """Which engine executes the cycle, and (Spark) where its cluster and tables are."""

    name: str
    spark_master: str
    spark_warehouse: str
    spark_python: str

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineResource:
        return cls(
            name=settings.engine,
            spark_master=settings.spark_master,
            spark_warehouse=settings.spark_warehouse,
            spark_python=settings.spark_python,
        )

    @property
    def is_spark(self) -> bool:
        return self.name == "spark"

    def spark(self) -> SparkSession:
        """The session. Its table views are registered only where SQL names tables (``sql``,
        ``cursor``): each registration lists every table's folder and reads its parquet schema."""
        return spark_session(self.spark_master, self.spark_warehouse, self.spark_python)

    def _with_tables(self, *sqls: str) -> SparkSession:
        """The session with the tables the Spark SQL texts name, as they are now (see ``register_tables``)."""
        session = self.spark()
        register_tables(session, self.spark_warehouse, {name for sql in sqls for name in named_tables(sql)})
        return session

    def table(self, table: str) -> DataFrame:
        """One table as it is now, read from its current folder."""
        where = current_dir(self.spark_warehouse, table)
        if where is None:
            raise LookupError(f"{table}: no such table under {self.spark_warehouse} yet")
        return self.spark().read.parquet(where)

    def has_table(self, table: str) -> bool:
        return current_dir(self.spark_warehouse, table) is not None

    def sql(self, sql: str, views: Mapping[str, str] | None = None) -> DataFrame:
        """Spark SQL naming tables as ``<schema>.<table>``; ``views`` (name -> Spark SQL over the
        tables) are tables this engine keeps in another shape, e.g. one per source."""
        session = self._with_tables(sql, *(views or {}).values())
        for name, view_sql in (views or {}).items():
            session.sql(qualify(view_sql)).createOrReplaceTempView(view_name(name))
        return session.sql(qualify(sql))

    def table_dir(self, table: str) -> str:
        return table_dir(self.spark_warehouse, table)

    def cursor(self) -> SparkCursor:
        return SparkCursor(self.spark(), self.spark_warehouse)

    def append_rows(self, table: str, columns: str, rows: list[tuple]) -> None:
        """Append rows (``columns``: a Spark DDL schema) to an append-only table, one folder a call."""
        spark = self.spark()
        spark.createDataFrame(rows, columns).coalesce(1).write.parquet(
            f"{self.table_dir(table)}/batch={uuid.uuid4().hex[:16]}"
        )

    def replace_table(self, df: DataFrame, table: str) -> None:
        replace_table(df, self.spark_warehouse, table)

    def record_quality(self, run_id: str, layer: str, table: str, rows: list[tuple]) -> None:
        """``warehouse.record_quality`` on Spark: (expectation, passed, failed, dropped, detail) rows."""
        now = utcnow()
        self.append_rows("ops.data_quality", QUALITY_COLUMNS, [(run_id, now, layer, table, *r) for r in rows])


def spark_problem(master: str, warehouse: str | None = None) -> str | None:
    """Why a run cannot start on Spark (one line), or None."""
    if not (master.startswith(("spark://", "local")) or is_connect(master)):
        return f"CHURN_SPARK_MASTER={master!r} is not a master URL: use spark://host:7077, sc://host:15002 or local[*]"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "CHURN_ENGINE=spark needs pyspark: pip install 'churn_assets[spark]' (and Java 17)"
    if is_connect(master) and (problem := connect_problem(master)):
        return problem
    # Last: an object store is asked once whether this process reaches it (credentials, bucket).
    return storage_problem(warehouse) if warehouse is not None else None


def import_connect_client() -> None:
    """pyspark's Spark Connect client, which checks its packages (grpcio, pyarrow, pandas...) when
    imported. Without its FutureWarning that pandas 3 is not yet fully supported: the project pins
    pandas 3, and what the cycle does over Connect (Arrow collects, rows to a DataFrame, MLflow's
    pandas UDF) is tested with it (test_spark_engine.py's Spark Connect test); the warning would
    print on every `churn sql`."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        import pyspark.sql.connect.session  # noqa: F401


def connect_address(master: str) -> tuple[str, int]:
    """(host, port) of a Spark Connect URL, ``sc://host[:port][/;param=value...]`` (15002 by default)."""
    from urllib.parse import urlparse

    url = urlparse(master.split(";", 1)[0])
    return url.hostname or "localhost", url.port or 15002


def connect_problem(master: str, timeout: float = 5.0) -> str | None:
    """Why a Spark Connect server cannot be used (one line), or None. Checked before the client's
    first call: a server that is down would otherwise cost the gRPC client's retries (minutes)
    and end in a page of gRPC text. The URL's parameters (a token) are never echoed."""
    import socket

    try:
        import_connect_client()
    except ImportError as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"Spark Connect needs its client packages: pip install 'churn_assets[spark]' ({why})"
    try:
        host, port = connect_address(master)
    except ValueError as exc:
        return f"CHURN_SPARK_MASTER is not a Spark Connect URL sc://host:port ({exc})"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return (
            f"no Spark Connect server answers at sc://{host}:{port} ({exc.strerror or type(exc).__name__}): start "
            "one (sbin/start-connect-server.sh) or fix CHURN_SPARK_MASTER"
        )
    return None


def run_problem(engine: str, master: str, warehouse: str) -> str | None:
    """Why a run cannot start on the configured engine (one line), or None: checked when the
    run's first resource is set up, so a run that cannot work fails before any step."""
    if engine != "spark":
        return None
    return spark_problem(master, warehouse)


def table_dir(warehouse: str, table: str) -> str:
    schema, name = table.split(".")
    return f"{warehouse.rstrip('/')}/{schema}/{name}"


def current_dir(warehouse: str, table: str) -> str | None:
    """The folder a versioned table reads from now (None before its first build); a bronze
    (append-only) table is its folder itself."""
    store, rel = warehouse_store(warehouse), table.replace(".", "/")
    version = store.pointer(rel)
    if version is not None:
        return f"{table_dir(warehouse, table)}/{version}"
    return table_dir(warehouse, table) if store.has_batches(rel) else None


def replace_table(df: DataFrame, warehouse: str, table: str) -> None:
    """Write ``df`` as a new version of ``table``, switch to it (one pointer write, see
    ``WarehouseStore.switch``), then delete the versions no reader is sent to any more."""
    store, rel = warehouse_store(warehouse), table.replace(".", "/")
    version = new_version()
    df.write.mode("error").parquet(f"{table_dir(warehouse, table)}/{version}")
    store.switch(rel, version)
    store.drop_old_versions(rel, keep=version)


def view_name(table: str) -> str:
    """The session's view of ``<schema>.<table>`` (temporary views have one-part names)."""
    return table.replace(".", "__")


def qualify(sql: str) -> str:
    """Spark SQL with its ``<schema>.<table>`` names turned into the session's views."""
    import sqlglot
    from sqlglot import exp

    def rename(node):
        if isinstance(node, exp.Table) and node.args.get("db") is not None and node.db in SCHEMAS:
            return exp.Table(this=exp.to_identifier(view_name(f"{node.db}.{node.name}")), alias=node.args.get("alias"))
        return node

    return sqlglot.parse_one(sql, read="spark").transform(rename).sql(dialect="spark")


def named_tables(sql: str) -> set[str]:
    """The ``<schema>.<table>`` names a Spark SQL text reads."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="spark")
    return {f"{t.db}.{t.name}" for t in tree.find_all(exp.Table) if t.args.get("db") is not None and t.db in SCHEMAS}


def register_tables(spark: SparkSession, warehouse: str, only: set[str] | None = None) -> list[str]:
    """Every table under the warehouse (or those of ``only`` that exist) as a view of the session
    over its current folder (``<schema>__<table>``; ``qualify`` maps the dotted names to them):
    each registration lists the table's folder and reads its parquet schema. Returns the tables."""
    store = warehouse_store(warehouse)
    names = []
    for schema in SCHEMAS:
        for table in store.folders(schema):
            name = f"{schema}.{table}"
            if only is not None and name not in only:
                continue
            where = current_dir(warehouse, name)
            if where is not None:
                spark.read.parquet(where).createOrReplaceTempView(view_name(name))
                names.append(name)
    return names


class SparkCursor:
    """DuckDB's ``execute(sql, params).fetchall()`` and ``sql(sql).pl()`` over Spark: the SQL
    (DuckDB's dialect) is transpiled, so a query written once for the warehouse (a quality
    rule, the model's training rows) runs on both. Nothing reaches the driver before
    ``fetchall`` or ``pl``."""

    def __init__(self, spark: SparkSession, warehouse: str):
        self.spark = spark
        self.warehouse = warehouse
        self._df: DataFrame | None = None

    def execute(self, sql: str, params=None) -> SparkCursor:
        named = params if isinstance(params, dict) else None
        positional = params if isinstance(params, (list, tuple)) else ()
        spark_sql = duckdb_to_spark(sql, named, positional)
        register_tables(self.spark, self.warehouse, named_tables(spark_sql))
        self._df = self.spark.sql(qualify(spark_sql))  # planned now, run by fetchall or pl
        return self

    def sql(self, sql: str) -> SparkCursor:
        return self.execute(sql)

    def fetchall(self) -> list[tuple]:
        return [tuple(r) for r in self._df.collect()]

    def pl(self):
        """The result as a Polars frame, collected to the driver as Arrow batches."""
        import polars as pl

        return pl.from_arrow(self._df.toArrow())

    def register(self, name: str, columns: str, rows: list[tuple]) -> None:
        """Rows from elsewhere (``columns``: a Spark DDL schema) as a view ``name`` of this cursor's queries."""
        self.spark.createDataFrame(rows, columns).createOrReplaceTempView(name)

    @property
    def description(self) -> list[tuple[str]]:
        """The columns of the last query, first item of each entry its name (as DuckDB's)."""
        return [(name,) for name in self._df.columns]


def stop_sessions() -> None:
    """Stop this process's Spark sessions (the next use starts a new application)."""
    for session in _SESSIONS.values():
        session.stop()
    _SESSIONS.clear()
