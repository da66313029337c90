"""The Spark warehouse's storage layer (``churn_assets/storage.py``): one contract (versions, the
pointer switch, listing schemas and tables, cleanup, append-only batch folders) on a local path,
a ``file://`` URI and an object store: a real S3-protocol server (moto's, in its own process on
127.0.0.1) reached by pyarrow's S3 client through the environment, as ``s3://`` and Hadoop's
``s3a://``. Spark's own writes to S3 are not tested here: its ``hadoop-aws`` connector jars come
from Maven, which this machine cannot reach; test_spark_engine.py runs the cycle on a ``file://``
warehouse URI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from churn_assets.engine import current_dir, run_problem
from churn_assets.settings import environment_scope
from churn_assets.storage import POINTER, StorageError, new_version, storage_problem, warehouse_store

SECRET = "not-a-real-secret-0123456789"
# Version names as replace_table makes them (v- and 12 hex digits), in sorted order.
VAAA, VBBB, VSTALE, VOLD, VNEW = (f"v-{c * 12}" for c in "ab123")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server as a subprocess on 127.0.0.1 (``auth``: it checks request signatures
    against its own IAM users, so a client without valid credentials is refused)."""

    def __init__(self, log: Path, auth: bool = False):
        self.port = _free_port()
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _client_env(url: str, key: str | None = "testing", secret: str | None = SECRET) -> dict[str, str | None]:
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
        # No instance-metadata lookups and no profile files: the environment is all there is.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        with environment_scope(**_client_env(server.url)):
            from pyarrow.fs import S3FileSystem

            # The bucket is the store's to make (an operator's step), not the project's.
            S3FileSystem(endpoint_override=server.url, scheme="http", allow_bucket_creation=True).create_dir(
                "churn-warehouse"
            )
            yield server
    finally:
        server.stop()


# The object store's cases start a server (seconds): the slow lane; paths run in the fast one too.
@pytest.fixture(params=["path", "file", pytest.param("s3a", marks=pytest.mark.slow)])
def warehouse(request, tmp_path):
    """A fresh, empty warehouse URI on each kind of storage."""
    if request.param == "path":
        return str(tmp_path / "wh")
    if request.param == "file":
        return f"file://{tmp_path}/wh"
    request.getfixturevalue("s3")
    return f"{request.param}://churn-warehouse/wh-{uuid.uuid4().hex[:8]}"


def _put(warehouse: str, rel: str, data: bytes = b"PAR1") -> None:
    """A file as Spark's writer leaves one (the layer never writes table data itself)."""
    store = warehouse_store(warehouse)
    if store.atomic_rename:
        store.fs.create_dir(store.path(rel.rsplit("/", 1)[0]), recursive=True)
    with store.fs.open_output_stream(store.path(rel)) as f:
        f.write(data)


def test_a_new_table_has_no_current_folder(warehouse):
    store = warehouse_store(warehouse)
    assert current_dir(warehouse, "gold.churn_features") is None
    assert store.pointer("gold/churn_features") is None
    assert store.folders() == [] and store.folders("gold") == []
    assert store.versions("gold/churn_features") == []


def test_the_pointer_switch_and_cleanup_of_old_versions(warehouse):
    store, rel = warehouse_store(warehouse), "gold/churn_features"
    _put(warehouse, f"{rel}/{VAAA}/part-0.parquet")
    store.switch(rel, VAAA)
    # Readers get the user's URI (Spark's scheme, s3a:// stays s3a://), the version it names.
    assert current_dir(warehouse, "gold.churn_features") == f"{warehouse}/gold/churn_features/{VAAA}"
    _put(warehouse, f"{rel}/{VBBB}/part-0.parquet")
    _put(warehouse, f"{rel}/{VBBB}/part-1.parquet")
    store.switch(rel, VBBB)
    assert current_dir(warehouse, "gold.churn_features") == f"{warehouse}/gold/churn_features/{VBBB}"
    assert store.drop_old_versions(rel, keep=VBBB) == [VAAA]
    assert store.versions(rel) == [VBBB]
    from pyarrow.fs import FileSelector

    left = sorted(i.base_name for i in store.fs.get_file_info(FileSelector(store.path(rel), recursive=True)))
    # The pointer and the current version's two files; nothing written aside is left behind.
    assert left == [POINTER, "part-0.parquet", "part-1.parquet", VBBB]


def test_cleanup_never_removes_the_current_version(warehouse):
    """A writer that switched to v-old, then saw another writer switch to v-new before its cleanup,
    keeps both its own and the current version; only versions no pointer names are deleted."""
    store, rel = warehouse_store(warehouse), "silver/churn_users"
    for v in (VSTALE, VOLD, VNEW):
        _put(warehouse, f"{rel}/{v}/part-0.parquet")
    store.switch(rel, VOLD)
    store.switch(rel, VNEW)  # the other writer
    assert store.drop_old_versions(rel, keep=VOLD) == [VSTALE]
    assert store.versions(rel) == [VOLD, VNEW]
    assert current_dir(warehouse, "silver.churn_users") == f"{warehouse}/silver/churn_users/{VNEW}"
    assert store.drop_old_versions(rel, keep=VNEW) == [VOLD]
    assert store.versions(rel) == [VNEW]


def test_listing_schemas_and_tables_skips_hidden_folders(warehouse):
    store = warehouse_store(warehouse)
    for rel in ("gold/churn_features/v-1/p", "gold/churn_prediction/v-2/p", "bronze/churn_events/batch=0/p"):
        _put(warehouse, rel)
    _put(warehouse, "_checkpoints/bronze_events/offsets/0")
    _put(warehouse, "gold/.staging/x")
    _put(warehouse, "gold/_temporary/x")
    assert store.folders() == ["bronze", "gold"]
    assert store.folders("gold") == ["churn_features", "churn_prediction"]
    assert store.folders("silver") == []


def test_append_only_tables_are_their_batch_folders(warehouse):
    store = warehouse_store(warehouse)
    # A folder with no batch yet (e.g. only Spark's _temporary) is no table.
    _put(warehouse, "ops/data_quality/_temporary/0/x")
    assert not store.has_batches("ops/data_quality")
    assert current_dir(warehouse, "ops.data_quality") is None
    _put(warehouse, "ops/data_quality/batch=0a1b/part-0.parquet")
    _put(warehouse, "ops/data_quality/batch=2c3d/part-0.parquet")
    assert store.has_batches("ops/data_quality")
    assert current_dir(warehouse, "ops.data_quality") == f"{warehouse}/ops/data_quality"


def test_readers_never_see_a_partial_pointer(warehouse):
    """While one writer switches a table 40 times, a reader polling the pointer only ever reads
    a whole version name that was written (never nothing, never a piece of one)."""
    store, rel = warehouse_store(warehouse), "dashboard/kpis"
    written = [new_version() for _ in range(40)]
    store.switch(rel, written[0])
    seen: list[str | None] = []
    done = threading.Event()

    def read():
        while not done.is_set():
            seen.append(store.pointer(rel))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in written[1:]:
            store.switch(rel, version)
            # On a loaded machine the reader thread may not run between two switches (in CI it read
            # 567 times, all before the first): a read begun after this switch ends before the next.
            after, deadline = len(seen), time.monotonic() + 5
            while len(seen) < after + 2 and time.monotonic() < deadline:
                time.sleep(0.0005)
    finally:
        done.set()
        reader.join()
    # The reads interleaved with the switches (more than one version seen), and none was torn.
    assert len(seen) > 10 and len(set(seen)) > 1, (len(seen), len(set(seen)))
    assert set(seen) <= set(written), {s for s in seen if s not in written}
    assert store.pointer(rel) == written[-1]


@pytest.mark.slow
def test_s3_and_hadoops_s3a_name_the_same_objects(s3):
    """Spark keeps the user's s3a:// (Hadoop's connector); pyarrow gets the same bucket and key as s3://."""
    name = f"churn-warehouse/wh-{uuid.uuid4().hex[:8]}"
    hadoop, plain = warehouse_store(f"s3a://{name}"), warehouse_store(f"s3://{name}")
    assert hadoop.root == plain.root == name
    assert not hadoop.atomic_rename
    _put(f"s3a://{name}", f"gold/churn_features/{VAAA}/part-0.parquet")
    hadoop.switch("gold/churn_features", VAAA)
    assert plain.pointer("gold/churn_features") == VAAA
    assert current_dir(f"s3://{name}", "gold.churn_features") == f"s3://{name}/gold/churn_features/{VAAA}"
    assert current_dir(f"s3a://{name}", "gold.churn_features") == f"s3a://{name}/gold/churn_features/{VAAA}"


@pytest.mark.slow
def test_unsupported_scheme_and_missing_bucket_are_one_line_errors(s3, tmp_path):
    problem = storage_problem("foo://bucket/wh")
    assert problem.startswith("CHURN_SPARK_WAREHOUSE=foo://bucket/wh: unsupported scheme foo:// (take a path, or ")
    assert "\n" not in problem and "s3a://" in problem
    with pytest.raises(StorageError, match="unsupported scheme hdfs://"):
        warehouse_store("hdfs://nn:8020/wh")
    missing = storage_problem("s3a://no-such-bucket/wh")
    assert (
        missing == "CHURN_SPARK_WAREHOUSE=s3a://no-such-bucket/wh: bucket or container 'no-such-bucket' does not exist"
    )
    assert storage_problem("s3a://churn-warehouse/wh") is None
    assert storage_problem(str(tmp_path / "not-made-yet")) is None
    assert storage_problem(f"file://{tmp_path}/not-made-yet") is None


@pytest.mark.slow
def test_missing_or_wrong_credentials_fail_the_run_with_one_line(tmp_path, monkeypatch):
    """A store that checks signatures: a process without credentials, or with unknown ones, is
    refused before any step, in one line that names the warehouse and never the secret."""
    server = S3Server(tmp_path / "auth-server.log", auth=True)
    try:
        cases = {"none": _client_env(server.url, key=None, secret=None), "wrong": _client_env(server.url)}
        for name, env in cases.items():
            for k, v in env.items():
                if v is None:
                    monkeypatch.delenv(k, raising=False)
                else:
                    monkeypatch.setenv(k, v)
            uri = f"s3a://guarded-{name}/wh"
            problem = storage_problem(uri)
            assert problem is not None and "\n" not in problem, problem
            assert problem.startswith(f"CHURN_SPARK_WAREHOUSE={uri}: this process cannot reach it ("), problem
            assert "credentials through the environment" in problem
            assert SECRET not in problem
    finally:
        server.stop()


@pytest.mark.slow
def test_object_store_warehouses_are_no_longer_refused(s3):
    pytest.importorskip("pyspark", reason="the spark extra is not installed (CHURN_EXTRAS=spark scripts/setup)")
    assert run_problem("spark", "local[*]", "s3a://churn-warehouse/wh") is None
    assert run_problem("spark", "local[*]", "s3://churn-warehouse/wh") is None
    # The DuckDB engine does not look at the Spark warehouse at all.
    assert run_problem("duckdb", "local[*]", "foo://x") is None
