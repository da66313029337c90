"""The tags the project's triggers put on runs: one spelling for the triggers that set them
(defs/automation) and the code that reads them (the model domain's warm scorer, the latency
benchmark). Tests mostly spell the values out: stored runs are filtered on them, so a change
of spelling must show there."""

from __future__ import annotations

from collections.abc import Mapping

TRIGGER = "churn/trigger"  # what started the run: one of the values below
FILES = "churn/files"  # a run for new files: how many
SKIPPED = "churn/skipped"  # ... which steps were not due (comma-separated, or "none")
NEWEST_FILE_MTIME = "churn/newest_file_mtime"  # ... the newest file's mtime (the latency benchmark's clock)

HOURLY = "hourly"
LANDING_SENSOR = "landing_sensor"
AUTO_HOURLY = "auto_hourly"
AUTO_CONTINUOUS = "auto_continuous"
AUTOMATION_CONDITION = "automation_condition"

# Runs started for files as they land: continuous mode, and the auto cadence in its continuous phase.
CONTINUOUS_TRIGGERS = frozenset({LANDING_SENSOR, AUTO_CONTINUOUS})


def is_continuous(tags: Mapping[str, str]) -> bool:
    """Whether a run with these tags was started for files as they landed."""
    return tags.get(TRIGGER) in CONTINUOUS_TRIGGERS
