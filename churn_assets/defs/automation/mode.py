"""Which cadence is on, kept in the Dagster instance (the same state the UI's toggles
show and change): exactly one of the hourly schedule, the landing sensor and the auto
cadence sensor runs."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported only where the instance is read: the UI path needs no Dagster import (fast)
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
    # Each command loads the code location (seconds); they touch different triggers, so they
    # run side by side: the switch takes one load, not two. Both may be on for a moment; the run
    # queue (one run at a time) and the triggers' "nothing queued or running" rule cover that.
    commands = switch_commands(on, mode, dagster)
    started = [subprocess.Popen(command, env=env, stdout=log, stderr=log) for command in commands]
    for command, process in zip(commands, started):
        if process.wait():
            raise subprocess.CalledProcessError(process.returncode, command)
    return current_modes(instance)


# --- through the running UI (`churn ui`): Dagster's public GraphQL API, sub-second ---------------

UI_FILE = "ui-url"  # in DAGSTER_HOME while `churn ui` serves that instance: where its webserver listens

_TRIGGERS = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name }
  schedules { name scheduleState { id status } } sensors { name sensorState { id status } } } } } }"""


def running_ui(dagster_home: Path) -> str | None:
    """The URL of the webserver `churn ui` runs on this instance, if it answers now; else None."""
    try:
        url = (dagster_home / UI_FILE).read_text().strip()
        with urllib.request.urlopen(f"{url}/server_info", timeout=2):
            return url
    except (OSError, ValueError):  # no file, nothing listening, a malformed URL
        return None


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"Dagster GraphQL: {answer['errors'][0].get('message')}")
    return answer["data"]


def ui_triggers(url: str) -> dict[str, dict]:
    """Trigger name -> {kind, on, id, location, repository}, as the webserver (and its daemon) see them."""
    found: dict[str, dict] = {}
    for repo in _graphql(url, _TRIGGERS)["repositoriesOrError"].get("nodes", []):
        where = {"location": repo["location"]["name"], "repository": repo["name"]}
        for kind, items, state in (("schedule", "schedules", "scheduleState"), ("sensor", "sensors", "sensorState")):
            for item in repo[items]:
                entry = {"kind": kind, "on": item[state]["status"] == "RUNNING", "id": item[state]["id"], **where}
                if item["name"] not in found or where["location"] == LOCATION:
                    found[item["name"]] = entry
    missing = [name for _, name in MODES.values() if name not in found]
    if missing:  # e.g. the webserver is still loading the code location
        raise LookupError(f"the UI does not list {', '.join(missing)}")
    return found


def ui_modes(url: str) -> list[str]:
    on = ui_triggers(url)
    return [mode for mode, (_, name) in MODES.items() if on[name]["on"]]


_START = {
    "sensor": "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename"
    " ... on PythonError { message } } }",
    "schedule": "mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) { __typename"
    " ... on PythonError { message } } }",
}
_STOP = {
    "sensor": "mutation($id: String!) { stopSensor(id: $id) { __typename ... on PythonError { message } } }",
    "schedule": "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename ... on PythonError { message } } }",
}


def _mutate(url: str, query: str, variables: dict) -> None:
    (result,) = _graphql(url, query, variables).values()
    if result["__typename"] in ("PythonError", "UnauthorizedError", "SensorNotFoundError", "ScheduleNotFoundError"):
        raise RuntimeError(f"Dagster GraphQL: {result.get('message') or result['__typename']}")


def set_mode_through_ui(url: str, mode: str) -> list[str]:
    """Switch as the UI's toggles do (stops first, then the start); the stored state changes at once."""
    if mode not in MODES:
        raise ValueError(f"mode is one of {', '.join(MODES)}")
    triggers = ui_triggers(url)
    for other, (_, name) in MODES.items():
        if other != mode and triggers[name]["on"]:
            _mutate(url, _STOP[triggers[name]["kind"]], {"id": triggers[name]["id"]})
    kind, name = MODES[mode]
    if not triggers[name]["on"]:
        where = {"repositoryLocationName": triggers[name]["location"], "repositoryName": triggers[name]["repository"]}
        _mutate(url, _START[kind], {"s": {**where, f"{kind}Name": name}})
    return ui_modes(url)
