"""Scoring every customer again (the daily refresh): a batch at a time against all at once,
peak memory and time side by side.

Usage:  python benchmarks/bench_scoring.py --workdir DIR [--reps 2] [--batch 500000]

On the warehouse and MLflow store that ``bench_summary.py --workdir DIR`` keeps (gold, the
champion and its predictions), each rep runs both ways, alternately, each in a fresh process
(its peak resident set is its own): every silver and gold table is read first, so DuckDB's buffer
pool is as full as it is when scoring follows gold in a cycle, and every stored features hash is
moved, as when a new as-of date moves every customer's day counts, so ``update_predictions`` with the champion
scores every customer again, deletes the old rows and inserts the new ones in one transaction.
- **batched**: ``batch_rows=--batch`` (the project's ``SCORE_BATCH_ROWS``);
- **all at once**: every customer in one batch (close to the code before batching, which also
  sorted by user_id and read gold whole with ``.pl()``).
Asserted: both write the same predictions (every column but the scoring time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

from benchmarks.common import peak_gb  # noqa: E402
from churn_assets.defs.ml.scoring import SCORE_BATCH_ROWS  # noqa: E402

AS_OF = "2026-11-01T06:00:00"
DIGEST = """SELECT count(*), sum(hash(user_id, churn_probability, churn_prediction, model_version, _features_hash))
            FROM gold.churn_prediction"""


def child(work: Path, batch_rows: int) -> None:
    from benchmarks.bench_model import registry_store
    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.scoring import update_predictions
    from churn_assets.settings import Settings
    from churn_assets.warehouse import connect

    home = work / "project"
    store = registry_store(home)
    with registry.configured(store, 10, 1):
        champion = registry.version_by_alias(store.client(), "churn_model", registry.CHAMPION)
        model = registry.load_model("churn_model", str(champion.version))
    threshold = float(champion.tags["threshold"])
    con = connect(home / "warehouse.duckdb", memory_limit=Settings.load().duckdb_memory)
    # The daily refresh: every customer's features moved since the champion scored them.
    con.execute("UPDATE gold.churn_prediction SET _features_hash = _features_hash + 1")
    con.execute("CHECKPOINT")
    # In a cycle, scoring follows gold, which has just read every order and event: DuckDB's buffer
    # pool is full (up to its memory limit) when scoring starts. Read every table so it is here too.
    for schema, table in con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name IN ('silver', 'gold')"
    ).fetchall():
        con.execute(f"SELECT max(hash(COLUMNS(*))) FROM {schema}.{table}").fetchall()
    cached = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0] / 1024**3
    before = peak_gb()
    t0 = time.perf_counter()
    scored = update_predictions(con, model, threshold, "churn_model", str(champion.version), batch_rows)
    took = time.perf_counter() - t0
    digest = con.execute(DIGEST).fetchall()[0]
    con.close()
    out = {
        "seconds": took,
        "peak_gb": peak_gb(),
        "peak_before_gb": before,
        "duckdb_gb": cached,
        "rows": scored.rows,
        "mode": scored.mode,
        "digest": [int(d) for d in digest],
    }
    (work / "scoring.json").write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=SCORE_BATCH_ROWS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.child is not None:
        return child(work, args.child)
    ways = {"batched": args.batch, "all at once": 1 << 62}
    results: dict[str, list[dict]] = {w: [] for w in ways}
    for rep in range(args.reps):
        for way, rows in ways.items():
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--child", str(rows)], check=True)
            r = json.loads((work / "scoring.json").read_text())
            assert r["mode"] == "incremental", r  # the same model: the daily refresh's path
            results[way].append(r)
            print(
                f"rep {rep + 1}, {way}: {r['rows']:,} customers scored in {r['seconds']:.1f}s, "
                f"peak RSS {r['peak_gb']:.2f} GB (before scoring {r['peak_before_gb']:.2f} GB, "
                f"of which DuckDB's buffers {r['duckdb_gb']:.2f} GB)",
                flush=True,
            )
    digests = {tuple(r["digest"]) for rs in results.values() for r in rs}
    assert len(digests) == 1, f"the ways wrote different predictions: {digests}"
    print(f"\nsame predictions both ways ({next(iter(digests))[0]:,} rows)")
    print("| scoring every customer again | time | peak RSS |\n| --- | --- | --- |")
    for way, rs in results.items():
        label = f"{way} ({args.batch:,} customers a batch)" if way == "batched" else way
        print(
            f"| {label} | {statistics.median(r['seconds'] for r in rs):.1f} s | "
            f"{statistics.median(r['peak_gb'] for r in rs):.2f} GB |"
        )


if __name__ == "__main__":
    main()
