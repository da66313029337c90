"""The dashboards: every figure a table, every number on the page equal to SQL on the
tables, and the page drawn in a real headless browser with no network."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import pytest

from churn_assets.defs.dashboards.assets import FIGURES
from churn_assets.generator import generate_history, generate_increment
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
    assert parents("dashboard/predicted_churn_by_country") == {"gold/churn_prediction"}
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
    previews = meta["dashboard/chart_previews"]
    assert previews["drawn_because"].value == "no previews yet" and previews["as_of"].value == AS_OF
    assert previews["model_version"].value == page_meta["model_version"].value
    for chart in ("revenue_by_month", "churn_by_platform", "predicted_churn_by_country", "data_quality_daily"):
        assert previews[f"chart_{chart}"].value.startswith(f"![{chart}](data:image/png;base64,iVBOR")


def test_chart_previews_are_kept_while_recent_and_drawn_again_when_old_or_on_a_new_day(tmp_path):
    """A cycle keeps the last previews (no materialization, the step succeeds) while they are
    younger than PREVIEWS_EVERY_HOURS and of the same as-of date; the page is drawn every cycle."""
    from churn_assets.defs.dashboards.assets import PREVIEWS_EVERY_HOURS, previews_due

    as_of = datetime(2026, 11, 1, 6)
    drawn = dg.AssetMaterialization("x", metadata={"as_of": "2026-11-01T05:00:00", "model_version": "3"})
    hours = PREVIEWS_EVERY_HOURS * 3600
    assert previews_due(None, None, as_of, "3", 1_000.0) == "no previews yet"
    assert previews_due(drawn, 1_000.0, as_of, "3", 1_000.0 + hours - 1) == ""
    assert previews_due(drawn, 1_000.0, as_of, "3", 1_000.0 + hours) == "older than 6 hours"
    assert previews_due(drawn, 1_000.0, datetime(2026, 11, 2, 0, 30), "3", 1_001.0) == "a new as-of date"
    assert previews_due(drawn, 1_000.0, as_of, "4", 1_001.0) == "a new model version"
    unrecorded = dg.AssetMaterialization("x", metadata={"as_of": "2026-11-01T05:00:00"})
    assert previews_due(unrecorded, 1_000.0, as_of, "3", 1_001.0) == "no as-of date or model version recorded"

    # The rule at work, on a real instance: drawn, kept by the next cycle, drawn on a new as-of date.
    home = tmp_path / "home"
    generate_history(home, customers=500, seed=18, end=date(2026, 11, 1), progress=False)
    figures = dg.AssetSelection.assets(dg.AssetKey(["dashboard", "chart_previews"]), dg.AssetKey(["dashboard", "page"]))
    with dg.DagsterInstance.ephemeral() as instance:

        def drawn_in(as_of: str) -> tuple[bool, bool]:
            # One model throughout (a new one would draw the previews again: a new model version).
            env = {"CHURN_RETRAIN_MIN_NEW_ROWS": "100000000"}
            result = materialize(home, figures.upstream(), as_of=as_of, instance=instance, env=env)
            assert result.success
            done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
            return "dashboard/chart_previews" in done, "dashboard/page" in done

        assert drawn_in("2026-11-01T05:00:00") == (True, True)
        assert drawn_in("2026-11-01T06:00:00") == (False, True)
        assert drawn_in("2026-11-02T00:30:00") == (True, True)
        latest = instance.get_latest_materialization_event(dg.AssetKey(["dashboard", "chart_previews"]))
        meta = latest.asset_materialization.metadata
        assert meta["drawn_because"].value == "a new as-of date"
        assert meta["chart_revenue_by_month"].value.startswith("![revenue_by_month](data:image/png;base64,")


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


# The prediction figures as they were first written: each a join of the predictions with gold
# over every customer.
JOINED = {
    "predicted_churn_by_country": """SELECT f.country, count(*) AS customers,
        count(*) FILTER (p.churn_prediction = 1) AS at_risk, round(avg(p.churn_prediction), 4) AS at_risk_share
        FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id) GROUP BY 1 ORDER BY 1""",
    "predicted_churn_by_channel": """SELECT coalesce(f.canal, 'unknown') AS canal, count(*) AS customers,
        count(*) FILTER (p.churn_prediction = 1) AS at_risk, round(avg(p.churn_prediction), 4) AS at_risk_share
        FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id) GROUP BY 1 ORDER BY 1""",
    "predicted_churn_by_tenure": """SELECT CASE WHEN m < 3 THEN '0-2 months' WHEN m < 6 THEN '3-5 months'
        WHEN m < 12 THEN '6-11 months' WHEN m < 24 THEN '12-23 months' ELSE '24+ months' END AS tenure,
        min(m) AS from_months, count(*) AS customers, count(*) FILTER (churn_prediction = 1) AS at_risk,
        round(avg(churn_prediction), 4) AS at_risk_share
        FROM (SELECT p.churn_prediction, date_diff('month', f.creation_date, ?::TIMESTAMP) AS m
              FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id))
        GROUP BY 1 ORDER BY 2""",
    "at_risk_customers": """SELECT p.user_id, f.country, coalesce(f.canal, 'unknown') AS canal, f.platform,
        round(p.churn_probability, 4) AS churn_probability, f.total_amount, f.order_count, f.days_last_event,
        round(p.churn_probability * f.total_amount, 2) AS value_at_risk
        FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id) WHERE p.churn_prediction = 1
        ORDER BY p.churn_probability DESC, f.total_amount DESC, p.user_id LIMIT 100""",
}
# The four figures and everything upstream of them (models, scoring, gold), not the page or the campaign.
PREDICTION_FIGURES = dg.AssetSelection.assets(*(dg.AssetKey(["dashboard", name]) for name in JOINED)).upstream()


def assert_context_equals_gold(home) -> None:
    """Every prediction row carries its customer's gold columns as gold has them now."""
    from churn_assets.defs.ml.scoring import CONTEXT

    kept = ", ".join(CONTEXT)
    assert query(home, f"SELECT user_id, {kept} FROM gold.churn_prediction ORDER BY user_id") == query(
        home,
        f"SELECT user_id, {', '.join(f'{sql} AS {name}' for name, sql in CONTEXT.items())} "
        "FROM gold.churn_features WHERE user_id IN (SELECT user_id FROM gold.churn_prediction) ORDER BY user_id",
    )
    assert one(home, "SELECT count(*) FROM gold.churn_prediction") == one(
        home, "SELECT count(*) FROM gold.churn_features"
    )


def assert_risk_figures_equal_the_joins(home, as_of: str) -> None:
    assert_context_equals_gold(home)
    for name, sql in JOINED.items():
        assert query(home, f"SELECT * FROM dashboard.{name}") == query(home, sql, [as_of] if "?" in sql else []), name


def scoring(result) -> tuple[str, int]:
    (mat,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "gold/churn_prediction"
    ]
    return mat.metadata["scoring_mode"].value, mat.metadata["customers_scored"].value


def test_prediction_figures_follow_what_scoring_changed_and_equal_the_joins(home):
    """The prediction rows carry the gold columns the prediction figures group by, written with the
    rows scoring rewrites; after increments (an hourly run scores only the customers whose
    features moved) and a next-day rescoring, they equal gold and the four figures equal the
    joins over every customer."""
    generate_history(home, customers=3_000, seed=23, end=date(2026, 11, 1), progress=False)
    env = {"CHURN_RETRAIN_MIN_NEW_ROWS": "100000000"}  # one model: increments are scored incrementally
    first = materialize(home, PREDICTION_FIGURES, as_of="2026-11-01T01:00:00", env=env)
    total = one(home, "SELECT count(*) FROM gold.churn_prediction")
    assert scoring(first) == ("full", total)
    assert_risk_figures_equal_the_joins(home, "2026-11-01T01:00:00")
    for hour in (2, 3):
        generate_increment(home, fraction=0.03, dirty_rate=0.01)
        as_of = f"2026-11-01T0{hour}:00:00"
        mode, scored = scoring(materialize(home, PREDICTION_FIGURES, as_of=as_of, env=env))
        total = one(home, "SELECT count(*) FROM gold.churn_prediction")
        assert mode == "incremental" and 0 < scored < total / 4, (mode, scored, total)
        assert_risk_figures_equal_the_joins(home, as_of)
    # The next day every day count moves: everyone is scored again.
    mode, scored = scoring(materialize(home, PREDICTION_FIGURES, as_of="2026-11-02T00:30:00", env=env))
    assert scored == one(home, "SELECT count(*) FROM gold.churn_prediction")
    assert_risk_figures_equal_the_joins(home, "2026-11-02T00:30:00")
