"""A new user's first steps, as they run them: the `churn` command in a subprocess.

Every settings mistake is refused before anything runs, with one line on stderr that names
the problem and the fix, no traceback and nothing written; the README's shell examples, read
from the README itself, run after a demo-like setup (the `project` fixture, conftest.py) and
leave no negative day count in gold. `churn ui` on that project: test_ui.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from churn_assets.settings import Settings
from churn_assets_tests.helpers import CHURN, VENV_BIN, clean_env
from churn_assets_tests.live import REPO


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``path`` with its size and mtime: what 'nothing written' compares."""
    if not path.exists():
        return {}
    out = {}
    for p in [path, *path.rglob("*")]:
        st = p.stat()
        out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def refused(args: list[str], env: dict, watch: Path, *, prefix: tuple[str, ...] = ()) -> str:
    """Runs ``churn args``; asserts it was refused in one line with nothing written; the line."""
    before = tree(watch)
    out = subprocess.run([*prefix, *CHURN, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert tree(watch) == before, "the refused command wrote to " + str(watch)
    return lines[0]


@pytest.mark.slow
def test_missing_home_is_reported_not_created(tmp_path):
    home = tmp_path / "nope"
    line = refused(["run"], clean_env(CHURN_HOME=str(home)), tmp_path)
    assert line == (
        f"churn: CHURN_HOME {home} does not exist: run `churn generate` (or scripts/demo) to create data "
        "there, or point CHURN_HOME at your data"
    )
    assert not home.exists()
    # `churn mode` from another folder neither creates ./data there.
    out = subprocess.run([*CHURN, "mode"], env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr and not (tmp_path / "data").exists()


@pytest.mark.slow
def test_home_without_landing_files(tmp_path):
    (tmp_path / "landing" / "users").mkdir(parents=True)
    line = refused(["run"], clean_env(CHURN_HOME=str(tmp_path)), tmp_path)
    assert line == (
        f"churn: no landing files in {tmp_path / 'landing'}: run `churn generate` or point CHURN_HOME at your data"
    )


@pytest.mark.slow
def test_read_only_home(small_home, tmp_path):
    home = tmp_path / "ro"
    shutil.copytree(small_home / "landing", home / "landing")
    if os.geteuid() == 0:
        # root writes through permissions: the home is a read-only mount instead (a private
        # mount namespace, as a read-only volume or media)
        prefix = (
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"',
            str(home),
        )
        cause = "read-only file system"
    else:
        home.chmod(0o555)
        prefix, cause = (), "permission denied: no write access to the folder"
    try:
        line = refused(["run"], clean_env(CHURN_HOME=str(home)), tmp_path, prefix=prefix)
    finally:
        home.chmod(0o755)
    assert line == (
        f"churn: CHURN_HOME {home} is not writable: {home}: {cause}; make it writable or point "
        "CHURN_HOME at a copy you can write"
    )


@pytest.mark.slow
def test_invalid_as_of(small_home):
    line = refused(["run"], clean_env(CHURN_HOME=str(small_home), CHURN_AS_OF="2023-13-45"), small_home)
    assert line.startswith("churn: CHURN_AS_OF='2023-13-45' is not an ISO date or date-time")
    assert not (small_home / "warehouse.duckdb").exists()


@pytest.mark.slow
def test_unknown_setting_value(small_home):
    line = refused(["run"], clean_env(CHURN_HOME=str(small_home), CHURN_EXECUTOR="foo"), small_home)
    assert line == "churn: CHURN_EXECUTOR='foo' is not a known value: use in_process or multiprocess, or unset it"
    line = refused(["run"], clean_env(CHURN_HOME=str(small_home), CHURN_SETTLE_SECONDS="soon"), small_home)
    assert line.startswith("churn: CHURN_SETTLE_SECONDS='soon' is not a number")


@pytest.mark.slow
def test_debug_shows_the_traceback(small_home):
    out = subprocess.run(
        [*CHURN, "run", "--debug"],
        env=clean_env(CHURN_HOME=str(small_home), CHURN_EXECUTOR="foo"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "PreflightError" in out.stderr


@pytest.mark.slow
def test_as_of_earlier_than_the_data_is_refused(project):
    home = project / "data"
    env = clean_env(CHURN_HOME=str(home), CHURN_AS_OF="2023-06-10")
    line = refused(["run", "--select", "*gold/churn_features"], env, home)
    assert line.startswith("churn: CHURN_AS_OF=2023-06-10 is earlier than the data in ")
    assert "day counts would be negative" in line and "a CHURN_HOME of its own" in line


@pytest.mark.slow
def test_a_run_started_by_dagster_meets_the_same_check(project, tmp_path):
    """`dg launch` (no `churn` in front): the first step fails with the same line, nothing ingested."""
    home = tmp_path / "empty"
    (home / "landing" / "users").mkdir(parents=True)
    (home / "dagster_home").mkdir()
    env = clean_env(CHURN_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"))
    out = subprocess.run(
        [str(VENV_BIN / "dg"), "launch", "--assets", "bronze/churn_users_bronze"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert f"no landing files in {home / 'landing'}: run `churn generate` or point CHURN_HOME at your data" in (
        out.stdout + out.stderr
    )
    assert not (home / "warehouse.duckdb").exists()


def readme_shell_examples(readme: Path) -> list[str]:
    """The README's ```bash blocks, minus the two top commands (install, long) and the servers
    (`churn ui`, `mlflow ui`: the UI test runs them)."""
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    out = []
    for block in blocks:
        lines = [
            ln
            for ln in block.splitlines()
            if not re.match(r"\s*(scripts/(demo|test)|\S*churn ui|\S*mlflow ui|\. \.venv/bin/activate)\b", ln)
        ]
        if any(ln.strip() and not ln.strip().startswith("#") for ln in lines):
            out.append("\n".join(lines))
    return out


@pytest.mark.slow
def test_readme_examples_run_after_the_demo_and_keep_day_counts_non_negative(project):
    blocks = readme_shell_examples(REPO / "README.md")
    assert len(blocks) >= 3 and any("dg launch" in b for b in blocks) and any("CHURN_AS_OF=" in b for b in blocks)
    # As the README says: activated venv (PATH), in the project folder. Reference-scale
    # customer counts are cut to keep the test short: 500 customers still give every table rows
    # and the model both classes (a cycle's time is mostly fixed costs; 2,000 took 2-3 s more).
    env = clean_env(
        PATH=f"{project / '.venv' / 'bin'}:{os.environ['PATH']}",
        VIRTUAL_ENV=str(project / ".venv"),
        CHURN_SETTLE_SECONDS="0",
    )
    for block in blocks:
        script = re.sub(r"--customers \d+", "--customers 500", block)
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, f"README example failed:\n{script}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        for noise in ("Warning", "Traceback", "dagster.code_server"):
            assert noise not in out.stdout + out.stderr, f"{noise} printed by:\n{script}\n{out.stderr[-3000:]}"
    homes = {p.parent for p in project.glob("*/warehouse.duckdb")}
    assert project / "data" in homes
    for home in homes:
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        try:
            low = con.execute(
                "SELECT least(min(days_since_creation), min(days_since_last_activity), "
                "min(days_last_event)), count(*) FROM gold.churn_features"
            ).fetchall()[0]
        finally:
            con.close()
        assert low[1] > 0 and low[0] >= 0, (home, low)


def test_cadence_file_reads_the_default_writes_in_place_and_refuses_garbage(tmp_path):
    from churn_assets.defs.automation.mode import DEFAULT_MODE, MODES, read_mode, write_mode
    from churn_assets_tests.helpers import trigger

    path = tmp_path / "cadence"
    assert read_mode(path) == DEFAULT_MODE == "hourly"
    write_mode(path, "auto")
    assert read_mode(path) == "auto" and [p.name for p in tmp_path.iterdir()] == ["cadence"]  # nothing left aside
    with pytest.raises(ValueError, match="mode is one of hourly, continuous, auto"):
        write_mode(path, "weekly")
    path.write_text("weekly\n")
    with pytest.raises(ValueError, match="says 'weekly', not a cadence: run `churn mode hourly | continuous | auto`"):
        read_mode(path)
    # Every cadence trigger is on in Dagster: the file alone says which one acts.
    assert {trigger(name).default_status.value for _, name in MODES.values()} == {"RUNNING"}


@pytest.mark.slow
def test_churn_mode_answers_fast_and_quietly(project):
    env = clean_env(CHURN_HOME=str(project / "data"))

    def churn_mode(*args: str) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        out = subprocess.run(
            [str(VENV_BIN / "churn"), "mode", *args], env=env, cwd=project, capture_output=True, text=True, timeout=60
        )
        print(f"churn mode {' '.join(args)}: {time.perf_counter() - t0:.2f}s")
        assert out.returncode == 0 and out.stderr == "" and len(out.stdout.splitlines()) == 1, out
        return out

    assert churn_mode().stdout == "cadence: hourly\n"
    assert churn_mode("continuous").stdout.startswith("cadence: continuous (switched;")
    assert churn_mode().stdout == "cadence: continuous\n"
    assert (project / "data" / "cadence").read_text() == "continuous\n"
    # Why it is fast: neither reading nor switching imports Dagster or loads the code location.
    probe = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import sys; from churn_assets.cli import main; main(['mode', 'hourly']); main(['mode']); "
            "print('dagster' in sys.modules)",
        ],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.splitlines()[1:] == ["cadence: hourly", "False"], probe
    (project / "data" / "cadence").write_text("weekly\n")
    bad = subprocess.run(
        [str(VENV_BIN / "churn"), "mode"], env=env, cwd=project, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.startswith("churn: ") and "not a cadence" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    churn_mode("hourly")


def test_summary_names_quarantined_files_with_their_reason_and_stray_files(tmp_path):
    from churn_assets.summary import cycle_summary
    from churn_assets.warehouse import connect, ensure_schema

    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(con)
    manifest = (
        "INSERT INTO bronze.ingest_manifest (file_id, source, path, size_bytes, mtime, content_hash, records, "
        "rows_loaded, rows_rescued, rows_quarantined, status, detail, run_id, ingested_at, version, "
        "offset_start) VALUES (?, ?, ?, 1, NULL, 'h', ?, ?, 0, ?, ?, ?, ?, NULL, 1, 0)"
    )
    con.execute(manifest, [1, "users", "/l/users/a.json", 3, 3, 0, "loaded", None, "r1"])
    con.execute(manifest, [2, "users", "/l/users/b.json", 4, 1, 3, "loaded", None, "r1"])
    con.execute(manifest, [3, "events", "/l/events/c.csv", 2, 0, 2, "quarantined", "not UTF-8", "r2"])
    con.execute(
        manifest, [4, "users", "/l/users/d.json", 3, 0, 0, "duplicate", "same content as /l/users/a.json", "r2"]
    )
    quarantine = "INSERT INTO bronze.quarantine VALUES (?, ?, ?, ?, 'x', ?, ?, NULL)"
    for row, reason in [(1, "not JSON"), (2, "not JSON"), (3, "not a JSON object")]:
        con.execute(quarantine, ["users", 2, "/l/users/b.json", row, reason, "r1"])
    for row in (1, 2):
        con.execute(quarantine, ["events", 3, "/l/events/c.csv", row, "not UTF-8", "r2"])
    con.close()
    (tmp_path / "landing" / "users").mkdir(parents=True)
    (tmp_path / "landing" / "stray.json").write_text("{}\n")
    # Inside a source folder: named when not a data file, silent for a writer's temporary.
    for name in ("users/export.txt", "users/dt=2026-11-24/part.json.1", "users/.b.json.tmp", "users/x.json.part"):
        (tmp_path / "landing" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "landing" / name).write_text("{}\n")

    text = cycle_summary(Settings(home=tmp_path))
    assert "  files   duplicate 1, loaded 2, quarantined 1" in text
    assert (
        "ignored    2 files not named as data files (users, orders: .json .jsonl .ndjson (+.gz); events: .csv (+.gz)): "
        "landing/users/dt=2026-11-24/part.json.1, landing/users/export.txt"
    ) in text
    assert "    /l/users/b.json: 2 × not JSON; 1 × not a JSON object" in text
    assert "    /l/events/c.csv: 2 × not UTF-8" in text
    assert "    /l/users/d.json: duplicate: same content as /l/users/a.json" in text
    assert "/l/users/a.json:" not in text
    assert "ignored    1 files outside landing/{users,orders,events}/: landing/stray.json" in text
    # The run summary: only what that run ingested.
    run = cycle_summary(Settings(home=tmp_path), run_id="r1")
    assert "/l/users/b.json: 2 × not JSON" in run and "c.csv" not in run and "d.json" not in run


def test_every_option_has_help_and_no_raw_markup():
    import argparse

    from churn_assets.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in [("churn", parser), *sub.choices.items()]:
        text = command.format_help()
        assert "`" not in text, (name, text)
        for action in command._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"churn {name}: {action.option_strings or action.dest} has no help"


def test_preflight_rules(tmp_path, monkeypatch):
    from churn_assets import preflight
    from churn_assets.warehouse import connect, ensure_schema

    assert (
        preflight.setting_problems(
            {
                "CHURN_DUCKDB_MEMORY_LIMIT": "3GB",
                "CHURN_EXECUTOR": "multiprocess",
                "CHURN_AS_OF": "2026-11-01T06:00:00Z",
                "CHURN_BATCH_BYTES": "1000",
            }
        )
        == []
    )
    assert sorted(
        preflight.setting_problems(
            {"CHURN_DUCKDB_MEMORY_LIMIT": "lots", "CHURN_BATCH_BYTES": "1.5", "CHURN_CAMPAIGN_BUDGET_USD": "-1"}
        )
    ) == [
        "CHURN_BATCH_BYTES='1.5' is not a whole number: set a whole number (see the README's settings), or unset it",
        "CHURN_CAMPAIGN_BUDGET_USD='-1' is negative: set a value >= 0, or unset it",
        "CHURN_DUCKDB_MEMORY_LIMIT='lots' is not a memory size: use e.g. 3GB or 512MB, or unset it",
    ]
    # A home that does not exist yet may be created by `churn generate`, where its parent is writable.
    assert preflight.problems({"CHURN_HOME": str(tmp_path / "new")}, home_must_exist=False) == []
    # An as-of is compared with the newest date in gold: on that day it is fine, a day before it is not.
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schema(con)
    con.execute(
        "CREATE TABLE gold.churn_features AS SELECT TIMESTAMP '2026-10-30 10:00' AS creation_date, "
        "TIMESTAMP '2026-10-31 23:00' AS last_activity_date, TIMESTAMP '2026-10-29 08:00' AS last_event"
    )
    con.close()
    assert preflight.as_of_problems(tmp_path, "2026-10-31") == []
    assert preflight.as_of_problems(tmp_path, "now") == []
    [line] = preflight.as_of_problems(tmp_path, "2026-10-30T23:59:00")
    assert "newest date 2026-10-31" in line and "use an as-of on or after 2026-10-31" in line
    # Asked again (a run asks up to three times), the answer is kept while the warehouse is as it
    # was, and read again once it changed.
    opened = []
    read = preflight._read_newest
    monkeypatch.setattr(preflight, "_read_newest", lambda path: opened.append(1) or read(path))
    assert preflight.newest_data_date(tmp_path) == date(2026, 10, 31)
    assert opened == []
    con = connect(tmp_path / "warehouse.duckdb")
    con.execute("UPDATE gold.churn_features SET last_activity_date = TIMESTAMP '2026-11-03 01:00'")
    con.close()
    assert preflight.newest_data_date(tmp_path) == date(2026, 11, 3) and opened == [1]
    assert preflight.newest_data_date(tmp_path) == date(2026, 11, 3) and opened == [1]
    # With a warehouse, an empty landing folder is no longer an error (files may be archived).
    assert preflight.problems({}, home=tmp_path, needs_landing=True) == []
