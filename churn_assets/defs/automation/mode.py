"""Which cadence is on, kept in the Dagster instance (the same state the UI's toggles
show and change): exactly one of the hourly schedule, the landing sensor and the auto
cadence sensor runs."""

from __future__ import annotations

import subprocess

import dagster as dg

MODES = {
    "hourly": ("schedule", "churn_hourly"),
    "continuous": ("sensor", "churn_landing_sensor"),
    "auto": ("sensor", "churn_auto_cadence"),
}
DEFAULT_ON = "hourly"  # what a fresh instance runs (the definitions' default statuses)


LOCATION = "churn_assets.definitions"  # the code location `churn ui` (dg dev -m ...) serves


def _location(state) -> str | None:
    try:
        return state.origin.repository_origin.code_location_origin.location_name
    except AttributeError:
        return None


def running_from_states(states, defaults: dict[str, bool]) -> dict[str, bool]:
    """Trigger name -> on, from the instance's instigator states (this code location's),
    else the definition's default: what the daemon of `churn ui` goes by."""
    out = dict(defaults)
    for state in states:
        if state.instigator_name in out and _location(state) in (LOCATION, None):
            out[state.instigator_name] = state.is_running
    return out


def default_running() -> dict[str, bool]:
    """What a fresh instance runs; the definitions' default statuses say the same (a test
    checks), without importing them here: `churn mode` stays fast."""
    return {name: mode == DEFAULT_ON for mode, (_, name) in MODES.items()}


def current_modes(instance: dg.DagsterInstance) -> list[str]:
    # The stored states and the definitions' defaults: no code location to load (fast).
    on = running_from_states(instance.all_instigator_state(), default_running())
    return [mode for mode, (_, name) in MODES.items() if on.get(name)]


def switch_commands(on: dict[str, bool], mode: str, dagster: str) -> list[list[str]]:
    """Dagster CLI commands that leave exactly ``mode``'s trigger on: stops first, then the start."""
    if mode not in MODES:
        raise ValueError(f"mode is one of {', '.join(MODES)}")
    stops = [
        [dagster, kind, "stop", name, "-m", LOCATION]
        for other, (kind, name) in MODES.items()
        if other != mode and on.get(name)
    ]
    kind, name = MODES[mode]
    return stops + ([] if on.get(name) else [[dagster, kind, "start", name, "-m", LOCATION]])


def set_mode(instance: dg.DagsterInstance, mode: str, dagster: str, env: dict[str, str], log) -> list[str]:
    """Switch through Dagster's own CLI (``dagster schedule|sensor start|stop``, public): a
    trigger never toggled needs its origin, which only a loaded code location gives."""
    on = running_from_states(instance.all_instigator_state(), default_running())
    for command in switch_commands(on, mode, dagster):
        subprocess.run(command, env=env, check=True, stdout=log, stderr=log)
    return current_modes(instance)
