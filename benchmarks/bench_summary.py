"""One table per scale: each layer's time and peak memory, the project against its baselines,
measured side by side in one run.

Usage:  python benchmarks/bench_summary.py --scale 1 [--reps 3] [--workdir DIR]

On one generated history (seed 42, ``--scale`` x the reference's 100k customers; a kept
``--workdir`` reuses it), each rep runs three child processes one after the other, each
measured on its own (its resident set sampled every 50 ms, cut at the layers' start and end):
- **plain seed SQL**: ``bench_pipeline.plain_seed_sql``, the seed's SQL run plainly in DuckDB;
- **project**: the bronze, silver and gold assets and their checks in one ``dg.materialize``
  run into a fresh warehouse (manifest, hashing, rescued data, quarantine: the real code
  path), then ``ml/churn_model`` (training rows, LightGBM, threshold, metrics, MLflow run and
  registration), its promotion, and ``gold/churn_prediction`` (every customer scored by the
  champion), each its own run, as a first cycle does them;
- **bare LightGBM**, on the project's gold: the training rows by plain SQL into pandas (the
  project's stratified sample where it samples: the same customers), ``lgb.Dataset`` and
  ``lgb.train`` with the project's parameters; then every customer read by plain SQL, scored
  with ``booster.predict`` and written to a DuckDB table. None of the project's training or
  scoring code.

Before the plain and the project side, pending writes are flushed and the landing files read
once (``bench_pipeline.settle_io``), in neither side's time. Asserted, every rep: the plain
gold equals the project's (``bench_pipeline.assert_parity``), the project's registered model
scores the holdout exactly as the bare booster, and every customer of gold has one prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As `churn` gives the processes it starts (settings.PROCESS_DEFAULTS), for both sides, before LightGBM loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

from benchmarks.common import history, peak_gb, step_windows  # noqa: E402

AS_OF = "2026-11-01T06:00:00"
ROWS = ["bronze", "silver", "gold", "bronze -> gold", "training", "scoring"]


class RssSampler:
    """This process's resident set every ``every`` seconds, with wall-clock times (the event log's clock)."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._rss()))
            self._stop.wait(every)

    def peak(self, windows: list[tuple[float, float]]) -> float:
        """Peak GB over the samples inside any of ``windows`` (each widened by one sampling interval,
        so that a window shorter than it still has a sample)."""
        inside = [rss for t, rss in self.samples if any(a - self.every <= t <= b + self.every for a, b in windows)]
        return max(inside, default=0) / 1024**3

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def layer_of(step: str) -> str:
    """Which row a project step counts in: its key's first part (the gold check counts as gold)."""
    if step == "ml__churn_model":
        return "training"
    if step == "gold__churn_prediction":
        return "scoring"
    return step.split("__")[0]


# --- the three sides, each run in a child process (``--child NAME``) -------------------------


def plain_side(work: Path, sampler: RssSampler) -> dict:
    from benchmarks.bench_pipeline import plain_seed_sql

    db = work / "plain.duckdb"
    db.unlink(missing_ok=True)
    start = time.time()
    times, rows = plain_seed_sql(work / "src" / "landing", db)
    out, t = {}, start
    for layer in ("bronze", "silver", "gold"):  # plain_seed_sql's layers, timed one after the other
        out[layer] = {"seconds": times[layer], "peak_gb": sampler.peak([(t, t + times[layer])])}
        t += times[layer]
    out["bronze -> gold"] = {"seconds": sum(times.values()), "peak_gb": sampler.peak([(start, t)])}
    return {"layers": out, "gold_rows": rows}


def project_side(work: Path, sampler: RssSampler) -> dict:
    import dagster as dg

    from churn_assets_tests.helpers import load_defs

    home = work / "project"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    # Hard links: the same files, no copy cost, a landing folder of its own.
    shutil.copytree(work / "src" / "landing", home / "landing", copy_function=os.link)
    shutil.copytree(work / "src" / "generator", home / "generator")
    # MLflow's store is created (its schema migrated) once per installation, 10-15 s: that is done
    # in a process of its own before the clock, so the training step costs what every retrain costs.
    run_child("mlflow_store", work)
    instance = dg.DagsterInstance.ephemeral()
    windows: dict[str, list[tuple[float, float]]] = {}
    # As a first cycle does them: the data layers, training, promotion, scoring everyone.
    for selection in (
        "*gold/churn_features",
        "key:ml/churn_model",
        "key:ml/churn_model_champion",
        "key:gold/churn_prediction",
    ):
        defs = load_defs(home, AS_OF)
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], selection=selection, resources=defs.resources, instance=instance
        )
        assert result.success, selection
        for step, window in step_windows(instance, result.run_id).items():
            windows.setdefault(layer_of(step), []).append(window)
    out = {
        layer: {"seconds": sum(b - a for a, b in w), "peak_gb": sampler.peak(w)}
        for layer, w in windows.items()
        if layer in ROWS
    }
    data = [w for layer in ("bronze", "silver", "gold") for w in windows[layer]]
    out["bronze -> gold"] = {
        "seconds": sum(out[layer]["seconds"] for layer in ("bronze", "silver", "gold")),
        "peak_gb": sampler.peak(data),
    }
    # The promotion step (ml) and any step outside the rows: printed, not in the table.
    other = {k: round(sum(b - a for a, b in w), 2) for k, w in windows.items() if k not in ROWS}
    return {"layers": out, "other_steps": other}


def bare_side(work: Path, sampler: RssSampler) -> dict:
    import duckdb

    from churn_assets.defs.ml.features import CATEGORICAL, FEATURES, LABEL, training_sql
    from churn_assets.defs.ml.train import DEFAULT_PARAMS, NUM_BOOST_ROUND
    from churn_assets.settings import Settings

    home = work / "project"
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    # The same customers as the project: its holdout, and its stratified sample where it samples,
    # chosen before the clock starts (which rows to train on is the project's rule, not the
    # baseline's work).
    cap = Settings.read_one("train_max_rows")
    gold_rows = con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0]
    con.execute(f"CREATE TEMP TABLE chosen AS SELECT user_id, is_holdout FROM ({training_sql(cap)})")
    feats = ", ".join(FEATURES)
    rows_of = (
        f"SELECT {feats}, {LABEL} FROM gold.churn_features WHERE user_id IN (SELECT user_id FROM chosen WHERE {{}})"
    )

    # A fresh process, as the project's step runs in one: the clock starts before LightGBM and
    # pandas are imported (the project's step imports them, and MLflow, on its clock).
    start = time.time()
    t0 = time.perf_counter()
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    frame = con.sql(rows_of.format("NOT is_holdout") + " ORDER BY user_id").df()
    for c in CATEGORICAL:
        frame[c] = frame[c].astype("category")
    booster = lgb.train(
        DEFAULT_PARAMS,
        lgb.Dataset(frame[FEATURES], label=frame[LABEL].astype(int), categorical_feature=CATEGORICAL),
        num_boost_round=NUM_BOOST_ROUND,
    )
    train_s, train_end = time.perf_counter() - t0, time.time()
    trained_rows = len(frame)
    categories = {c: frame[c].cat.categories for c in CATEGORICAL}
    del frame

    from benchmarks.bench_model import parity

    hold = con.sql(rows_of.format("is_holdout") + " ORDER BY user_id").df()
    for c in CATEGORICAL:
        hold[c] = pd.Categorical(hold[c], categories=categories[c])
    parity(home, booster, hold)  # the project's registered model scores the holdout as this booster does
    del hold

    score_start = time.time()
    t0 = time.perf_counter()
    everyone = con.sql(f"SELECT user_id, {feats} FROM gold.churn_features").df()
    for c in CATEGORICAL:
        everyone[c] = pd.Categorical(everyone[c], categories=categories[c])
    scored = pd.DataFrame({"user_id": everyone["user_id"], "churn_probability": booster.predict(everyone[FEATURES])})
    scored["churn_prediction"] = (scored["churn_probability"] >= 0.5).astype(np.int32)
    out = duckdb.connect(str(work / "bare-scores.duckdb"))
    out.execute("CREATE OR REPLACE TABLE prediction AS SELECT * FROM scored")
    out.close()
    score_s = time.perf_counter() - t0
    con.close()
    (work / "bare-scores.duckdb").unlink()

    predicted = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    once = predicted.execute(
        """SELECT count(*), count(DISTINCT p.user_id) FROM gold.churn_features f
           JOIN gold.churn_prediction p USING (user_id)"""
    ).fetchall()[0]
    predicted.close()
    assert once == (gold_rows, gold_rows), f"predictions: {once} for {gold_rows} customers"
    return {
        "layers": {
            "training": {"seconds": train_s, "peak_gb": sampler.peak([(start, train_end)])},
            "scoring": {"seconds": score_s, "peak_gb": sampler.peak([(score_start, time.time())])},
        },
        "trained_rows": trained_rows,
        "gold_rows": gold_rows,
    }


def mlflow_store(work: Path, sampler: RssSampler) -> dict:
    from churn_assets.defs.ml.registry import open_store
    from churn_assets_tests.helpers import load_defs

    t0 = time.perf_counter()
    open_store(load_defs(work / "project", AS_OF).resources["mlflow_store"].store())
    return {"seconds": time.perf_counter() - t0}


SIDES = {"plain": plain_side, "project": project_side, "bare": bare_side, "mlflow_store": mlflow_store}


def child(name: str, work: Path) -> None:
    sampler = RssSampler()
    try:
        result = SIDES[name](work, sampler)
    finally:
        sampler.close()
    result["process_peak_gb"] = peak_gb()
    (work / f"{name}.json").write_text(json.dumps(result))


def run_child(name: str, work: Path) -> dict:
    subprocess.run([sys.executable, __file__, "--child", name, "--workdir", str(work)], check=True)
    return json.loads((work / f"{name}.json").read_text())


# --- the run ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1 = reference scale (100k customers)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workdir", required=False, default=None)
    ap.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, Path(args.workdir))

    import tempfile

    from benchmarks.bench_pipeline import assert_parity, settle_io

    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-summary-"))
    src, customers = work / "src", int(100_000 * args.scale)
    history(src, customers)

    reps: list[dict[str, dict]] = []
    for rep in range(args.reps):
        settle_io(src / "landing")
        plain = run_child("plain", work)
        settle_io(src / "landing")
        project = run_child("project", work)
        bare = run_child("bare", work)
        parity = assert_parity(work / "plain.duckdb", work / "project" / "warehouse.duckdb")
        (work / "plain.duckdb").unlink()
        reps.append({"plain": plain, "project": project, "bare": bare})
        line = ", ".join(
            f"{row} {project['layers'][row]['seconds']:.2f}/"
            f"{(plain if row in plain['layers'] else bare)['layers'][row]['seconds']:.2f}s"
            for row in ROWS
        )
        print(f"rep {rep + 1} (project / baseline): {line}")
        print(f"  {parity}; {bare['trained_rows']:,} training customers; other steps: {project['other_steps']}")
        print(
            f"  process peaks: plain {plain['process_peak_gb']:.2f} GB, project {project['process_peak_gb']:.2f} GB, "
            f"bare LightGBM {bare['process_peak_gb']:.2f} GB"
        )

    def median(side: str, row: str, what: str) -> float:
        return statistics.median(r[side]["layers"][row][what] for r in reps)

    print(
        f"\n**{args.scale:g}x** ({customers:,} customers drawn, {reps[0]['bare']['gold_rows']:,} in gold; "
        f"median of {args.reps} rep{'s' * (args.reps > 1)}), "
        f"`python benchmarks/bench_summary.py --scale {args.scale:g} --reps {args.reps}`:\n"
    )
    print("| layer | project | peak RSS | baseline | baseline | peak RSS | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in ROWS:
        base = "plain" if row in reps[0]["plain"]["layers"] else "bare"
        name = "plain seed SQL" if base == "plain" else "bare LightGBM"
        p, b = median("project", row, "seconds"), median(base, row, "seconds")
        print(
            f"| {row} | {p:.2f} s | {median('project', row, 'peak_gb'):.2f} GB | {name} | {b:.2f} s | "
            f"{median(base, row, 'peak_gb'):.2f} GB | **{p / b:.2f}x** |"
        )
    # A kept --workdir keeps the last rep's warehouse and MLflow store too (for bench_scoring.py).
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
