"""The README's UI command, opened in a real browser.

`churn ui` starts the real webserver and daemon on 127.0.0.1 with DAGSTER_HOME inside the
data folder; headless Chromium (Debian's) opens the global asset graph and the automation
page and reads what a person would see there. With CHURN_UPDATE_SCREENSHOTS=1 the graph's
screenshot replaces docs/asset-graph.png, the picture in the README. Started without a
terminal, `churn ui` stops whole (webserver, daemon, code servers) on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import pytest

from churn_assets.cli import descendants
from churn_assets.definitions import defs as load_defs
from churn_assets_tests.browser import launch
from churn_assets_tests.helpers import CHURN, VENV_BIN, alive, clean_env
from churn_assets_tests.live import REPO, free_port, stop, wait_until_serving

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

defs = load_defs()

GROUPS = {"bronze", "silver", "gold", "ml", "dashboard", "campaigns"}
# The README's link to Lineage with every group open (no setting does it; the page's address can).
LINEAGE_LINK = re.compile(r"<http://127\.0\.0\.1:3000(/asset-groups\?expanded=[^>]+)>")


def expected_graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for spec in defs.resolve_all_asset_specs():
        out[spec.group_name].add(spec.key.path[-1])
    return dict(out)


def label_matches(label: str, name: str) -> bool:
    """A node shows its name, or at small zoom the name cut in the middle ("churn_orde…_bronze")."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["data"]


@pytest.fixture(scope="module")
def ui(project):
    """`churn ui` on the demo project (conftest.py: one cycle already run, so the graph shows
    materialized assets as a user sees them), as a service manager starts it: no terminal
    (stdin from /dev/null, output to a file), a session of its own. The last test stops it."""
    home = project / "data"
    env = clean_env(CHURN_HOME=str(home))
    port = free_port()
    log = open(home / "ui.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "churn"), "ui", "--port", str(port)],
        env=env,
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_serving(port, proc, home / "ui.log")
        yield home, port, env, proc
    finally:
        stop(proc)
        log.close()


def test_ui_runs_webserver_and_daemon_on_the_persistent_instance(ui):
    home, port, _, _ = ui
    assert (home / "dagster_home" / "dagster.yaml").exists()
    # The run made by `churn demo` is in the instance the UI serves: it is persistent.
    runs = graphql(port, "{ runsOrError { ... on Runs { results { jobName status } } } }")["runsOrError"]["results"]
    assert {"jobName": "churn_cycle", "status": "SUCCESS"} in runs

    def required_daemons() -> dict[str, bool]:
        s = graphql(port, "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
        return {
            d["daemonType"]: d["healthy"] for d in s["instance"]["daemonHealth"]["allDaemonStatuses"] if d["required"]
        }

    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(required_daemons())
    deadline = time.time() + 60
    while not all(required_daemons().values()):
        assert time.time() < deadline, "the daemon never reported healthy"
        time.sleep(2)


def test_asset_graph_shows_every_group_with_its_assets(ui, tmp_path):
    from playwright.sync_api import sync_playwright

    _, port, _, _ = ui
    expected = expected_graph()
    assert set(expected) == GROUPS
    (path,) = LINEAGE_LINK.findall((REPO / "README.md").read_text())
    assert {g.removeprefix("global@global:") for g in path.split("=", 1)[1].split(",")} == GROUPS
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 900}, device_scale_factor=2)
        # The layout and the navigation are kept in local storage: top-down, folded (as the
        # README's picture shows). The groups open from the README's link; no newsletter prompt
        # is marked as seen: the instance settings turn it off.
        page.add_init_script("""
            localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'));
            localStorage.setItem('dagster-nav-collapsed', 'true');""")
        page.goto(f"http://127.0.0.1:{port}{path}")
        page.wait_for_function("() => document.querySelectorAll('foreignObject.group').length >= 6", timeout=60_000)
        page.locator("input[placeholder^='Jump to']").locator("xpath=following::button[1]").click()
        viewport = page.locator("[data-svg-viewport='1']")
        box = viewport.bounding_box()
        viewport.dblclick(position={"x": 10, "y": box["height"] - 10})  # zoom to fit
        page.wait_for_timeout(1500)
        assert page.get_by_text("Join the Dagster community").count() == 0
        drawn = page.evaluate("""() => {
            const rect = fo => ['x', 'y', 'width', 'height'].map(a => +fo.getAttribute(a));
            const groups = [...document.querySelectorAll('foreignObject.group')].map(fo => ({
                name: fo.querySelector('[data-tooltip]')?.getAttribute('data-tooltip'), rect: rect(fo)}));
            const nodes = [...document.querySelectorAll('foreignObject')]
                .filter(fo => fo.querySelector('[class*="AssetNode_assetName"]'))
                .map(fo => ({label: fo.querySelector('[class*="AssetNode_assetName"]').textContent.trim(),\
 rect: rect(fo)}));
            return {groups, nodes};
        }""")
        shot = tmp_path / "asset-graph.png"
        page.screenshot(path=str(shot))
        browser.close()

    def inside(inner, outer):
        x, y, w, h = inner
        gx, gy, gw, gh = outer
        return gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh

    shown: dict[str, list[str]] = defaultdict(list)
    for node in drawn["nodes"]:
        (group,) = [g["name"] for g in drawn["groups"] if inside(node["rect"], g["rect"])]
        shown[group].append(node["label"])
    assert set(shown) == GROUPS
    for group, names in expected.items():
        labels = shown[group]
        assert len(labels) == len(names), (group, labels)
        for name in names:
            assert any(label_matches(label, name) for label in labels), (group, name, labels)
    assert shot.stat().st_size > 50_000
    if os.environ.get("CHURN_UPDATE_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "asset-graph.png")


def automation_states(port: int) -> dict[str, bool]:
    """Name -> the on/off switch of its row, as the Automation page shows it."""
    from playwright.sync_api import sync_playwright

    names = [s.name for s in defs.schedules] + [s.name for s in defs.sensors]
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/automation")
        # Loaded: a "select all" box, then per row a selection box and an enabled switch
        # (the switches are disabled while their state loads).
        page.wait_for_function(
            """n => { const boxes = [...document.querySelectorAll('input[type=checkbox]')];
                      return boxes.length === 1 + 2 * n && boxes.every(b => !b.disabled); }""",
            arg=len(names),
            timeout=60_000,
        )
        states = page.evaluate(
            """names => Object.fromEntries(names.map(name => {
            let row = [...document.querySelectorAll('*')].find(e => e.children.length === 0 &&\
 e.textContent.trim() === name);
            // A row holds two checkboxes: the row's selection, then the on/off switch.
            while (row && row.querySelectorAll('input[type=checkbox]').length < 2) row = row.parentElement;
            return [name, row.querySelectorAll('input[type=checkbox]')[1].checked];
        }))""",
            names,
        )
        browser.close()
    return states


def test_schedule_and_sensors_are_listed_with_their_state(ui):
    home, port, env, _ = ui
    everything_on = {
        "churn_hourly": True,
        "churn_landing_sensor": True,
        "churn_auto_cadence": True,
        "churn_failure_alerts": True,
        "churn_duration_alerts": True,
        "churn_refresh_sensor": True,
    }
    assert automation_states(port) == everything_on
    # The operator switches cadence from the shell: one word in the cadence file, which the
    # three cadence triggers read at each tick. No Dagster import, no code location loaded.
    switched = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from churn_assets.cli import main; main(['mode', 'continuous']); "
            "print('dagster' in sys.modules)",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert switched.stdout.startswith("cadence: continuous (switched") and switched.stdout.endswith("\nFalse\n")
    assert switched.stderr == ""
    assert (home / "cadence").read_text() == "continuous\n"
    # Dagster's own switches are untouched: each trigger is on, the file says which one acts.
    assert automation_states(port) == everything_on
    subprocess.run([*CHURN, "mode", "hourly"], env=env, cwd=REPO, check=True)


# Last in the file: it stops the module's `churn ui`.
def test_churn_ui_without_a_terminal_stops_whole_on_sigterm(ui):
    _, port, _, proc = ui
    try:
        # The UI would open on the newsletter prompt if the instance did not turn it off.
        assert graphql(port, "{ shouldShowNux }") == {"shouldShowNux": False}
        # the daemon and the code servers are up too
        deadline = time.time() + 60
        while len(descendants(proc.pid)) < 4 and time.time() < deadline:
            time.sleep(1)
        family = descendants(proc.pid) | {proc.pid}
        assert len(family) >= 4, family
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)  # to `churn` alone, as `kill PID` or systemd's stop does
        while alive(family) and time.time() - t0 < 10:
            time.sleep(0.2)
        took = time.time() - t0
        assert not alive(family), f"still alive 10 s after SIGTERM: {alive(family)}"
        print(f"churn ui: {len(family)} processes stopped {took:.1f}s after SIGTERM")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
