"""The Dagster code location: the ``defs/`` folder (one folder per domain, each bringing
its own assets, checks and resources), plus what every domain shares: the warehouse, the
landing zone, the pipeline settings, alerts, and the executor."""

from pathlib import Path

import dagster as dg

from churn_assets.resources import shared_resources
from churn_assets.settings import Settings


def executor(settings: Settings) -> dg.ExecutorDefinition:
    """In-process by default: one DuckDB file, one writer, so the steps of a run share one
    process and never contend for the file lock (and start without a subprocess each).

    ``CHURN_EXECUTOR=multiprocess`` runs each step in its own process (isolation: a step
    that crashes or leaks memory takes only itself down), one at a time, because every
    step opens the single-writer DuckDB file. Steps can only run side by side once the
    warehouse is a server that takes concurrent writers (see the README).
    """
    if settings.executor == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": 1}, name="churn_multiprocess")
    return dg.in_process_executor


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.load()
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=shared_resources(settings), executor=executor(settings)),
    )
