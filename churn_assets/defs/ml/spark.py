"""The model on Spark: training rows from the cluster, scoring on the cluster.

Training is LightGBM on one machine (the driver), as on DuckDB: ``features.load_training``
runs its one SQL statement through the engine's cursor, so the holdout flag and the
stratified samples above ``CHURN_TRAIN_MAX_ROWS`` and ``CHURN_EVAL_MAX_ROWS`` are computed by
the cluster, and only the result is collected to the driver, as Arrow batches: ~130 bytes per
customer (measured on the sample). Spark refuses a collect above ``spark.driver.maxResultSize``
(1 GiB by default, ~8M customers); the two caps' defaults (``settings.py``) keep a collect well
under it at any scale. Caps raised past it fail the step with Spark's error naming the setting:
raise it (and ``spark.driver.memory``) too.

Scoring runs where the data is: ``mlflow.pyfunc.spark_udf`` over ``gold.churn_features``,
with the champion's version resolved just before (the model that scores is exactly the one the
rows name). The driver downloads the model from the registry and Spark ships it to the
executors, which load it in their own Python (``env_manager="local"``: the workers run this
environment, see ``PYSPARK_PYTHON``); only the driver must reach the MLflow store. Over Spark
Connect there is no ``SparkContext`` to ship it with: MLflow's UDF then loads
``models:/<name>/<version>`` in each executor from the tracking URI of this process (set for the
step), so the executors must reach the MLflow store too. Same call, MLflow picks the way.
Every run scores every customer: on a cluster that is one parallel pass, and the rows equal
the DuckDB engine's full scoring (its incremental mode is DuckDB only).
"""

from __future__ import annotations

from datetime import datetime

from churn_assets.defs.ml.features import CATEGORICAL, FEATURES, NUMERIC
from churn_assets.defs.ml.scoring import CONTEXT, Scored
from churn_assets.engine import EngineResource
from churn_assets.landing import SPECS

PREDICTION_TABLE = "gold.churn_prediction"


def landed_and_latest(engine: EngineResource) -> tuple[int, datetime | None]:
    """Bronze rows landed so far and when the newest was ingested (the DuckDB engine reads both
    from its manifest): what the retrain policy counts and a model's data fingerprint."""
    from pyspark.sql import functions as F

    landed, latest = 0, None
    for spec in SPECS.values():
        table = f"bronze.{spec.table}"
        if not engine.has_table(table):
            continue
        rows, newest = engine.table(table).agg(F.count("*"), F.max("_ingested_at")).first()
        landed += rows
        latest = newest if latest is None or (newest is not None and newest > latest) else latest
    return landed, latest


def model_input():
    """The model's input columns as ``features.to_model_frame`` makes them: categoricals as
    strings, numbers as doubles."""
    from pyspark.sql import functions as F

    return [F.col(c).cast("string").alias(c) for c in CATEGORICAL] + [F.col(c).cast("double").alias(c) for c in NUMERIC]


def spark_model(engine: EngineResource, model_name: str, version: str):
    """``models:/<model_name>/<version>`` as a Spark UDF (probability of churn, a double): the
    driver downloads it from the registry now (a store that fails, fails here, before anything
    is written) and Spark ships it to the executors."""
    import mlflow.pyfunc

    return mlflow.pyfunc.spark_udf(
        engine.spark(), f"models:/{model_name}/{version}", result_type="double", env_manager="local"
    )


def score_spark(
    engine: EngineResource, predict, threshold: float, model_name: str, version: str, scored_at: datetime
) -> Scored:
    """Score every customer of gold.churn_features with ``predict`` (``spark_model``) on the
    cluster and replace gold.churn_prediction (the DuckDB table's columns) in one switch."""
    import time

    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    gold = engine.table("gold.churn_features")
    # The hash of the features scored, as on DuckDB (there its own hash(); here Spark's xxhash64).
    # The context columns as gold has them (the model input casts some of the same names).
    context = [F.expr(sql).alias(f"_context_{name}") for name, sql in CONTEXT.items()]
    hashed = gold.select("user_id", *model_input(), *context, F.xxhash64("user_id", *FEATURES).alias("_features_hash"))
    scored = hashed.withColumn("churn_probability", predict(F.struct(*FEATURES))).select(
        "user_id",
        "churn_probability",
        (F.col("churn_probability") >= F.lit(threshold)).cast("int").alias("churn_prediction"),
        F.lit(model_name).alias("model_name"),
        F.lit(version).alias("model_version"),
        F.lit(scored_at).alias("scored_at"),
        "_features_hash",
        *(F.col(f"_context_{name}").alias(name) for name in CONTEXT),
    )
    engine.replace_table(scored, PREDICTION_TABLE)
    took = time.perf_counter() - t0
    rows, at_risk = (
        engine.table(PREDICTION_TABLE).agg(F.count("*"), F.count(F.when(F.col("churn_prediction") == 1, 1))).first()
    )
    return Scored(rows, at_risk, round(rows / took if took else 0.0, 1), "full", rows)
