"""Bronze -> gold through Dagster against a plain DuckDB script doing the same work.

Usage:  python benchmarks/bench_pipeline.py [--scale 1] [--increments 3] [--reps 2]

For one generated dataset (``--scale 1`` = the reference's ~100k customers) it runs, in
the same process and interleaved, ``--reps`` times each:
- baseline: one plain DuckDB script (read_json / read_csv straight into bronze tables
  with lineage, the same silver cleaning, the same gold aggregation) into a fresh file;
- dagster: every bronze, silver and gold asset (and checks) with ``dg.materialize`` into
  a fresh warehouse, the project's real code path (manifest, hashing, rescue, quarantine).
It prints the asset compute time (sum of step durations), the run's wall time, and the
ratio to the baseline. Then ``--increments`` hourly increments (1 % of the volume each)
through Dagster, each against the full load. The baseline has no incremental state: its
increment cost is a full rebuild, printed for comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import history, peak_gb, step_seconds  # noqa: E402
from churn_assets.generator import generate_increment  # noqa: E402
from churn_assets_tests.helpers import load_defs  # noqa: E402

AS_OF = "2026-11-01T06:00:00"
P = "'%m-%d-%Y %H:%M:%S'"


def baseline(landing: Path, db: Path) -> float:
    """The plain script: what one would write without an orchestrator or bookkeeping."""
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA bronze; CREATE SCHEMA silver; CREATE SCHEMA gold")
    con.execute(f"""CREATE TABLE bronze.churn_users_bronze AS SELECT *, now() AS _ingested_at
        FROM read_json('{landing}/users/*.json', format='newline_delimited', filename='_source_file',
        columns={{'id':'VARCHAR','firstname':'VARCHAR','lastname':'VARCHAR',
        'email':'VARCHAR','address':'VARCHAR','canal':'VARCHAR','country':'VARCHAR','creation_date':'VARCHAR',
        'last_activity_date':'VARCHAR','gender':'DOUBLE','age_group':'DOUBLE','churn':'BOOLEAN'}})""")
    con.execute(f"""CREATE TABLE bronze.churn_orders_bronze AS SELECT *, now() AS _ingested_at
        FROM read_json('{landing}/orders/*.json', format='newline_delimited', filename='_source_file',
        columns={{'user_id':'VARCHAR','id':'VARCHAR','transaction_date':'VARCHAR',
        'item_count':'DOUBLE','amount':'DOUBLE'}})""")
    con.execute(f"""CREATE TABLE bronze.churn_app_events AS SELECT *, now() AS _ingested_at
        FROM read_csv('{landing}/events/*.csv',
        header=true, all_varchar=true, filename='_source_file')""")
    con.execute(f"""CREATE TABLE silver.churn_users AS
        SELECT id AS user_id, sha256('k' || sha256('k' || email)) AS email,
               strptime(creation_date, {P}) AS creation_date,
               strptime(last_activity_date, {P}) AS last_activity_date,
               array_to_string(list_transform(string_split(lower(firstname), ' '),
                                              lambda w: upper(left(w, 1)) || substr(w, 2)), ' ') AS firstname,
               array_to_string(list_transform(string_split(lower(lastname), ' '),
                                              lambda w: upper(left(w, 1)) || substr(w, 2)), ' ') AS lastname,
               address, canal, country, trunc(gender)::INT AS gender, trunc(age_group)::INT AS age_group,
               churn::INT AS churn
        FROM bronze.churn_users_bronze WHERE id IS NOT NULL""")
    con.execute(f"""CREATE TABLE silver.churn_orders AS
        SELECT trunc(amount)::INT AS amount, id AS order_id, user_id, trunc(item_count)::INT AS item_count,
               strptime(transaction_date, {P}) AS creation_date
        FROM bronze.churn_orders_bronze WHERE id IS NOT NULL AND user_id IS NOT NULL""")
    con.execute(f"""CREATE TABLE gold.churn_features AS
        WITH o AS (SELECT user_id, count(*) order_count, sum(amount) total_amount, sum(item_count) total_item,
                          max(creation_date) last_transaction FROM silver.churn_orders GROUP BY user_id),
             e AS (SELECT user_id, arg_min(platform, strptime(date, {P})) FILTER (WHERE platform IS NOT NULL) platform,
                          count(*) event_count, count(DISTINCT session_id) session_count,
                          max(strptime(date, {P})) last_event
                   FROM bronze.churn_app_events WHERE user_id IS NOT NULL GROUP BY user_id)
        SELECT *, date_diff('day', creation_date::DATE, DATE '{AS_OF[:10]}') days_since_creation,
               date_diff('day', last_activity_date::DATE, DATE '{AS_OF[:10]}') days_since_last_activity,
               date_diff('day', last_event::DATE, DATE '{AS_OF[:10]}') days_last_event
        FROM silver.churn_users JOIN o USING (user_id) JOIN e USING (user_id)""")
    rows = con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0]
    con.close()
    took = time.perf_counter() - t0
    return took, rows


def plain_seed_sql(landing: Path, db: Path) -> tuple[dict[str, float], int]:
    """The reference pipeline's SQL translated to DuckDB, run plainly: what a user who skips
    this project would write. No manifest, no hashing, no rescued data, no quarantine, no
    dedup. Spark -> DuckDB: ``cloud_files`` -> read_json / read_csv with the contract's column types,
    ``to_timestamp`` ->
    strptime, ``initcap`` -> a macro, ``sha1`` -> sha1, ``first`` -> first, ``datediff(now(), d)``
    -> date_diff against the benchmark's as-of. Seconds per layer, and the gold row count."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA bronze; CREATE SCHEMA silver; CREATE SCHEMA gold")
    # The landing contract's types written out (cheaper than letting DuckDB sniff them, so the
    # stricter comparison); timestamps stay strings, parsed in silver as the seed does.
    con.execute(f"""CREATE TABLE bronze.churn_app_events AS SELECT * FROM read_csv('{landing}/events/*.csv',
        header=true, columns={{'user_id':'VARCHAR','event_id':'VARCHAR','platform':'VARCHAR','date':'VARCHAR',
        'action':'VARCHAR','session_id':'VARCHAR','url':'VARCHAR'}})""")
    con.execute(f"""CREATE TABLE bronze.churn_orders_bronze AS SELECT * FROM read_json('{landing}/orders/*.json',
        columns={{'user_id':'VARCHAR','id':'VARCHAR','transaction_date':'VARCHAR','item_count':'DOUBLE',
        'amount':'DOUBLE'}})""")
    con.execute(f"""CREATE TABLE bronze.churn_users_bronze AS SELECT * FROM read_json('{landing}/users/*.json',
        columns={{'id':'VARCHAR','firstname':'VARCHAR','lastname':'VARCHAR','email':'VARCHAR','address':'VARCHAR',
        'canal':'VARCHAR','country':'VARCHAR','creation_date':'VARCHAR','last_activity_date':'VARCHAR',
        'gender':'DOUBLE','age_group':'DOUBLE','churn':'BOOLEAN'}})""")
    times["bronze"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    con.execute(
        """CREATE MACRO initcap(s) AS array_to_string(list_transform(string_split(lower(s), ' '),
                                                          lambda w: upper(left(w, 1)) || substr(w, 2)), ' ')"""
    )
    con.execute(f"""CREATE TABLE silver.churn_users AS
        SELECT id AS user_id, sha1(email) AS email, strptime(creation_date, {P}) AS creation_date,
               strptime(last_activity_date, {P}) AS last_activity_date, initcap(firstname) AS firstname,
               initcap(lastname) AS lastname, address, canal, country, trunc(gender)::INT AS gender,
               trunc(age_group)::INT AS age_group, churn::INT AS churn
        FROM bronze.churn_users_bronze WHERE id IS NOT NULL""")
    con.execute(f"""CREATE TABLE silver.churn_orders AS
        SELECT trunc(amount)::INT AS amount, id AS order_id, user_id, trunc(item_count)::INT AS item_count,
               strptime(transaction_date, {P}) AS creation_date
        FROM bronze.churn_orders_bronze WHERE id IS NOT NULL AND user_id IS NOT NULL""")
    times["silver"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    con.execute(f"""CREATE TABLE gold.churn_features AS
        WITH churn_orders_stats AS (
            SELECT user_id, count(*) AS order_count, sum(amount) AS total_amount, sum(item_count) AS total_item,
                   max(creation_date) AS last_transaction
            FROM silver.churn_orders GROUP BY user_id),
        churn_app_events_stats AS (
            SELECT first(platform) AS platform, user_id, count(*) AS event_count,
                   count(DISTINCT session_id) AS session_count, max(strptime(date, {P})) AS last_event
            FROM bronze.churn_app_events GROUP BY user_id)
        SELECT *,
               date_diff('day', creation_date::DATE, DATE '{AS_OF[:10]}') AS days_since_creation,
               date_diff('day', last_activity_date::DATE, DATE '{AS_OF[:10]}') AS days_since_last_activity,
               date_diff('day', last_event::DATE, DATE '{AS_OF[:10]}') AS days_last_event
        FROM silver.churn_users
        JOIN churn_orders_stats USING (user_id)
        JOIN churn_app_events_stats USING (user_id)""")
    rows = con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0]
    # Closing writes what is still only in the WAL into the database file (a checkpoint). The
    # project's steps close their connections, and so checkpoint, inside the timed step: the
    # plain side's close counts too, in its last layer.
    con.close()
    times["gold"] = time.perf_counter() - t0
    return times, rows


# Gold columns compared exactly, cast to one type on both sides. Two differ by the seed's own
# semantics and are left out: ``email`` (the seed's unkeyed sha1, the project's keyed hash) and
# ``platform`` (the seed's ``first()`` is whichever row comes first; the project takes the
# earliest event's platform). Their agreement is printed, not asserted.
PARITY_COLUMNS = {
    "user_id": "VARCHAR",
    "creation_date": "TIMESTAMP",
    "last_activity_date": "TIMESTAMP",
    "firstname": "VARCHAR",
    "lastname": "VARCHAR",
    "address": "VARCHAR",
    "canal": "VARCHAR",
    "country": "VARCHAR",
    "gender": "BIGINT",
    "age_group": "BIGINT",
    "churn": "BIGINT",
    "order_count": "BIGINT",
    "total_amount": "BIGINT",
    "total_item": "BIGINT",
    "last_transaction": "TIMESTAMP",
    "event_count": "BIGINT",
    "session_count": "BIGINT",
    "last_event": "TIMESTAMP",
    "days_since_creation": "BIGINT",
    "days_since_last_activity": "BIGINT",
    "days_last_event": "BIGINT",
}


def assert_parity(plain_db: Path, warehouse: Path) -> str:
    """The plain baseline's gold rows equal the project's on every column of PARITY_COLUMNS
    (as multisets: a duplicated or missing customer fails). Returns a one-line summary."""
    con = duckdb.connect(str(plain_db), read_only=True)
    con.execute(f"ATTACH '{warehouse}' AS proj (READ_ONLY)")
    cols = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in PARITY_COLUMNS.items())
    plain_q = f"SELECT {cols} FROM gold.churn_features"
    proj_q = f"SELECT {cols} FROM proj.gold.churn_features"
    only_plain = con.execute(f"SELECT count(*) FROM ({plain_q} EXCEPT ALL {proj_q})").fetchall()[0][0]
    only_proj = con.execute(f"SELECT count(*) FROM ({proj_q} EXCEPT ALL {plain_q})").fetchall()[0][0]
    n_plain, n_proj = (
        con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0],
        con.execute("SELECT count(*) FROM proj.gold.churn_features").fetchall()[0][0],
    )
    same_platform = con.execute(
        """SELECT avg((p.platform IS NOT DISTINCT FROM q.platform)::INT) FROM gold.churn_features p
           JOIN proj.gold.churn_features q USING (user_id)"""
    ).fetchall()[0][0]
    con.close()
    assert n_plain == n_proj and only_plain == 0 and only_proj == 0, (
        f"gold differs: plain {n_plain:,} rows, project {n_proj:,}; {only_plain} rows only in the plain baseline, "
        f"{only_proj} only in the project's"
    )
    return (
        f"parity: {n_proj:,} gold rows equal on {len(PARITY_COLUMNS)} columns; "
        f"platform agrees on {same_platform:.1%} (seed first() vs earliest event), email differs by design"
    )


def dagster_run(home: Path) -> tuple[float, float, dict[str, float], int]:
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    defs = load_defs(home, AS_OF)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection="*gold/churn_features",  # the data layers: what the baseline script does
        resources=defs.resources,
        instance=instance,
    )
    wall = time.perf_counter() - t0
    assert result.success
    steps = step_seconds(instance, result.run_id)
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows = con.execute("SELECT count(*) FROM gold.churn_features").fetchall()[0][0]
    con.close()
    return sum(steps.values()), wall, steps, rows


def settle_io(landing: Path) -> float:
    """Before each side: write out what the side before left to write (its DuckDB files, several
    GB at 100x), then read every landing file once, so that each side starts with no disk
    writes pending and the landing files in the page cache as far as memory allows. At 100x the
    same code took a third longer, on both sides, in runs started just after GBs were written
    (the generator's output, copies of the warehouse) than in one that was not. Seconds taken,
    in neither side's time."""
    t0 = time.perf_counter()
    os.sync()
    for path in sorted(landing.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
    return time.perf_counter() - t0


def by_layer(steps: dict[str, float]) -> dict[str, float]:
    """Step seconds summed per layer (a step key starts with its layer: ``bronze__churn_app_events``)."""
    by: dict[str, float] = {}
    for key, secs in steps.items():
        layer = key.split("__")[0]
        by[layer] = by.get(layer, 0.0) + secs
    return by


def fmt(times: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in times.items())


def layer_times(steps: dict[str, float]) -> str:
    return fmt(by_layer(steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1 = reference scale (100k customers)")
    ap.add_argument("--increments", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="churn-bench-"))
    src = work / "src"
    customers = int(100_000 * args.scale)
    history(src, customers)

    base_times, dag_compute, dag_wall = [], [], []
    plain_layers: dict[str, list[float]] = {}
    dag_layers: dict[str, list[float]] = {}
    last_home = None
    for rep in range(args.reps):
        db = work / f"baseline-{rep}.duckdb"
        warmed = [settle_io(src / "landing")]
        took, base_rows = baseline(src / "landing", db)
        base_times.append(took)
        db.unlink()
        plain_db = work / f"plain-{rep}.duckdb"
        warmed.append(settle_io(src / "landing"))
        plain, plain_rows = plain_seed_sql(src / "landing", plain_db)
        if rep == 0:
            print(f"  peak RSS after the baselines: {peak_gb():.2f} GB")
        for layer, secs in plain.items():
            plain_layers.setdefault(layer, []).append(secs)
        home = work / f"dagster-{rep}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        # Hard links: the same files, no copy cost, each run its own landing folder.
        shutil.copytree(src / "landing", home / "landing", copy_function=os.link)
        shutil.copytree(src / "generator", home / "generator")
        warmed.append(settle_io(home / "landing"))
        compute, wall, steps, dag_rows = dagster_run(home)
        for layer, secs in by_layer(steps).items():
            dag_layers.setdefault(layer, []).append(secs)
        dag_compute.append(compute)
        dag_wall.append(wall)
        print(
            f"rep {rep + 1}: extra-work baseline {took:.2f}s ({base_rows:,} gold rows) | plain seed SQL "
            f"{sum(plain.values()):.2f}s [{fmt(plain)}] ({plain_rows:,} gold rows) | dagster compute {compute:.2f}s, "
            f"wall {wall:.2f}s ({dag_rows:,} gold rows) [{layer_times(steps)}]"
        )
        print("  " + assert_parity(plain_db, home / "warehouse.duckdb"))
        print(f"  writes flushed, landing files read before each side: {', '.join(f'{w:.1f}s' for w in warmed)}")
        print(f"  peak RSS of this process so far: {peak_gb():.2f} GB")
        plain_db.unlink()
        if last_home:
            shutil.rmtree(last_home, ignore_errors=True)
        last_home = home
    b, c, w = statistics.median(base_times), statistics.median(dag_compute), statistics.median(dag_wall)
    print(
        f"\nFULL LOAD  scale {args.scale:g}: extra-work baseline {b:.2f}s | dagster asset compute {c:.2f}s "
        f"(ratio {c / b:.2f}x) | dagster run wall {w:.2f}s (ratio {w / b:.2f}x)"
    )
    print(f"PLAIN SEED SQL scale {args.scale:g} (median of {args.reps}), per layer: project / plain = ratio")
    for layer in ("bronze", "silver", "gold"):
        p, d = statistics.median(plain_layers[layer]), statistics.median(dag_layers.get(layer, [0.0]))
        print(f"  {layer:<7} {d:7.2f}s / {p:7.2f}s = {d / p:.2f}x")
    p = statistics.median(sum(v[i] for v in plain_layers.values()) for i in range(args.reps))
    d = statistics.median(sum(v[i] for k, v in dag_layers.items() if k in plain_layers) for i in range(args.reps))
    print(f"  {'total':<7} {d:7.2f}s / {p:7.2f}s = {d / p:.2f}x  (bronze -> gold, asset compute)")

    inc = []
    for k in range(args.increments):
        r = generate_increment(last_home, fraction=0.01)
        compute, wall, steps, rows = dagster_run(last_home)
        inc.append(compute)
        print(
            f"increment {k + 1} (+{sum(r.records.values()):,} records): "
            f"dagster compute {compute:.2f}s, wall {wall:.2f}s "
            f"= {compute / c:.1%} of the full load [{layer_times(steps)}]"
        )
    if inc:
        m = statistics.median(inc)
        print(
            f"INCREMENT  scale {args.scale:g}: median {m:.2f}s = {m / c:.1%} of the full load's asset compute "
            f"(baseline script rebuilds everything: {b:.2f}s = {b / b:.0%})"
        )
        # Once a day a run also compacts what it writes (CHURN_COMPACT_EVERY_HOURS, 24):
        # its cost, and the hourly increment's cost with it spread over the day.
        os.environ["CHURN_COMPACT_EVERY_HOURS"] = "0"
        r = generate_increment(last_home, fraction=0.01)
        compute, wall, steps, rows = dagster_run(last_home)
        del os.environ["CHURN_COMPACT_EVERY_HOURS"]
        daily = (23 * m + compute) / 24
        print(
            f"COMPACTING increment (+{sum(r.records.values()):,} records): "
            f"dagster compute {compute:.2f}s, wall {wall:.2f}s "
            f"[{layer_times(steps)}]; a day of 23 hourly increments + 1 compacting: {daily:.2f}s per increment "
            f"= {daily / c:.1%} of the full load"
        )
    shutil.rmtree(work, ignore_errors=True) if not args.workdir else None


if __name__ == "__main__":
    main()
