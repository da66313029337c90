"""The dashboards: every figure a table, every number on the page equal to SQL on the
tables, and the page drawn in a real headless browser with no network."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest

from churn_assets.defs.dashboards.assets import FIGURES
from churn_assets.generator import generate_history
from churn_assets_tests.browser import launch
from churn_assets_tests.helpers import REPO, materialize, one, query

pytestmark = pytest.mark.slow  # a whole cycle, a subprocess or a server per test

AS_OF = "2026-11-01T06:00:00"


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    home = tmp_path_factory.mktemp("dash")
    generate_history(home, customers=8_000, seed=17, end=date(2026, 11, 1), dirty_rate=0.005, progress=False)
    result = materialize(home, as_of=AS_OF)
    assert result.success
    return home, result


class PageParser(HTMLParser):
    """KPI tiles, tables (cell text) and the embedded JSON blocks of the page."""

    def __init__(self):
        super().__init__()
        self.kpis, self.tables, self.json, self._table, self._cell, self._script = {}, {}, {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-kpi" in a:
            self.kpis[a["data-kpi"]] = float(a["data-value"])
        if tag == "table":
            self._table = a.get("data-figure")
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag == "td" and self._table:
            self._cell = ""
        if tag == "script" and a.get("type") == "application/json":
            self._script = a["id"]
            self.json[self._script] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag == "td" and self._table is not None:
            self.tables[self._table][-1].append(self._cell)
            self._cell = None
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._script:
            self.json[self._script] += data


def parse(home: Path) -> PageParser:
    p = PageParser()
    p.feed((home / "dashboard" / "index.html").read_text())
    return p


def sql_rows(home, name):
    con_rows = query(home, f"SELECT * FROM dashboard.{name}")
    cols = [
        r[0]
        for r in query(
            home,
            f"SELECT column_name FROM information_schema.columns "
            f"WHERE table_schema='dashboard' AND table_name='{name}' ORDER BY ordinal_position",
        )
    ]
    from churn_assets.defs.dashboards.page import records

    return records([dict(zip(cols, r)) for r in con_rows])


def test_every_figure_is_a_table_downstream_of_what_it_reads(cycle):
    home, result = cycle
    tables = {
        r[0] for r in query(home, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dashboard'")
    }
    assert set(FIGURES) <= tables
    kpis = dict(query(home, "SELECT name, value FROM dashboard.kpis"))
    assert {"customers_churned", "revenue_latest_month", "customers_at_risk", "revenue_at_risk"} <= set(kpis)
    assert query(home, "SELECT DISTINCT as_of FROM dashboard.kpis")[0][0].isoformat() == AS_OF
    from churn_assets.definitions import defs as load_defs

    defs = load_defs()

    graph = defs.resolve_asset_graph()

    def parents(k):
        return {p.to_user_string() for p in graph.get(__import__("dagster").AssetKey(k.split("/"))).parent_keys}

    assert parents("dashboard/revenue_by_month") == {"silver/churn_orders"}
    assert parents("dashboard/kpis") == {"silver/churn_users", "silver/churn_orders", "gold/churn_prediction"}
    assert parents("dashboard/predicted_churn_by_country") == {"gold/churn_prediction", "gold/churn_features"}
    assert {f"dashboard/{f}" for f in FIGURES} == parents("dashboard/page")


def test_kpis_equal_sql_on_the_base_tables(cycle):
    home, _ = cycle
    kpis = dict(query(home, "SELECT name, value FROM dashboard.kpis"))
    assert kpis["customers_churned"] == one(home, "SELECT count(*) FROM silver.churn_users WHERE churn = 1")
    latest = one(home, "SELECT max(date_trunc('month', creation_date)) FROM silver.churn_orders")
    assert kpis["revenue_latest_month"] == one(
        home, "SELECT sum(amount) FROM silver.churn_orders WHERE date_trunc('month', creation_date) = ?", [latest]
    )
    assert kpis["customers_at_risk"] == one(
        home, "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1"
    )
    assert kpis["revenue_at_risk"] == one(
        home,
        """SELECT sum(o.amount) FROM silver.churn_orders o
        WHERE date_trunc('month', o.creation_date) = ?
          AND o.user_id IN (SELECT user_id FROM gold.churn_prediction WHERE churn_prediction = 1)""",
        [latest],
    )
    assert 0 < kpis["revenue_at_risk"] < kpis["revenue_latest_month"]


def test_every_number_on_the_page_equals_sql(cycle):
    home, _ = cycle
    page = parse(home)
    figures = json.loads(page.json["figures"])
    specs = json.loads(page.json["specs"])
    for name in FIGURES:
        assert figures[name] == sql_rows(home, name), name
    # What each chart draws is exactly that data (a run not ended yet: as running, without a duration).
    from churn_assets.defs.dashboards.page import runs_for_page

    for name, spec in specs.items():
        expected = runs_for_page(figures[name]) if name == "pipeline_runs" else figures[name]
        assert spec["data"]["values"] == expected, name
    # The KPI tiles.
    for name, value in dict(query(home, "SELECT name, value FROM dashboard.kpis")).items():
        assert page.kpis[name] == pytest.approx(value), name
    # The tables as a person reads them.
    at_risk = sql_rows(home, "at_risk_customers")
    shown = page.tables["at_risk_customers"][1:]
    assert len(shown) == len(at_risk) == 100
    assert [r[0] for r in shown] == [r["user_id"] for r in at_risk]
    assert [float(r[4]) for r in shown] == [r["churn_probability"] for r in at_risk]
    probabilities = [r["churn_probability"] for r in at_risk]
    assert probabilities == sorted(probabilities, reverse=True)
    dq = page.tables["data_quality_daily"][1:]
    assert [(r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in dq] == [
        (r["table_name"], r["expectation"], r["passed"], r["failed"], r["dropped"])
        for r in sql_rows(home, "data_quality_daily")
    ]
    # Bad records were landed on purpose: the data-quality figures show them.
    assert sum(r["rows_rescued"] + r["rows_quarantined"] for r in figures["ingestion_daily"]) > 0
    model = one(home, "SELECT DISTINCT model_version FROM gold.churn_prediction")
    html = (home / "dashboard" / "index.html").read_text()
    assert f"churn_model v{model}" in html and "2026-11-01 06:00:00" in html


def test_page_is_self_contained(cycle):
    home, result = cycle
    html = (home / "dashboard" / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", html)
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    page_meta = meta["dashboard/page"]
    assert page_meta["path"].value == str(home / "dashboard" / "index.html")
    for chart in ("revenue_by_month", "churn_by_platform", "predicted_churn_by_country", "data_quality_daily"):
        assert page_meta[f"chart_{chart}"].value.startswith(f"![{chart}](data:image/png;base64,iVBOR")


def test_page_in_headless_chromium(cycle, tmp_path):
    from playwright.sync_api import sync_playwright

    home, _ = cycle
    # Opened where no database is: a copy of the page alone.
    page_file = tmp_path / "index.html"
    shutil.copy(home / "dashboard" / "index.html", page_file)
    requests, errors = [], []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.evaluate("window.chartsRendered.then(results => results.length)")
        charts = page.eval_on_selector_all(
            "div.chart",
            "els => els.map(e => [e.dataset.figure, "
            "e.querySelectorAll('svg.marks .role-mark path, svg.marks .role-mark line').length])",
        )
        # Nothing cut: no label shortened with an ellipsis, no chart wider than its column.
        texts = page.eval_on_selector_all("div.chart svg text", "els => els.map(e => e.textContent)")
        overflow = page.eval_on_selector_all(
            "div.chart",
            """els => els.filter(
            e => e.querySelector('svg').getBoundingClientRect().width > e.getBoundingClientRect().width + 1)
            .map(e => e.dataset.figure)""",
        )
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(charts) == 10
    assert [t for t in texts if "…" in t] == [] and overflow == []
    assert all(marks > 0 for _, marks in charts), charts
    assert errors == []
    assert requests == [page_file.as_uri()]  # the page itself, nothing else
    assert shot.stat().st_size > 100_000
    if os.environ.get("CHURN_UPDATE_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "dashboard.png")


def test_a_run_not_ended_is_shown_running_without_a_duration():
    from churn_assets.defs.dashboards.page import chart_specs, runs_for_page

    rows = [
        {
            "run_id": "done",
            "job_name": "churn_cycle",
            "status": "SUCCESS",
            "started_at": "2026-11-01T05:00:00",
            "ended_at": "2026-11-01T05:00:32",
            "duration_seconds": 32.0,
        },
        {
            "run_id": "now",
            "job_name": "churn_cycle",
            "status": "STARTED",
            "started_at": "2026-11-01T06:00:00",
            "ended_at": None,
            "duration_seconds": 3.9,
        },
    ]
    shown = runs_for_page(rows)
    assert [(r["status"], r["duration_seconds"]) for r in shown] == [("SUCCESS", 32.0), ("RUNNING", None)]
    others = (
        "revenue_by_month",
        "churn_by_platform",
        "churn_by_gender",
        "revenue_by_channel",
        "predicted_churn_by_country",
        "predicted_churn_by_channel",
        "predicted_churn_by_tenure",
        "data_quality_daily",
        "ingestion_daily",
    )
    spec = chart_specs({"pipeline_runs": rows, **{k: [] for k in others}})["pipeline_runs"]
    bars, marker = spec["layer"]
    assert bars["mark"]["type"] == "bar" and bars["transform"] == [{"filter": "datum.status != 'RUNNING'"}]
    assert marker["mark"]["type"] == "point" and marker["encoding"]["y"] == {"datum": 0}
