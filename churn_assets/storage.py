"""The Spark warehouse's storage as this project touches it itself: a versioned table's pointer,
the folders of a schema, the cleanup of old versions. Spark reads and writes the tables through
its own (Hadoop) connectors; everything else goes through this one layer over ``pyarrow.fs``, so
a local or shared path, a ``file://`` URI and an object store (``s3://``, ``s3a://``, ``gs://``,
``abfs[s]://``) are handled by the same code.

The URI stays the user's (Spark gets it as given: ``s3a://`` is Hadoop's S3 connector); pyarrow
gets the same location under its own scheme name. Credentials come from the environment of the
process that runs this (the Dagster run worker; with Spark Connect, the client), as pyarrow's
file systems read them: the AWS SDK's (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` ...), Google's default credentials (``GOOGLE_APPLICATION_CREDENTIALS``), Azure's
default credential (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``, ``AZURE_CLIENT_SECRET``), or an
instance's own identity. Never in the URI.

Layout of a table folder: ``v-<id>/`` versions and a ``_CURRENT`` pointer naming the one readers
take (silver, gold, dashboards), or ``batch=<id>/`` folders that together are the table (bronze
and the append-only ops tables).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

POINTER = "_CURRENT"
VERSION_PREFIX = "v-"
BATCH_PREFIX = "batch="
VERSION_NAME = re.compile(r"v-[0-9a-f]{12}")
# Hadoop's scheme names -> pyarrow's (the same store, another client's name for it).
PYARROW_SCHEMES = {
    "file": "file",
    "s3": "s3",
    "s3a": "s3",
    "s3n": "s3",
    "gs": "gs",
    "gcs": "gs",
    "abfs": "abfs",
    "abfss": "abfss",
}
# Where one PUT makes a whole object visible at once and there is no atomic rename.
OBJECT_STORES = {"s3", "gs", "abfs", "abfss"}


class StorageError(RuntimeError):
    """The warehouse location cannot be used from this process; the message is one line."""


def scheme_of(uri: str) -> str | None:
    """The URI's scheme in lower case, or None for a plain path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.replace("+", "").replace("-", "").isalnum() else None


def new_version() -> str:
    return f"{VERSION_PREFIX}{uuid.uuid4().hex[:12]}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@lru_cache(maxsize=32)
def warehouse_store(uri: str) -> WarehouseStore:
    """The store of a warehouse URI, made once per process: an object store's client resolves
    the bucket's region and reads its credentials when it is made, not on every call."""
    scheme = scheme_of(uri)
    if scheme is None:
        from pyarrow.fs import LocalFileSystem

        return WarehouseStore(uri, LocalFileSystem(), os.path.abspath(uri), atomic_rename=True)
    if scheme not in PYARROW_SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in PYARROW_SCHEMES))
        raise StorageError(f"{uri}: unsupported scheme {scheme}:// (take a path, or one of {known})")
    from pyarrow.fs import FileSystem

    target = PYARROW_SCHEMES[scheme] + uri[len(scheme) :]
    try:
        fs, root = FileSystem.from_uri(target)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError with multi-line texts
        raise StorageError(f"{uri}: {_one_line(exc)}") from None
    return WarehouseStore(uri, fs, root.rstrip("/"), atomic_rename=PYARROW_SCHEMES[scheme] not in OBJECT_STORES)


@dataclass(frozen=True)
class WarehouseStore:
    """One warehouse's folders. ``rel`` arguments are paths below the warehouse (``gold/churn_features``)."""

    uri: str
    fs: object  # a pyarrow.fs.FileSystem
    root: str
    atomic_rename: bool

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _get(self, rel: str):
        try:
            return self.fs.get_file_info(self.path(rel))
        except Exception as exc:  # noqa: BLE001 - one line: the store's own words
            raise StorageError(f"{self.uri}: {_one_line(exc)}") from None

    def exists(self, rel: str = "") -> bool:
        from pyarrow.fs import FileType

        return self._get(rel).type != FileType.NotFound

    def folders(self, rel: str = "") -> list[str]:
        """The names of the folders directly below ``rel`` (sorted; none when it does not exist),
        without hidden ones (``.x``, ``_x``: Spark's and this layer's own)."""
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = self.fs.get_file_info(FileSelector(self.path(rel), allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{self.uri}: {_one_line(exc)}") from None
        names = {i.base_name for i in infos if i.type == FileType.Directory}
        return sorted(n for n in names if not n.startswith((".", "_")))

    def pointer(self, table: str) -> str | None:
        """The version folder ``table``'s pointer names, or None before its first switch. A read
        that fails or returns no whole version name (an object store's client reads an object's
        size, then its bytes: a switch in between) is tried again."""
        problem = ""
        for attempt in range(4):
            try:
                with self.fs.open_input_stream(self.path(f"{table}/{POINTER}")) as f:
                    text = f.read().decode(errors="replace").strip()
            except FileNotFoundError:
                return None
            except OSError as exc:
                problem = _one_line(exc)
            else:
                if VERSION_NAME.fullmatch(text):
                    return text
                problem = f"its pointer holds {text[:40]!r}, not a version name"
            time.sleep(0.05 * (attempt + 1))
        raise StorageError(f"{self.uri}: {table}: {problem}")

    def has_batches(self, table: str) -> bool:
        """Whether ``table`` is an append-only table with at least one batch folder."""
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = self.fs.get_file_info(FileSelector(self.path(table), allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{self.uri}: {_one_line(exc)}") from None
        return any(i.type == FileType.Directory and i.base_name.startswith(BATCH_PREFIX) for i in infos)

    def switch(self, table: str, version: str) -> None:
        """Point ``table`` at ``version``: a reader sees the old or the new pointer, never half."""
        target = self.path(f"{table}/{POINTER}")
        try:
            if self.atomic_rename:
                # A file system: write the pointer aside, then rename it over the old one (atomic).
                self.fs.create_dir(self.path(table), recursive=True)
                aside = self.path(f"{table}/.{POINTER}.{uuid.uuid4().hex[:8]}")
                with self.fs.open_output_stream(aside) as f:
                    f.write(version.encode())
                self.fs.move(aside, target)
            else:
                # An object store has no atomic rename (a "move" is copy + delete), but a PUT of one
                # object is atomic: readers get the whole old object or the whole new one. The
                # pointer is a few bytes, so writing it in place is the switch.
                with self.fs.open_output_stream(target) as f:
                    f.write(version.encode())
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{self.uri}: switching {table} to {version}: {_one_line(exc)}") from None

    def versions(self, table: str) -> list[str]:
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = self.fs.get_file_info(FileSelector(self.path(table), allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{self.uri}: {_one_line(exc)}") from None
        return sorted(
            i.base_name for i in infos if i.type == FileType.Directory and i.base_name.startswith(VERSION_PREFIX)
        )

    def drop_old_versions(self, table: str, keep: str) -> list[str]:
        """Delete ``table``'s versions other than ``keep`` and the one its pointer names now (read
        again here: another writer may have switched since), so the current one is never removed.
        Returns what it deleted; a version another process deletes first is no error."""
        current = self.pointer(table)
        dropped = []
        for version in self.versions(table):
            if version in (keep, current):
                continue
            try:
                self.fs.delete_dir(self.path(f"{table}/{version}"))
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001
                raise StorageError(f"{self.uri}: deleting {table}/{version}: {_one_line(exc)}") from None
            dropped.append(version)
        return dropped

    def problem(self) -> str | None:
        """Why this process cannot use the warehouse (one line), or None: one request to the store
        (an object store's missing credentials or bucket show here, before any step runs)."""
        if scheme_of(self.uri) in (None, "file"):
            return None  # a local path is made by the first write
        from pyarrow.fs import FileType

        bucket = self.root.split("/", 1)[0]
        try:
            found = self.fs.get_file_info(bucket).type
        except Exception as exc:  # noqa: BLE001
            return (
                f"CHURN_SPARK_WAREHOUSE={self.uri}: this process cannot reach it ({_one_line(exc)}); give it the "
                "store's credentials through the environment"
            )
        if found == FileType.NotFound:
            return f"CHURN_SPARK_WAREHOUSE={self.uri}: bucket or container {bucket!r} does not exist"
        return None


def storage_problem(uri: str) -> str | None:
    """Why the warehouse at ``uri`` cannot be used from this process (one line), or None."""
    try:
        return warehouse_store(uri).problem()
    except StorageError as exc:
        return f"CHURN_SPARK_WAREHOUSE={exc}"
