"""Bronze on Spark: landing files -> ``bronze.<table>`` parquet, each file exactly once.

Why Structured Streaming's file source over the ``binaryFile`` format, with a checkpoint and
``trigger(availableNow=True)``: the checkpoint's offset log records which files a micro-batch
takes *before* it runs, so a run killed at any point replays the same batch with the same
files, and a finished batch is never taken again (the open-source core of the reference's
Auto Loader). Reading whole files (not lines) lets a batch see a file as a unit: its content
hash (a copy landed again under another name is a duplicate, not new rows), whether it can be
read at all (quarantined whole, as on DuckDB), and the line numbers that order latest-wins.

The batch is written by ``foreachBatch`` into ``batch=<id>`` folders overwritten whole, so a
replayed batch replaces its own output instead of adding to it: at-least-once delivery made
exactly-once by idempotent writes. A task lost with its worker is rerun by Spark elsewhere;
only committed task output becomes part of the folder.

A micro-batch takes up to ``CHURN_BATCH_BYTES`` of files (``maxBytesPerTrigger``; at least one
file), as a DuckDB transaction does: the batch's texts are held by the executors while it is
written, so a backlog (a first run at 100x: 2.7 GB a source) goes through in bounded pieces.
Between batches the order is the file source's (modification time); within one, the name.

Not on Spark (DuckDB only, said in the README): a file appended to or rewritten after it was
read (the file source takes a path once), and the settle wait (writers rename complete files
into place, which the contract asks anyway: names starting with ``.`` or ``_`` are skipped).
"""

from __future__ import annotations

import gzip
import time
import zlib
from dataclasses import dataclass

from churn_assets.defs.bronze.parse import BOM, GZIP_MAGIC, MAGIC, csv_header
from churn_assets.landing import SPECS, TIMESTAMP_REGEX, data_kind

# A file's _file_id: the micro-batch times this, plus its rank by name in the batch (arrival order).
FILE_ID_STRIDE = 1_000_000
SPARK_TYPES = {"VARCHAR": "string", "DOUBLE": "double", "BOOLEAN": "boolean"}


@dataclass
class SparkBronzeResult:
    files_loaded: int = 0
    files_duplicate: int = 0
    files_quarantined: int = 0
    rows_loaded: int = 0
    rows_rescued: int = 0
    rows_quarantined: int = 0
    batches: int = 0


def decode(name: str, content: bytes, source: str) -> tuple[str | None, str | None]:
    """(the file's text, None) or (None, why it cannot be read): the DuckDB reader's rules for a
    whole file (compression, binary content, encoding, a JSON array). Runs on the workers."""
    spec = SPECS[source]
    fmt = spec.fmt
    kind = data_kind(name, fmt)
    if kind == "unsupported":
        return None, "compressed in a format the reader does not take"
    if content[:2] == GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (EOFError, OSError, zlib.error) as exc:
            return None, f"not a readable gzip file ({exc})"
    else:
        for magic, what in MAGIC.items():
            if content.startswith(magic):
                return None, f"compressed as {what}, which the reader does not take"
        if kind == "gzip":
            return None, "named .gz but not gzip-compressed"
    if content.startswith(BOM):
        content = content[len(BOM) :]
    nul = content.find(b"\x00")
    if nul >= 0:
        return None, f"binary content (NUL byte at offset {nul})"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"file is not valid UTF-8 (byte 0x{content[exc.start]:02x} at offset {exc.start})"
    if fmt == "json" and text[:4096].lstrip()[:1] == "[":
        return None, "a JSON array, not newline-delimited JSON (one object a line)"
    if fmt == "csv":
        header = text.split("\n", 1)[0].strip("\r\n")
        names, problem = csv_header(spec, header)
        if problem:
            return None, problem
        if names != spec.column_names:
            return None, "CSV columns differ from the contract's order (the Spark engine reads them by position)"
    return text, None


def schema_ddl(source: str) -> str:
    spec = SPECS[source]
    return ", ".join(f"`{c}` {SPARK_TYPES[t]}" for c, t in spec.columns)


def paths(warehouse: str, source: str) -> dict[str, str]:
    table = SPECS[source].table
    base = warehouse.rstrip("/")
    return {
        "table": f"{base}/bronze/{table}",
        "manifest": f"{base}/bronze/ingest_manifest_{source}",
        "quarantine": f"{base}/bronze/quarantine_{source}",
        "checkpoint": f"{base}/_checkpoints/bronze_{source}",
    }


MANIFEST = "bronze.ingest_manifest"
_MANIFEST_COLUMNS = (
    "_file_id AS file_id, source, path, length AS size_bytes, modificationTime AS mtime, content_hash, records, "
    "rows_loaded, rows_rescued, rows_quarantined, status, detail, run_id, ingested_at, event"
)


def manifest_view(engine) -> dict[str, str]:
    """``bronze.ingest_manifest`` as the DuckDB engine keeps it (one table, a ``source`` column)
    over this engine's manifests (one per source, each its stream's own), for ``engine.sql(views=...)``;
    empty before the first file."""
    parts = [
        f"SELECT {_MANIFEST_COLUMNS} FROM bronze.ingest_manifest_{source}"
        for source in SPECS
        if engine.has_table(f"bronze.ingest_manifest_{source}")
    ]
    return {MANIFEST: " UNION ALL ".join(parts)} if parts else {}


def ingest_source_spark(
    spark, warehouse: str, landing_root: str, source: str, run_id: str, batch_bytes: int
) -> SparkBronzeResult:
    """Take every landed file of ``source`` the checkpoint has not seen, once, ``batch_bytes`` at a time."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spec = SPECS[source]
    where = paths(warehouse, source)
    fmt = spec.fmt

    def known_hashes(spark, batch_id: int):
        try:
            seen = spark.read.parquet(where["manifest"])
            seen.schema  # noqa: B018 - a missing folder fails here (Spark Connect analyses a plan lazily)
        except Exception:  # noqa: BLE001 - no manifest yet (first batch): nothing is known
            return None
        return seen.where(F.col("batch") < batch_id).select("content_hash").distinct()

    def write_batch(batch_df, batch_id: int) -> None:
        # Everything this function uses is made here or pickled with it: on Spark Connect it runs
        # in a Python process beside the server (the batch's own session, its own UDFs), not here.
        spark = batch_df.sparkSession

        decoded = T.StructType([T.StructField("text", T.StringType()), T.StructField("problem", T.StringType())])

        @F.udf(returnType=decoded)
        def decode_udf(path, content):
            name = path.rsplit("/", 1)[-1]
            return decode(name, bytes(content), source)

        files = batch_df.select(
            "path", "length", "modificationTime", F.sha2("content", 256).alias("content_hash"), "content"
        ).where(F.udf(lambda p: data_kind(p.rsplit("/", 1)[-1], fmt) is not None, T.BooleanType())("path"))
        files = files.withColumn("d", decode_udf("path", "content")).drop("content").persist()
        # Arrival order within the batch is the name order, as the DuckDB reader's. Numbered on
        # one small row per file, then joined back: a window over the files themselves moves
        # every file's text into one task (at 100x, 2.7 GB of a source: out of memory).
        ids = (
            files.select("path", "content_hash")
            .withColumn("_file_id", F.lit(batch_id * FILE_ID_STRIDE) + F.row_number().over(_by("path")).cast("bigint"))
            .withColumn("dup_in_batch", F.row_number().over(_by("path", partition="content_hash")) > 1)
        )
        ranked = files.join(F.broadcast(ids), ["path", "content_hash"])
        known = known_hashes(spark, batch_id)
        if known is not None:  # hashes only (64 bytes a file): broadcast, the texts stay put
            ranked = ranked.join(F.broadcast(known.withColumn("dup_known", F.lit(True))), "content_hash", "left")
        else:
            ranked = ranked.withColumn("dup_known", F.lit(None).cast("boolean"))
        ranked = ranked.withColumn(
            "status",
            F.when(F.col("dup_in_batch") | F.coalesce("dup_known", F.lit(False)), "duplicate")
            .when(F.col("d.problem").isNotNull(), "quarantined")
            .otherwise("loaded"),
        ).persist()
        good = ranked.where(F.col("status") == "loaded")
        lines = good.select(
            "_file_id",
            F.col("path").alias("_source_file"),
            F.posexplode(F.split("d.text", "\n")).alias("pos", "line"),
        ).withColumn("line", F.regexp_replace("line", "\r$", ""))
        lines = lines.where(F.trim("line") != "")
        if fmt == "json":
            rows, bad = _json_rows(F, spec, lines)
        else:
            rows, bad = _csv_rows(F, spec, lines)
        rows = rows.withColumn("_ingested_at", F.localtimestamp())
        rows.write.mode("overwrite").parquet(f"{where['table']}/batch={batch_id}")
        whole = ranked.where(F.col("status") == "quarantined").select(
            "_file_id",
            F.col("path").alias("source_file"),
            F.lit(1).cast("bigint").alias("row_no"),
            F.lit(None).cast("string").alias("raw"),
            F.col("d.problem").alias("reason"),
        )
        quarantine = bad.unionByName(whole).withColumn("run_id", F.lit(run_id))
        quarantine.write.mode("overwrite").parquet(f"{where['quarantine']}/batch={batch_id}")
        # Per file, what became of its records (the DuckDB manifest's counts), from the batch as written.
        loaded = (
            spark.read.parquet(f"{where['table']}/batch={batch_id}")
            .groupBy("_file_id")
            .agg(F.count("*").alias("rows_loaded"), F.count("_rescued_data").alias("rows_rescued"))
        )
        quarantined = (
            spark.read.parquet(f"{where['quarantine']}/batch={batch_id}")
            .groupBy("_file_id")
            .agg(F.count("*").alias("rows_quarantined"))
        )
        counted = (
            ranked.join(loaded, "_file_id", "left")
            .join(quarantined, "_file_id", "left")
            .fillna(0, ["rows_loaded", "rows_rescued", "rows_quarantined"])
        )
        counted.select(
            "_file_id",
            "path",
            "length",
            "modificationTime",
            "content_hash",
            "status",
            F.col("d.problem").alias("detail"),
            F.lit(run_id).alias("run_id"),
            F.lit(source).alias("source"),
            F.when(F.col("status") == "duplicate", 0)
            .otherwise(F.col("rows_loaded") + F.col("rows_quarantined"))
            .alias("records"),
            "rows_loaded",
            "rows_rescued",
            "rows_quarantined",
            F.localtimestamp().alias("ingested_at"),
            F.lit("new").alias("event"),  # a path is taken once: never appended to or rewritten here
        ).write.mode("overwrite").parquet(f"{where['manifest']}/batch={batch_id}")
        ranked.unpersist()
        files.unpersist()

    writer = (
        spark.readStream.format("binaryFile")
        .schema(_binary_file_schema(T))
        .option("maxBytesPerTrigger", str(batch_bytes))
        # Sub-folders as ``landing.discover`` takes them (date partitions: dt=2026-11-24/), read as
        # files only: no partition columns inferred. Hidden and underscore names stay unread.
        .option("recursiveFileLookup", "true")
        .load(f"{landing_root.rstrip('/')}/{source}")
        .writeStream.foreachBatch(write_batch)
        .option("checkpointLocation", where["checkpoint"])
        .trigger(availableNow=True)
    )
    _start(writer).awaitTermination()
    return run_totals(spark, where["manifest"], run_id)


# On Spark Connect the server starts a Python process for foreachBatch, which must connect back
# within Spark's fixed 10 s: a loaded server misses that now and then. The stream has not started
# then (no batch ran, the checkpoint is untouched), so starting it again is safe.
START_ATTEMPTS = 5
WORKER_LATE = "Python worker failed to connect back"


def _start(writer):
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return writer.start()
        except Exception as exc:
            if WORKER_LATE not in str(exc) or attempt == START_ATTEMPTS:
                raise
            time.sleep(2 * attempt)


def run_totals(spark, manifest: str, run_id: str) -> SparkBronzeResult:
    """What this run's batches took in, read back from the manifest they wrote (a replayed batch
    carries the run that wrote it last): the batch function cannot report to the caller on Spark
    Connect, where it runs beside the server."""
    from pyspark.sql import functions as F

    try:
        mine = spark.read.parquet(manifest)
        mine.schema  # noqa: B018 - a missing folder fails here (Spark Connect analyses a plan lazily)
    except Exception:  # noqa: BLE001 - no manifest yet (no file ever landed): nothing taken
        return SparkBronzeResult()
    files = {status: F.count(F.when(F.col("status") == status, 1)) for status in ("loaded", "duplicate", "quarantined")}
    row = (
        mine.where(F.col("run_id") == run_id)
        .agg(
            *(n.alias(f"files_{status}") for status, n in files.items()),
            *(F.coalesce(F.sum(c), F.lit(0)).alias(c) for c in ("rows_loaded", "rows_rescued", "rows_quarantined")),
            F.countDistinct("batch").alias("batches"),
        )
        .first()
    )
    return SparkBronzeResult(**row.asDict())


def _binary_file_schema(T):
    """The binaryFile source's fixed schema (a file stream must be given one)."""
    return T.StructType(
        [
            T.StructField("path", T.StringType(), False),
            T.StructField("modificationTime", T.TimestampType(), False),
            T.StructField("length", T.LongType(), False),
            T.StructField("content", T.BinaryType(), True),
        ]
    )


def _by(order: str, partition: str | None = None):
    from pyspark.sql import Window

    w = Window.orderBy(order) if partition is None else Window.partitionBy(partition).orderBy(order)
    return w


def _json_rows(F, spec, lines):
    """(bronze rows, quarantine rows) of JSON lines: a line that is no JSON object is
    quarantined; one that is but does not fit the schema is kept with its text in _rescued_data."""
    parsed = lines.withColumn(
        "s",
        F.from_json(
            "line",
            schema_ddl(spec.name) + ", `_corrupt` string",
            {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"},
        ),
    ).withColumn("keys", F.json_object_keys("line"))
    is_object = F.col("keys").isNotNull()
    fits = F.col("s._corrupt").isNull() & (F.size("keys") <= len(spec.columns))
    for c in spec.columns:
        if c[0] in spec.timestamps:
            col = F.col(f"s.`{c[0]}`")
            fits = fits & (col.isNull() | col.rlike(f"^{TIMESTAMP_REGEX}$"))
    extra = F.array_except("keys", F.array(*[F.lit(c) for c in spec.column_names]))
    fits = fits & (F.size(extra) == 0)
    rows = parsed.where(is_object).select(
        *[F.col(f"s.`{c}`").alias(c) for c in spec.column_names],
        F.when(~fits, F.col("line")).alias("_rescued_data"),
        "_source_file",
        "_file_id",
        (F.col("pos") + 1).cast("bigint").alias("_row_no"),
    )
    bad = parsed.where(~is_object).select(
        "_file_id",
        F.col("_source_file").alias("source_file"),
        (F.col("pos") + 1).cast("bigint").alias("row_no"),
        F.col("line").alias("raw"),
        F.when(
            F.from_json("line", "map<string,string>").isNull() & F.get_json_object("line", "$").isNull(),
            "malformed JSON",
        )
        .otherwise("JSON value is not an object")
        .alias("reason"),
    )
    return rows, bad


def _csv_rows(F, spec, lines):
    """(bronze rows, quarantine rows) of CSV lines (the header line, position 0, is not a record):
    a line with the wrong number of fields is quarantined, as on DuckDB."""
    data = lines.where(F.col("pos") > 0)
    ddl = schema_ddl(spec.name) + ", `_corrupt` string"
    parsed = data.withColumn(
        "s", F.from_csv("line", ddl, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt", "nullValue": ""})
    )
    n = len(spec.columns)
    ok = F.col("s._corrupt").isNull()
    rows = parsed.where(ok).select(
        *[F.col(f"s.`{c}`").alias(c) for c in spec.column_names],
        # A CSV line either has the contract's fields or is quarantined: nothing to rescue.
        F.lit(None).cast("string").alias("_rescued_data"),
        "_source_file",
        "_file_id",
        F.col("pos").cast("bigint").alias("_row_no"),
    )
    bad = parsed.where(~ok).select(
        "_file_id",
        F.col("_source_file").alias("source_file"),
        F.col("pos").cast("bigint").alias("row_no"),
        F.col("line").alias("raw"),
        F.lit(f"expected {n} columns").alias("reason"),
    )
    return rows, bad
