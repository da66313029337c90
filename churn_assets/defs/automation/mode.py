"""Which cadence is on: one word in ``$CHURN_HOME/cadence``, read by the three cadence triggers
at every tick. All three stay on in Dagster; the one the file names acts, the other two skip
with a reason that says how to switch. ``churn mode`` reads and writes that file, so it answers
in a fraction of a second with or without a running UI, and a daemon started any way (``churn
ui``, ``dg dev``, ``dagster-daemon run``) follows at its next tick.

The UI's toggles still work as Dagster's own on/off for each trigger: a trigger switched off
there does nothing whatever the cadence."""

from __future__ import annotations

from pathlib import Path

from churn_assets.files import write_atomic

MODES = {
    "hourly": ("schedule", "churn_hourly"),
    "continuous": ("sensor", "churn_landing_sensor"),
    "auto": ("sensor", "churn_auto_cadence"),
}
DEFAULT_MODE = "hourly"  # what a fresh home runs: efficient cycles


def read_mode(path: Path) -> str:
    """The cadence the file names; the default when there is no file. A file naming no mode
    (edited by hand) raises ValueError with what it says and the fix."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return DEFAULT_MODE
    if text not in MODES:
        raise ValueError(f"{path} says {text[:40]!r}, not a cadence: run `churn mode {' | '.join(MODES)}`")
    return text


def write_mode(path: Path, mode: str) -> None:
    """Set the cadence: written aside and renamed into place, so a tick reads the old word or the new."""
    if mode not in MODES:
        raise ValueError(f"mode is one of {', '.join(MODES)}")
    write_atomic(path, mode + "\n")


def gate(path: Path, mode: str) -> tuple[bool, str]:
    """(whether ``mode``'s trigger acts now, what to say about it). A file that names no
    cadence counts as the default (the hourly cycle keeps the data fresh) and every tick says so."""
    try:
        on, problem = read_mode(path), ""
    except (OSError, ValueError) as exc:
        on, problem = DEFAULT_MODE, f"{exc}; {DEFAULT_MODE} meanwhile"
    if on == mode:
        return True, problem
    return False, f"cadence is {on}{f' ({problem})' if problem else ''}: `churn mode {mode}` makes this trigger act"
