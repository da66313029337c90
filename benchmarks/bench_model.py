"""Training and scoring through the project against bare LightGBM, side by side.

Usage:  python benchmarks/bench_model.py [--scale 1] [--reps 2] [--max-train-rows N]

On generated data at ``--scale`` (1 = the reference's ~100k customers), after building
gold once, it runs interleaved ``--reps`` times:
- baseline training: the training rows read from gold.churn_features with plain SQL, a
  pandas frame with the categoricals as categories, then ``lightgbm.train`` with the
  project's parameters: nothing of the project's training code (the baseline timing is
  the frame, ``lgb.Dataset`` and ``lgb.train``);
- project training: the ``ml/churn_model`` step (training rows from DuckDB, training,
  holdout threshold and metrics, MLflow run, registration of the model), then the
  promotion step on its own;
- baseline scoring: ``booster.predict`` on every customer;
- project scoring: the ``gold/churn_prediction`` step (champion resolved and loaded from
  the registry, every customer scored, the table replaced).
It prints seconds, rows per second and the ratios, and fails unless the project's model
scores the holdout exactly as the bare booster does (same rows, same parameters).
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
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As `churn` gives the processes it starts (settings.PROCESS_DEFAULTS), for both sides, before LightGBM loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import lightgbm as lgb  # noqa: E402

from benchmarks.common import step_seconds  # noqa: E402
from churn_assets.defs.ml.features import CATEGORICAL, FEATURES, LABEL, load_training, md5_mod  # noqa: E402
from churn_assets.defs.ml.train import DEFAULT_PARAMS, NUM_BOOST_ROUND  # noqa: E402
from churn_assets.generator import generate_history  # noqa: E402
from churn_assets_tests.helpers import load_defs  # noqa: E402

AS_OF = "2026-11-01T06:00:00"


def run(home: Path, selection: str, instance, **env: str) -> dict[str, float]:
    defs = load_defs(home, AS_OF, **env)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        instance=instance,
        resources=defs.resources,
    )
    assert result.success
    return step_seconds(instance, result.run_id)


def bare_frame(con: duckdb.DuckDBPyConnection, user_ids: list[str] | None, holdout: bool) -> pd.DataFrame:
    """Feature rows straight from gold with plain SQL: categoricals as pandas categories."""
    sql = f"SELECT user_id, {', '.join(FEATURES)}, {LABEL} FROM gold.churn_features"
    sql += f" WHERE ({md5_mod('user_id', 100)} < 20) = {holdout} ORDER BY user_id"
    df = con.sql(sql).df()
    if user_ids is not None:  # the project's sample, when it samples: the same rows
        df = df[df["user_id"].isin(set(user_ids))]
    for c in CATEGORICAL:
        df[c] = df[c].astype("category")
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-train-rows", type=int, default=None, help="CHURN_TRAIN_MAX_ROWS for the project")
    ap.add_argument(
        "--auc-caps",
        default="",
        help="comma-separated training row caps: holdout ROC AUC of the project's training on each "
        "stratified sample against all training rows (what sampling costs)",
    )
    args = ap.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    env = {} if args.max_train_rows is None else {"CHURN_TRAIN_MAX_ROWS": str(args.max_train_rows)}
    home = Path(tempfile.mkdtemp(prefix="churn-bench-model-"))
    generate_history(home, customers=int(100_000 * args.scale), seed=42, end=date(2026, 11, 1), progress=False)
    instance = dg.DagsterInstance.ephemeral()
    run(home, "*gold/churn_features", instance, **env)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    cap = load_defs(home, AS_OF, **env).resources["model_policy"].train_max_rows
    data = load_training(con, cap)
    sampled = data.rows_train_available > len(data.frame.filter(~data.frame["is_holdout"]))
    train_ids = data.frame.filter(~data.frame["is_holdout"])["user_id"].to_list() if sampled else None
    con.close()
    print(
        f"scale {args.scale:g}: {data.rows:,} customers in gold.churn_features, "
        f"{data.rows_train_available:,} to train on" + (f", sampled to {len(train_ids):,}" if sampled else "")
    )

    base_train, proj_train, proj_promote, base_score, proj_score = [], [], [], [], []
    for rep in range(args.reps):
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        t0 = time.perf_counter()
        frame = bare_frame(con, train_ids, holdout=False)
        booster = lgb.train(
            DEFAULT_PARAMS,
            lgb.Dataset(frame[FEATURES], label=frame[LABEL].astype(int), categorical_feature=CATEGORICAL),
            num_boost_round=NUM_BOOST_ROUND,
        )
        base_train.append(time.perf_counter() - t0)
        hold = bare_frame(con, None, holdout=True)
        everyone = con.sql(f"SELECT {', '.join(FEATURES)} FROM gold.churn_features").df()
        con.close()
        steps = run(home, "key:ml/churn_model", instance, **env)
        proj_train.append(steps["ml__churn_model"])
        steps = run(home, "key:ml/churn_model_champion", instance, **env)
        proj_promote.append(steps["ml__churn_model_champion"])
        for c in CATEGORICAL:
            everyone[c] = pd.Categorical(everyone[c], categories=frame[c].cat.categories)
        t0 = time.perf_counter()
        booster.predict(everyone)
        base_score.append(time.perf_counter() - t0)
        steps = run(home, "gold/churn_prediction", instance, **env)
        proj_score.append(steps["gold__churn_prediction"])
        parity(home, booster, hold)
        print(
            f"rep {rep + 1}: train bare {base_train[-1]:.2f}s, project {proj_train[-1]:.2f}s (+ promotion "
            f"{proj_promote[-1]:.2f}s) | score bare {base_score[-1]:.2f}s, project {proj_score[-1]:.2f}s"
        )
    # The first rep creates the MLflow store and imports MLflow (~15 s): shown, not counted, when there are more.
    warm = slice(1, None) if args.reps > 1 else slice(None)
    bt, pt, pp = (statistics.median(x[warm]) for x in (base_train, proj_train, proj_promote))
    bs, ps = (statistics.median(x[warm]) for x in (base_score, proj_score))
    print(
        f"\nTRAINING   scale {args.scale:g}: bare lightgbm.train (SQL + frame + Dataset + train) {bt:.2f}s | "
        f"ml/churn_model (rows + train + threshold + metrics + MLflow + register) {pt:.2f}s "
        f"(ratio {pt / bt:.2f}x) | promotion {pp:.2f}s"
    )
    print(
        f"SCORING    scale {args.scale:g}: booster.predict {data.rows / bs:,.0f} rows/s | gold/churn_prediction "
        f"(registry load + score + write) {data.rows / ps:,.0f} rows/s (ratio {ps / bs:.2f}x the time)"
    )
    if args.auc_caps:
        sample_cost(home, [int(c) for c in args.auc_caps.split(",")])


def sample_cost(home: Path, caps: list[int]) -> None:
    """Holdout ROC AUC of the project's training on all training rows and on stratified samples."""
    from churn_assets.defs.ml.train import fit

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    full = None
    for cap in [0, *caps]:
        data = load_training(con, cap)
        t0 = time.perf_counter()
        fitted = fit(data.frame, {}, NUM_BOOST_ROUND)
        took = time.perf_counter() - t0
        auc = fitted.metrics["holdout_roc_auc"]
        full = auc if full is None else full
        print(
            f"SAMPLE     {fitted.rows_train:,} of {data.rows_train_available:,} training rows: holdout ROC AUC "
            f"{auc:.4f} ({auc - full:+.4f} against all rows; {fitted.rows_holdout:,} holdout rows), fit {took:.1f}s"
        )
    con.close()


def parity(home: Path, booster: lgb.Booster, hold: pd.DataFrame) -> None:
    """The project's newest model scores the holdout as the bare booster does: same rows, same model."""
    import polars as pl

    from churn_assets.defs.ml import registry
    from churn_assets.defs.ml.features import to_model_frame

    with registry.configured(registry_store(home), 10, 1):
        client = registry_store(home).client()
        version = registry.latest_version(client, "churn_model")
        model = registry.load_model("churn_model", str(version.version))
    ours = model.predict(to_model_frame(pl.from_pandas(hold.astype({c: "object" for c in CATEGORICAL}))))
    bare = booster.predict(hold[FEATURES])
    assert np.allclose(ours, bare, rtol=0, atol=1e-12), f"max difference {np.abs(ours - bare).max()}"


def registry_store(home: Path):
    from churn_assets.defs.ml.registry import Store

    return Store(
        f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", str(home / "mlflow" / "artifacts"), "churn", "churn_model"
    )


if __name__ == "__main__":
    main()
