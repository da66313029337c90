"""Training on more customers than the cap: a stratified sample (labels keep their shares), the
same customers every time; the holdout whole, or above its own cap a stratified sample that the
champion comparison measures on too; and the holdout threshold chosen as f1_score says."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from sklearn.metrics import f1_score

from churn_assets.defs.ml.features import (
    FEATURES,
    HOLDOUT_PERCENT,
    load_features,
    load_holdout,
    load_training,
    md5_mod,
)
from churn_assets.defs.ml.train import best_threshold


@pytest.fixture
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA gold")
    # 10,000 customers, ~30 % churn; the features' values do not matter here.
    cols = ", ".join(
        f"(i % 7)::DOUBLE AS {c}" if c not in ("canal", "country", "platform") else f"'x' AS {c}" for c in FEATURES
    )
    con.execute(f"""CREATE TABLE gold.churn_features AS
        SELECT md5(i::VARCHAR) AS user_id, {cols}, (hash(i) % 10) < 3 AS churn FROM range(10000) t(i)""")
    yield con
    con.close()


def test_the_fast_md5_modulo_is_duckdbs_own():
    """md5_mod's DuckDB form (the number's two 64-bit halves) gives md5_number(x) % m exactly:
    50,000 keys, moduli small and up to the largest it takes; a larger one is refused."""
    con = duckdb.connect()
    keys = "SELECT 'k' || i::VARCHAR AS k FROM range(50000) t(i)"
    for m in (100, 7, 97, 1000, 2**31 - 1, 2**32 - 1):
        wrong, distinct = con.execute(
            f"""SELECT count(*) FILTER (WHERE {md5_mod("k", m)} IS DISTINCT FROM md5_number(k) % {m}),
                       count(DISTINCT {md5_mod("k", m)}) FROM ({keys})"""
        ).fetchall()[0]
        assert wrong == 0, m
        if m <= 1000:
            assert distinct == m, (m, distinct)  # every residue turns up among 50,000 keys
    assert md5_mod("k", 100, portable=True) == "md5_number(k) % 100"  # what the Spark transpiler rewrites
    with pytest.raises(ValueError, match="2\\^32"):
        md5_mod("k", 2**32)


def test_duckdb_gets_the_fast_form_and_the_spark_cursor_the_portable_one():
    from churn_assets.defs.ml.features import _portable
    from churn_assets.engine import SparkCursor

    assert not _portable(duckdb.connect()) and not _portable(duckdb.connect().cursor())
    assert _portable(SparkCursor.__new__(SparkCursor))


def _shares(frame) -> dict:
    train = frame.filter(~frame["is_holdout"])
    return {"rows": len(train), "churn": int(train["churn"].sum()), "holdout": int(frame["is_holdout"].sum())}


def test_under_the_cap_every_customer_trains(con):
    total, train_rows, churners, holdout = con.execute(
        f"""SELECT count(*), count(*) FILTER (md5_number(user_id) % 100 >= {HOLDOUT_PERCENT}),
                   count(*) FILTER (md5_number(user_id) % 100 >= {HOLDOUT_PERCENT} AND churn),
                   count(*) FILTER (md5_number(user_id) % 100 < {HOLDOUT_PERCENT})
            FROM gold.churn_features"""
    ).fetchall()[0]
    for cap in (0, train_rows, 10**9):
        data = load_training(con, cap)
        assert (data.rows, data.rows_train_available) == (total, train_rows)
        assert _shares(data.frame) == {"rows": train_rows, "churn": churners, "holdout": holdout}
    assert data.frame["user_id"].is_sorted()


def test_over_the_cap_a_stratified_sample_and_the_whole_holdout(con):
    full = load_training(con, 0)
    every = _shares(full.frame)
    data = load_training(con, 2_000)
    got = _shares(data.frame)
    assert data.rows_train_available == every["rows"] > 2_000
    # Each label keeps its share of the training customers (rounded): the churn rate is unchanged.
    assert got["churn"] == round(2_000 * every["churn"] / every["rows"])
    assert got["rows"] - got["churn"] == round(2_000 * (every["rows"] - every["churn"]) / every["rows"])
    assert abs(got["churn"] / got["rows"] - every["churn"] / every["rows"]) < 0.001
    assert got["holdout"] == every["holdout"]  # no holdout cap: the holdout is whole
    sample = set(data.frame.filter(~data.frame["is_holdout"])["user_id"])
    assert sample <= set(full.frame.filter(~full.frame["is_holdout"])["user_id"])
    assert set(load_training(con, 2_000).frame["user_id"]) == set(data.frame["user_id"])  # the same every time
    # Rows as loaded: what the model sees, features and label, no sampling columns.
    assert data.frame.columns == ["user_id", *FEATURES, "churn", "is_holdout"]


def test_over_the_holdout_cap_the_metrics_rows_are_a_stratified_sample_the_champion_step_reads_too(con):
    full = load_training(con, 0)
    hold_all = full.frame.filter(full.frame["is_holdout"])
    churners, holdout = int(hold_all["churn"].sum()), hold_all.height
    assert holdout > 500 and full.rows_holdout_available == holdout
    for train_cap in (0, 2_000):
        data = load_training(con, train_cap, 500)
        hold = data.frame.filter(data.frame["is_holdout"])
        # Each label keeps its share of the holdout (rounded); the holdout before sampling is counted.
        assert int(hold["churn"].sum()) == round(500 * churners / holdout)
        assert hold.height - int(hold["churn"].sum()) == round(500 * (holdout - churners) / holdout)
        assert data.rows_holdout_available == holdout
        assert set(hold["user_id"]) <= set(hold_all["user_id"])
        # The training side is what it is without a holdout cap.
        alone = load_training(con, train_cap)
        assert data.rows_train_available == alone.rows_train_available
        assert data.frame.filter(~data.frame["is_holdout"]).equals(alone.frame.filter(~alone.frame["is_holdout"]))
        assert data.frame.columns == ["user_id", *FEATURES, "churn", "is_holdout"]
        assert data.frame["user_id"].is_sorted()
        # The champion step scores both models on exactly these rows.
        assert load_holdout(con, 500).equals(hold)
    assert load_holdout(con, 500).equals(load_holdout(con, 500))  # the same every time
    # Under the cap, or without one: the whole holdout, as the features flag it.
    for cap in (0, holdout, 10**9):
        assert load_holdout(con, cap).equals(load_features(con, holdout_only=True))
        assert load_training(con, 0, cap).frame.equals(full.frame)


def _kept_by_the_rule(con, train_cap: int, holdout_cap: int) -> list[str]:
    """The sampling rule written plainly: every customer of a side and label ranked by (rank key,
    user_id); beyond the side's cap the first ``greatest(1, round(cap * label's / side's))``."""
    from churn_assets.defs.ml.features import PLACE_MODULUS

    return [
        r[0]
        for r in con.execute(
            f"""WITH g AS (SELECT user_id, churn, md5_number(user_id) % {PLACE_MODULUS} AS p
                           FROM gold.churn_features WHERE churn IS NOT NULL),
                 r AS (SELECT user_id, p % 100 < {HOLDOUT_PERCENT} AS h,
                              row_number() OVER (PARTITION BY p % 100 < {HOLDOUT_PERCENT}, churn
                                                 ORDER BY p // 100, user_id) AS rn,
                              count(*) OVER (PARTITION BY p % 100 < {HOLDOUT_PERCENT}, churn) AS in_label,
                              count(*) OVER (PARTITION BY p % 100 < {HOLDOUT_PERCENT}) AS in_side
                       FROM g)
                SELECT user_id FROM r, (SELECT CASE WHEN h THEN {holdout_cap} ELSE {train_cap} END AS cap)
                WHERE cap = 0 OR in_side <= cap OR rn <= greatest(1, round(cap * in_label / in_side))
                ORDER BY user_id"""
        ).fetchall()
    ]


@pytest.mark.parametrize("modulus, bucket", [(None, None), (100 * 50, 4)])
def test_the_samples_are_the_lowest_rank_keys_of_each_label_as_a_plain_window_finds_them(
    con, monkeypatch, modulus, bucket
):
    """The bucketed cut keeps exactly the customers a window over every customer keeps. With a
    small modulus and bucket, rank keys tie often (50 keys for ~8,000 training customers) and
    the quota ends inside a crowded bucket; a side or a label may be tiny, or one customer."""
    from churn_assets.defs.ml import features

    if modulus:
        monkeypatch.setattr(features, "PLACE_MODULUS", modulus)
        monkeypatch.setattr(features, "RANK_BUCKET", bucket)
    caps = [(2_000, 0), (0, 500), (2_000, 500), (1, 1), (7, 3), (10**9, 1)]
    for train_cap, holdout_cap in caps:
        got = con.sql(features.training_sql(train_cap, False, holdout_cap)).pl()
        assert got["user_id"].to_list() == _kept_by_the_rule(con, train_cap, holdout_cap), (train_cap, holdout_cap)
        if holdout_cap:
            held = con.sql(features.holdout_sql(holdout_cap)).pl()
            assert held["user_id"].to_list() == got.filter(got["is_holdout"])["user_id"].to_list()
    # One labelled customer in all: each capped side keeps what it has.
    con.execute(
        "UPDATE gold.churn_features SET churn = NULL WHERE user_id <> (SELECT min(user_id) FROM gold.churn_features)"
    )
    for train_cap, holdout_cap in caps:
        got = con.sql(features.training_sql(train_cap, False, holdout_cap)).pl()
        assert got["user_id"].to_list() == _kept_by_the_rule(con, train_cap, holdout_cap) and got.height == 1


@pytest.mark.parametrize("seed", range(6))
def test_threshold_is_the_best_f1_cut_as_f1_score_finds_it(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 5_000))
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    # Scores that carry some signal, with ties (rounded), as a model's probabilities have.
    proba = np.round(np.clip(0.5 * labels + rng.random(n) * rng.uniform(0.5, 2), 0, 1), int(rng.integers(2, 5)))
    grid = np.unique(np.quantile(proba, np.linspace(0.05, 0.95, 91)))
    scores = [f1_score(labels, proba >= t, zero_division=0) for t in grid]
    assert best_threshold(labels, proba) == float(grid[int(np.argmax(scores))])


def test_model_matrix_is_the_frame_the_model_input_becomes():
    import pandas as pd
    import polars as pl

    from churn_assets.defs.ml.features import NUMERIC, as_categories, model_matrix, to_model_frame, vocabulary_of

    rows = 9
    df = pl.DataFrame(
        {
            "canal": ["WEBAPP", "PHONE", None, "MOBILE", "WEBAPP", "PHONE", "FAX", None, "MOBILE"],
            "country": ["FR", "USA", "SPAIN", None, "FR", "FR", "USA", "SPAIN", "FR"],
            "platform": [None] * rows,  # a feature with no value at all
            **{c: [float(i) if i % 4 else None for i in range(rows)] for c in NUMERIC},
        }
    )
    vocabulary = vocabulary_of(df.head(6))  # "FAX" (row 7) is unknown to it, as a new value at scoring is
    assert vocabulary == {"canal": ["MOBILE", "PHONE", "WEBAPP"], "country": ["FR", "SPAIN", "USA"], "platform": []}
    expected = as_categories(to_model_frame(df), vocabulary)
    got = model_matrix(df, vocabulary)
    pd.testing.assert_frame_equal(got, expected[got.columns])
    assert list(got.columns) == list(FEATURES)
    assert got["canal"].isna().tolist() == [False, False, True, False, False, False, True, True, False]
