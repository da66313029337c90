"""Bronze alone, in CPU seconds: the project's ingestion against the plain seed SQL's bronze.

Usage:  python benchmarks/bench_bronze_cpu.py --workdir /tmp/bz1 [--reps 3]

On a loaded machine wall seconds swing by half from one rep to the next; the process's CPU
time (all its threads) swings far less, so two versions of the code can be compared by
running this script from each checkout, one after the other, on the data a
``bench_pipeline.py --workdir`` run generated. Per rep, into fresh DuckDB files: each
source through ``ingest_source`` (manifest, SHA-256, rescued data, quarantine) plus the
asset's ``table_metadata``, then the plain ``read_csv`` / ``read_json`` with the contract's
types. Prints the least CPU of the reps for each.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from churn_assets import warehouse  # noqa: E402
from churn_assets.defs.bronze.ingest import ingest_source  # noqa: E402
from churn_assets.landing import SPECS  # noqa: E402
from churn_assets.metadata import table_metadata  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plain_bronze(landing: Path, db: Path) -> None:
    """The plain seed SQL's bronze (as in bench_pipeline.plain_seed_sql), types from the contract."""
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA bronze")
    for spec in SPECS.values():
        columns = "{" + ", ".join(f"'{c}': '{t}'" for c, t in spec.columns) + "}"
        reader = "read_csv" if spec.fmt == "csv" else "read_json"
        header = ", header=true" if spec.fmt == "csv" else ""
        con.execute(
            f"CREATE TABLE bronze.{spec.table} AS SELECT * FROM "
            f"{reader}('{landing}/{spec.name}/*{spec.extension}'{header}, columns={columns})"
        )
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="a bench_pipeline.py --workdir (its src/landing is read)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    landing = Path(args.workdir) / "src" / "landing"
    best: dict[str, float] = {}
    for _ in range(args.reps):
        tmp = Path(tempfile.mkdtemp(prefix="bronze-cpu-"))
        con = warehouse.connect(tmp / "warehouse.duckdb")
        warehouse.ensure_schema(con)
        start = cpu()
        for name, spec in SPECS.items():
            t0 = cpu()
            ingest_source(con, landing, name, "bench", settle_seconds=0, batch_bytes=256 << 20)
            table_metadata(con, f"bronze.{spec.table}")
            best[name] = min(best.get(name, float("inf")), cpu() - t0)
        best["project"] = min(best.get("project", float("inf")), cpu() - start)
        con.close()
        start = cpu()
        plain_bronze(landing, tmp / "plain.duckdb")
        best["plain"] = min(best.get("plain", float("inf")), cpu() - start)
        shutil.rmtree(tmp)
    per_source = ", ".join(f"{name} {best[name]:.2f}" for name in SPECS)
    print(
        f"bronze CPU s (least of {args.reps}): project {best['project']:.2f} [{per_source}] | "
        f"plain seed SQL {best['plain']:.2f} | ratio {best['project'] / best['plain']:.2f}x  ({__file__})"
    )


if __name__ == "__main__":
    main()
