"""A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql binaries, run as the
postgres user): the production instance's storage for tests and benchmarks."""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from churn_assets_tests.live import free_port

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def available() -> bool:
    return bool(BIN) and shutil.which("runuser") is not None


def dagster_env(port: int) -> dict[str, str]:
    """What dagster.postgres.yaml reads, for a server from ``postgres_server``."""
    return {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "unused-with-trust",
    }


@contextmanager
def postgres_server() -> Iterator[int]:
    """A fresh server with an empty ``dagster`` database (trust auth); yields its port."""
    # Outside pytest's root-only tmp tree: the server runs as the postgres user.
    data = Path(tempfile.mkdtemp(prefix="churn-pg-"))
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, f"{BIN[-1]}/initdb", "-D", str(data), "-A", "trust", "-U", "dagster"], check=True, capture_output=True
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_pg, f"{BIN[-1]}/pg_ctl", "-D", str(data), "-w", "-l", str(data / "log"), "-o", options, "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*as_pg, f"{BIN[-1]}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"], check=True
        )
        yield port
    finally:
        subprocess.run([*as_pg, f"{BIN[-1]}/pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
