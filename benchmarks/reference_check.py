"""Check the pipeline and the model against a full landing set (e.g. the reference dataset).

Usage:  python benchmarks/reference_check.py PATH/TO/LANDING [--as-of 2023-06-10]

PATH/TO/LANDING holds users/, orders/ and events/ exactly as landed (the reference
dataset: 68,879 customers in 100 files, 178,061 orders in 10, 178,061 events in 20).
It runs the whole cycle in a temporary CHURN_HOME on those files (linked, not copied),
then prints the layer counts, whether every customer's aggregates equal a plain SQL
computation of the contract straight from the files, and the champion's holdout ROC AUC.
The suite runs it on ../shared's sample; the reference figures to expect are
silver.churn_orders 171,068, gold.churn_features 68,490, AUC about 0.79.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import dagster as dg
import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from churn_assets_tests.helpers import load_defs  # noqa: E402
from churn_assets_tests.reference_oracle import compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("landing", type=Path)
    ap.add_argument("--as-of", default="2023-06-10")
    ap.add_argument("--skip-model", action="store_true", help="data layers only")
    args = ap.parse_args(argv)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    home = Path(tempfile.mkdtemp(prefix="churn-reference-"))
    try:
        for source in ("users", "orders", "events"):
            shutil.copytree(args.landing / source, home / "landing" / source, copy_function=os.link)
        selection = "*gold/churn_features" if args.skip_model else "*"
        defs = load_defs(home, args.as_of)
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            instance=dg.DagsterInstance.ephemeral(),
            resources=defs.resources,
            raise_on_error=False,
        )
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        for table in (
            "bronze.churn_users_bronze",
            "bronze.churn_orders_bronze",
            "bronze.churn_app_events",
            "bronze.quarantine",
            "silver.churn_users",
            "silver.churn_orders",
            "gold.churn_features",
        ):
            print(f"{table:<28} {con.execute(f'SELECT count(*) FROM {table}').fetchall()[0][0]:>9,}")
        con.close()
        expected, got, mismatches = compare(args.landing, home / "warehouse.duckdb", args.as_of[:10])
        print(
            f"plain SQL of the contract: {expected:,} customers; pipeline: {got:,}; "
            f"mismatching customers: {len(mismatches)}"
        )
        for row in mismatches[:5]:
            print("  pipeline", row[0], "\n  expected", row[1])
        if not args.skip_model:
            meta = {
                e.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()
            }
            auc = meta.get("ml/churn_model", {}).get("holdout_roc_auc")
            print(f"champion holdout ROC AUC: {auc.value:.4f}" if auc else "no model trained")
        ok = result.success and not mismatches and expected == got
        print("OK" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
