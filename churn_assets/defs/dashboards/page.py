"""The dashboard page: one self-contained HTML file, charts drawn by Vega-Lite.

Vega, Vega-Lite and vega-embed are inlined from vl-convert's bundle, and every chart's
data is inlined in its spec, so the page opens from disk with no network and no database.
The same specs render to PNG (vl-convert, no browser) for the Dagster UI's metadata.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache

from churn_assets.files import write_atomic

KPI_LABELS = {
    "customers": ("Customers", "{:,.0f}"),
    "customers_churned": ("Customers who churned", "{:,.0f}"),
    "churn_rate": ("Churn rate", "{:.1%}"),
    "revenue_latest_month": ("Revenue, latest month (MRR)", "${:,.0f}"),
    "customers_at_risk": ("Customers at risk", "{:,.0f}"),
    "revenue_at_risk": ("Revenue at risk, latest month", "${:,.0f}"),
}
PALETTE = {"churned": "#E45756", "stayed": "#4C78A8", "no label": "#BAB0AC"}  # no label: landed without a boolean churn
W, H = 380, 220


def jsonable(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def records(rows: list[dict]) -> list[dict]:
    return [{k: jsonable(v) for k, v in row.items()} for row in rows]


def _status_color():
    import altair as alt

    return alt.Color("status:N", scale=alt.Scale(domain=list(PALETTE), range=list(PALETTE.values())), title=None)


# Run states Dagster reports for a run that has not ended: its duration so far is no duration.
UNFINISHED = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def runs_for_page(rows: list[dict]) -> list[dict]:
    """Runs as the page shows them: a run that has not ended (this page's own run, while it is
    being drawn) is RUNNING, with no duration."""
    out = []
    for row in records(rows):
        if row.get("status") in UNFINISHED or row.get("ended_at") is None:
            row = {**row, "status": "RUNNING", "duration_seconds": None}
        out.append(row)
    return out


def _runs_chart(rows: list[dict]):
    import altair as alt

    base = alt.Chart(alt.Data(values=runs_for_page(rows)), title="Runs: duration (latest 200)").encode(
        x=alt.X("started_at:T", title="started (UTC)", axis=alt.Axis(format="%m-%d %H:%M", labelAngle=-40)),
        color=alt.Color(
            "status:N",
            legend=alt.Legend(orient="bottom", labelLimit=0),
            scale=alt.Scale(
                domain=["SUCCESS", "FAILURE", "CANCELED", "RUNNING"], range=["#54A24B", "#E45756", "#9D755D", "#F58518"]
            ),
        ),
    )
    finished = (
        base.transform_filter("datum.status != 'RUNNING'")
        .mark_bar(size=6)
        .encode(
            y=alt.Y("duration_seconds:Q", title="seconds"),
            tooltip=[
                "run_id:N",
                "job_name:N",
                "status:N",
                "started_at:T",
                alt.Tooltip("duration_seconds:Q", format=".1f"),
            ],
        )
    )
    # A running run is a marker on the axis, never a bar of its duration so far.
    running = (
        base.transform_filter("datum.status == 'RUNNING'")
        .mark_point(
            shape="triangle-up",
            size=90,
            filled=True,
        )
        .encode(y=alt.datum(0), tooltip=["run_id:N", "job_name:N", "status:N", "started_at:T"])
    )
    return alt.layer(finished, running)


def chart_specs(fig: dict[str, list[dict]]) -> dict[str, dict]:
    """One Vega-Lite spec per charted figure, its data inlined."""
    import altair as alt  # here, not at import: every run and sensor tick loads this module

    def data(name):
        return alt.Data(values=records(fig[name]))

    charts = {
        "revenue_by_month": alt.Chart(data("revenue_by_month"), title="Revenue per month")
        .mark_bar(color="#4C78A8")
        .encode(
            x=alt.X("month:T", title=None, timeUnit="yearmonth"),
            y=alt.Y("revenue:Q", title="revenue ($)"),
            tooltip=["month:T", alt.Tooltip("revenue:Q", format=",.0f"), "orders:Q"],
        ),
        "churn_by_platform": alt.Chart(data("churn_by_platform"), title="Churn by platform (first seen)")
        .mark_bar()
        .encode(
            x=alt.X("platform:N", title=None),
            y=alt.Y("customers:Q"),
            color=_status_color(),
            xOffset="status:N",
            tooltip=["platform:N", "status:N", "customers:Q"],
        ),
        "churn_by_gender": alt.Chart(data("churn_by_gender"), title="Churn by gender")
        .mark_bar()
        .encode(
            x=alt.X("gender:N", title="gender"),
            y=alt.Y("customers:Q"),
            color=_status_color(),
            xOffset="status:N",
            tooltip=["gender:N", "status:N", "customers:Q"],
        ),
        "revenue_by_channel": alt.Chart(data("revenue_by_channel"), title="Revenue by channel")
        .mark_bar(color="#72B7B2")
        .encode(
            x=alt.X("revenue:Q", title="revenue ($)"),
            y=alt.Y("canal:N", sort="-x", title=None),
            tooltip=["canal:N", alt.Tooltip("revenue:Q", format=",.0f"), "orders:Q"],
        ),
        "predicted_churn_by_country": alt.Chart(data("predicted_churn_by_country"), title="Predicted churn by country")
        .mark_bar(color="#E45756")
        .encode(
            x=alt.X("country:N", title=None),
            y=alt.Y("at_risk:Q", title="customers at risk"),
            tooltip=["country:N", "at_risk:Q", "customers:Q", alt.Tooltip("at_risk_share:Q", format=".1%")],
        ),
        "predicted_churn_by_channel": alt.Chart(data("predicted_churn_by_channel"), title="Predicted churn by channel")
        .mark_bar(color="#E45756")
        .encode(
            x=alt.X("canal:N", title=None),
            y=alt.Y("at_risk:Q", title="customers at risk"),
            tooltip=["canal:N", "at_risk:Q", "customers:Q", alt.Tooltip("at_risk_share:Q", format=".1%")],
        ),
        "predicted_churn_by_tenure": alt.Chart(data("predicted_churn_by_tenure"), title="Predicted churn by tenure")
        .mark_bar(color="#E45756")
        .encode(
            x=alt.X("tenure:N", sort=alt.EncodingSortField("from_months"), title=None),
            y=alt.Y("at_risk_share:Q", title="share at risk", axis=alt.Axis(format="%")),
            tooltip=["tenure:N", "at_risk:Q", "customers:Q", alt.Tooltip("at_risk_share:Q", format=".1%")],
        ),
        "data_quality_daily": alt.Chart(data("data_quality_daily"), title="Failure rate per table and expectation")
        .mark_bar()
        .encode(
            x=alt.X("failure_rate:Q", title="failed / (passed + failed)", axis=alt.Axis(format="%")),
            y=alt.Y("check:N", title=None, sort=None, axis=alt.Axis(labelLimit=320)),
            # Below the chart, labels whole: beside it, the legend did not fit the page's column.
            color=alt.Color("day:N", title="day", legend=alt.Legend(orient="bottom", labelLimit=0, columns=4)),
            tooltip=[
                "day:N",
                "table_name:N",
                "expectation:N",
                "passed:Q",
                "failed:Q",
                "dropped:Q",
                alt.Tooltip("failure_rate:Q", format=".3%"),
            ],
        )
        .transform_calculate(check="datum.table_name + ' · ' + datum.expectation"),
        "ingestion_daily": alt.Chart(data("ingestion_daily"), title="Ingestion per day (records landed)")
        .mark_bar()
        .encode(
            x=alt.X("day:N", title=None),
            y=alt.Y("records_landed:Q", title="records"),
            color=alt.Color("source:N"),
            xOffset="source:N",
            tooltip=[
                "day:N",
                "source:N",
                "files:Q",
                "records_landed:Q",
                "rows_rescued:Q",
                "rows_quarantined:Q",
                alt.Tooltip("rescued_share:Q", format=".3%"),
            ],
        ),
        "pipeline_runs": _runs_chart(fig["pipeline_runs"]),
    }
    return {name: c.properties(width=W, height=H).to_dict() for name, c in charts.items()}


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega + Vega-Lite + vega-embed as one script. Building it takes ~1.4 s, and every
    run is a new process: it is kept on disk, per vl-convert version."""

    import vl_convert as vlc

    from churn_assets.settings import Settings

    cache = Settings.read_one("cache_dir") / "churn_assets"
    path = (
        cache
        / f"vega-bundle-{vlc.get_vega_embed_version()}-{vlc.get_vega_version()}-{vlc.get_vegalite_versions()[-1]}.js"
    )
    if path.exists():
        return path.read_text(encoding="utf-8")
    bundle = vlc.javascript_bundle()
    try:
        write_atomic(path, bundle)
    except OSError:
        pass  # a read-only home: build it each time
    return bundle


def png_of(spec: dict) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=1.5)


def markdown_image(png: bytes, alt_text: str) -> str:
    return f"![{alt_text}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _fmt_kpi(name: str, value) -> str:
    label, fmt = KPI_LABELS.get(name, (name, "{:,}"))
    return fmt.format(value if value is not None else 0)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(jsonable(value))


def _table(name: str, rows: list[dict], columns: list[str] | None = None, limit: int | None = None) -> str:
    if not rows:
        return f'<p class="empty" data-figure="{name}">nothing yet</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in columns) + "</tr>" for r in rows[:limit]
    )
    return f'<table data-figure="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _chart(name: str) -> str:
    return f'<div class="chart" id="chart-{name}" data-figure="{name}"></div>'


def render(
    fig: dict[str, list[dict]], *, as_of: datetime, model_version: str, generated_at: datetime
) -> tuple[str, dict[str, dict]]:
    """(the page's HTML, the chart specs)."""
    specs = chart_specs(fig)
    kpis = {r["name"]: r for r in fig["kpis"]}

    def tile(name):
        row = kpis.get(name, {"value": 0, "detail": None})
        detail = f'<span class="detail">{html.escape(row["detail"])}</span>' if row.get("detail") else ""
        return (
            f'<div class="kpi" data-kpi="{name}" data-value="{jsonable(row["value"])}">'
            f'<span class="label">{KPI_LABELS[name][0]}</span>'
            f'<span class="value">{_fmt_kpi(name, row["value"])}</span>{detail}</div>'
        )

    freshness = _table("layer_freshness", fig["layer_freshness"])
    alerts = _table("alerts", fig.get("alerts", []), limit=20)
    sections = f"""
<section><h2>Churn analysis <small>what happened</small></h2>
  <div class="kpis">{tile("customers")}{tile("customers_churned")}\
{tile("churn_rate")}{tile("revenue_latest_month")}</div>
  <div class="grid">{_chart("revenue_by_month")}{_chart("churn_by_platform")}\
{_chart("churn_by_gender")}{_chart("revenue_by_channel")}</div>
</section>
<section><h2>Churn prediction <small>what is about to happen · \
model churn_model v{html.escape(model_version)}</small></h2>
  <div class="kpis">{tile("customers_at_risk")}{tile("revenue_at_risk")}</div>
  <div class="grid">{_chart("predicted_churn_by_country")}{_chart("predicted_churn_by_channel")}\
{_chart("predicted_churn_by_tenure")}</div>
  <h3>Customers at risk, highest risk and value first</h3>
  <div class="scroll">{_table("at_risk_customers", fig["at_risk_customers"], limit=100)}</div>
</section>
<section><h2>Data quality <small>can the numbers be trusted</small></h2>
  <div class="grid">{_chart("data_quality_daily")}{_chart("ingestion_daily")}</div>
  <h3>Expectations per table and day</h3>
  <div class="scroll">{_table("data_quality_daily", fig["data_quality_daily"])}</div>
  <h3>Ingestion per source and day</h3>
  <div class="scroll">{_table("ingestion_daily", fig["ingestion_daily"])}</div>
</section>
<section><h2>Pipeline health</h2>
  <div class="grid">{_chart("pipeline_runs")}<div><h3>Freshness per layer (UTC)</h3>{freshness}\
<h3>Alerts raised</h3>{alerts}</div></div>
</section>"""
    data_json = json.dumps({name: records(rows) for name, rows in fig.items()}, separators=(",", ":")).replace(
        "</", "<\\/"
    )
    specs_json = json.dumps(specs, separators=(",", ":")).replace("</", "<\\/")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>churn_assets · dashboards</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;\
 margin: 0; background: #f5f6f8; color: #1f2933; }}
 header {{ background: #1f2933; color: #fff; padding: 14px 28px;\
 display: flex; flex-wrap: wrap; gap: 28px; align-items: baseline; }}
 header h1 {{ font-size: 20px; margin: 0; }} header span {{ font-size: 13px; opacity: .85; }}
 section {{ background: #fff; margin: 18px 28px; padding: 8px 20px 18px; border-radius: 8px;\
 box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
 h2 {{ font-size: 18px; }} h2 small {{ font-weight: normal; color: #7b8794; font-size: 13px; margin-left: 8px; }}\
 h3 {{ font-size: 14px; color: #3e4c59; }}
 .kpis {{ display: flex; flex-wrap: wrap; gap: 14px; margin-bottom: 10px; }}
 .kpi {{ border: 1px solid #e4e7eb; border-radius: 6px; padding: 10px 16px; min-width: 170px; }}
 .kpi .label {{ display: block; font-size: 12px; color: #616e7c; }} .kpi .value {{ font-size: 24px; font-weight: 600; }}
 .kpi .detail {{ display: block; font-size: 11px; color: #9aa5b1; }}
 .grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 10px; }}
 .chart {{ min-height: 260px; }}
 .scroll {{ max-height: 300px; overflow: auto; }}
 table {{ border-collapse: collapse; font-size: 12px; }}\
 th, td {{ border-bottom: 1px solid #e4e7eb; padding: 3px 8px; text-align: left; }}
 th {{ position: sticky; top: 0; background: #f5f6f8; }}
</style></head>
<body>
<header><h1>churn_assets · dashboards</h1>
 <span>as of <b id="as-of">{as_of.isoformat(sep=" ")}</b></span>
 <span>production model <b id="model-version">churn_model v{html.escape(model_version)}</b></span>
 <span>page written {generated_at.isoformat(sep=" ", timespec="seconds")} UTC</span></header>
{sections}
<script type="application/json" id="figures">{data_json}</script>
<script type="application/json" id="specs">{specs_json}</script>
<script>{vega_bundle()}</script>
<script>
 const specs = JSON.parse(document.getElementById("specs").textContent);
 window.chartsRendered = Promise.all(Object.entries(specs).map(([name, spec]) =>
   vegaEmbed("#chart-" + name, spec, {{renderer: "svg", actions: false}})));
</script>
</body></html>"""
    return page, specs
