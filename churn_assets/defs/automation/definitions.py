"""Cadence and monitoring: the cycle job, the hourly schedule, the landing and auto-cadence
sensors the operator switches between (``churn mode``), and the alert sensors."""

import dagster as dg

from churn_assets.defs.automation import triggers
from churn_assets.defs.automation.jobs import cycle_job
from churn_assets.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.load()
    job = cycle_job(settings)
    schedules, sensors = triggers.build(settings, job)
    return dg.Definitions(jobs=[job], schedules=schedules, sensors=sensors)
