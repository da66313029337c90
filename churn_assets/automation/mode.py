"""Which cadence is on, kept in the Dagster instance (the same state the UI's toggles
show and change): exactly one of the hourly schedule, the landing sensor and the auto
cadence sensor runs."""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg

MODES = {
    "hourly": ("schedule", "churn_hourly"),
    "continuous": ("sensor", "churn_landing_sensor"),
    "auto": ("sensor", "churn_auto_cadence"),
}
DEFAULT_ON = "hourly"  # what a fresh instance runs (the definitions' default statuses)


LOCATION = "churn_assets.definitions"  # the code location `churn ui` (dg dev -m ...) serves


@contextmanager
def remote_repository(instance: dg.DagsterInstance):
    # Starting an instigator that has no state yet needs its remote origin, which only a
    # loaded code location gives (`dagster sensor start` loads it this way; a code server
    # for a few seconds). Reading the state does not (see current_modes).
    from dagster._cli.workspace.cli_target import WorkspaceOpts, get_repository_from_cli_opts
    from dagster.version import __version__

    with get_repository_from_cli_opts(
        instance, __version__, WorkspaceOpts(module_name=[LOCATION]), None
    ) as repo:
        yield repo


def _running(instance: dg.DagsterInstance, repo, kind: str, name: str) -> bool:
    remote = repo.get_schedule(name) if kind == "schedule" else repo.get_sensor(name)
    state = instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
    if state is None:  # never toggled: the definition's default
        return remote.default_status.value == "RUNNING"
    return state.is_running


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


def set_mode(instance: dg.DagsterInstance, mode: str) -> list[str]:
    if mode not in MODES:
        raise ValueError(f"mode is one of {', '.join(MODES)}")
    with remote_repository(instance) as repo:
        # Stop the others first: never two triggers at once.
        for other, (kind, name) in MODES.items():
            if other != mode and _running(instance, repo, kind, name):
                remote = repo.get_schedule(name) if kind == "schedule" else repo.get_sensor(name)
                if kind == "schedule":
                    instance.stop_schedule(remote.get_remote_origin_id(), remote.selector_id, remote)
                else:
                    instance.stop_sensor(remote.get_remote_origin_id(), remote.selector_id, remote)
        kind, name = MODES[mode]
        if not _running(instance, repo, kind, name):
            remote = repo.get_schedule(name) if kind == "schedule" else repo.get_sensor(name)
            instance.start_schedule(remote) if kind == "schedule" else instance.start_sensor(remote)
        return [m for m, (k, n) in MODES.items() if _running(instance, repo, k, n)]
