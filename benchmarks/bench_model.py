"""Training and scoring through the project against bare LightGBM, side by side.

Usage:  python benchmarks/bench_model.py [--scale 1] [--reps 2]

On generated data at ``--scale`` (1 = the reference's ~100k customers), after building
gold once, it runs interleaved ``--reps`` times:
- baseline training: ``lightgbm.train`` on the same frame with the same parameters;
- project training: the ``ml/churn_model`` step (features from DuckDB, training, holdout
  metrics, MLflow run, registration of the pyfunc model) and the promotion step;
- baseline scoring: ``booster.predict`` on every customer;
- project scoring: the ``gold/churn_prediction`` step (champion resolved and loaded from
  the registry, every customer scored, the table replaced).
It prints seconds, rows per second and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import step_seconds  # noqa: E402
from churn_assets.defs.ml.features import LABEL, load_features, to_model_frame  # noqa: E402
from churn_assets.defs.ml.train import train  # noqa: E402
from churn_assets.generator import generate_history  # noqa: E402
from churn_assets_tests.helpers import load_defs  # noqa: E402

AS_OF = "2026-11-01T06:00:00"


def run(home: Path, selection: str, instance) -> dict[str, float]:
    defs = load_defs(home, AS_OF)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        instance=instance,
        resources=defs.resources,
    )
    assert result.success
    return step_seconds(instance, result.run_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    home = Path(tempfile.mkdtemp(prefix="churn-bench-model-"))
    generate_history(home, customers=int(100_000 * args.scale), seed=42, end=date(2026, 11, 1), progress=False)
    instance = dg.DagsterInstance.ephemeral()
    run(home, "*gold/churn_features", instance)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    df = load_features(con)
    con.close()
    rows = len(df)
    train_df = df.filter(~pl.col("is_holdout"))
    print(f"scale {args.scale:g}: {rows:,} customers in gold.churn_features ({len(train_df):,} to train on)")

    base_train, proj_train, proj_promote, base_score, proj_score = [], [], [], [], []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        model = train(to_model_frame(train_df), train_df[LABEL].to_numpy().astype(int))
        base_train.append(time.perf_counter() - t0)
        steps = run(home, "key:ml/churn_model or key:ml/churn_model_champion", instance)
        proj_train.append(steps["ml__churn_model"])
        proj_promote.append(steps["ml__churn_model_champion"])
        frame = to_model_frame(df)
        t0 = time.perf_counter()
        model.predict_proba(frame)
        base_score.append(time.perf_counter() - t0)
        steps = run(home, "gold/churn_prediction", instance)
        proj_score.append(steps["gold__churn_prediction"])
        print(
            f"rep {rep + 1}: train baseline {base_train[-1]:.2f}s, project {proj_train[-1]:.2f}s (+ promotion "
            f"{proj_promote[-1]:.2f}s) | score baseline {base_score[-1]:.2f}s, project {proj_score[-1]:.2f}s"
        )
    bt, pt, pp = statistics.median(base_train), statistics.median(proj_train), statistics.median(proj_promote)
    bs, ps = statistics.median(base_score), statistics.median(proj_score)
    print(
        f"\nTRAINING   scale {args.scale:g}: lightgbm.train {bt:.2f}s | ml/churn_model (train + track + register) "
        f"{pt:.2f}s (ratio {pt / bt:.2f}x) | promotion (both models from the registry on the holdout) {pp:.2f}s"
    )
    print(
        f"SCORING    scale {args.scale:g}: booster.predict {rows / bs:,.0f} rows/s | gold/churn_prediction (registry "
        f"load + score + write) {rows / ps:,.0f} rows/s (ratio {ps / bs:.2f}x the time)"
    )


if __name__ == "__main__":
    main()
