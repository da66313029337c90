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


# The charts are Vega-Lite specs written as data: Altair built the same specs in 0.5 s per page
# (its import, then a schema check of every channel), a third of the page step at any scale.
VEGA_LITE = "https://vega.github.io/schema/vega-lite/v6.json"  # the major version vl-convert bundles
TYPES = {"N": "nominal", "Q": "quantitative", "T": "temporal", "O": "ordinal"}


def field(shorthand: str, **options) -> dict:
    """A channel from Altair's shorthand, ``"revenue:Q"``, with its options (title, axis, ...)."""
    name, kind = shorthand.rsplit(":", 1)
    return {"field": name, "type": TYPES[kind], **options}


def bar_chart(rows: list[dict], title: str, mark: dict | None = None, **encoding) -> dict:
    """A bar chart of ``rows`` (inlined): ``encoding``'s channels, a tooltip a list of shorthands or
    channels."""
    tooltip = [field(t) if isinstance(t, str) else t for t in encoding.pop("tooltip", [])]
    return {
        "data": {"values": records(rows)},
        "mark": {"type": "bar", **(mark or {})},
        "encoding": {**encoding, "tooltip": tooltip},
        "title": title,
    }


def _churned_or_not(rows: list[dict], title: str, x: dict) -> dict:
    """Customers per value of ``x``, churned, stayed and unlabelled side by side."""
    return bar_chart(
        rows,
        title,
        x=x,
        y=field("customers:Q"),
        color=field("status:N", scale={"domain": list(PALETTE), "range": list(PALETTE.values())}, title=None),
        xOffset=field("status:N"),
        tooltip=[f"{x['field']}:N", "status:N", "customers:Q"],
    )


def _at_risk(rows: list[dict], title: str, x: dict, y: dict | None = None) -> dict:
    """A prediction figure: customers at risk (or ``y``) per value of ``x``."""
    return bar_chart(
        rows,
        title,
        {"color": PALETTE["churned"]},
        x=x,
        y=y or field("at_risk:Q", title="customers at risk"),
        tooltip=[f"{x['field']}:N", "at_risk:Q", "customers:Q", field("at_risk_share:Q", format=".1%")],
    )


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


def _runs_chart(rows: list[dict]) -> dict:
    common = {
        "x": field("started_at:T", title="started (UTC)", axis={"format": "%m-%d %H:%M", "labelAngle": -40}),
        "color": field(
            "status:N",
            legend={"orient": "bottom", "labelLimit": 0},
            scale={
                "domain": ["SUCCESS", "FAILURE", "CANCELED", "RUNNING"],
                "range": ["#54A24B", "#E45756", "#9D755D", "#F58518"],
            },
        ),
    }
    who = [field("run_id:N"), field("job_name:N"), field("status:N"), field("started_at:T")]
    finished = {
        "transform": [{"filter": "datum.status != 'RUNNING'"}],
        "mark": {"type": "bar", "size": 6},
        "encoding": {
            **common,
            "y": field("duration_seconds:Q", title="seconds"),
            "tooltip": [*who, field("duration_seconds:Q", format=".1f")],
        },
    }
    # A running run is a marker on the axis, never a bar of its duration so far.
    running = {
        "transform": [{"filter": "datum.status == 'RUNNING'"}],
        "mark": {"type": "point", "shape": "triangle-up", "size": 90, "filled": True},
        "encoding": {**common, "y": {"datum": 0}, "tooltip": who},
    }
    return {
        "data": {"values": runs_for_page(rows)},
        "title": "Runs: duration (latest 200)",
        "layer": [finished, running],
    }


def chart_specs(fig: dict[str, list[dict]]) -> dict[str, dict]:
    """One Vega-Lite spec per charted figure, its data inlined."""
    charts = {
        "revenue_by_month": bar_chart(
            fig["revenue_by_month"],
            "Revenue per month",
            {"color": "#4C78A8"},
            x=field("month:T", title=None, timeUnit="yearmonth"),
            y=field("revenue:Q", title="revenue ($)"),
            tooltip=["month:T", field("revenue:Q", format=",.0f"), "orders:Q"],
        ),
        "churn_by_platform": _churned_or_not(
            fig["churn_by_platform"], "Churn by platform (first seen)", field("platform:N", title=None)
        ),
        "churn_by_gender": _churned_or_not(
            fig["churn_by_gender"], "Churn by gender", field("gender:N", title="gender")
        ),
        "revenue_by_channel": bar_chart(
            fig["revenue_by_channel"],
            "Revenue by channel",
            {"color": "#72B7B2"},
            x=field("revenue:Q", title="revenue ($)"),
            y=field("canal:N", sort="-x", title=None),
            tooltip=["canal:N", field("revenue:Q", format=",.0f"), "orders:Q"],
        ),
        "predicted_churn_by_country": _at_risk(
            fig["predicted_churn_by_country"], "Predicted churn by country", field("country:N", title=None)
        ),
        "predicted_churn_by_channel": _at_risk(
            fig["predicted_churn_by_channel"], "Predicted churn by channel", field("canal:N", title=None)
        ),
        "predicted_churn_by_tenure": _at_risk(
            fig["predicted_churn_by_tenure"],
            "Predicted churn by tenure",
            field("tenure:N", sort={"field": "from_months"}, title=None),
            field("at_risk_share:Q", title="share at risk", axis={"format": "%"}),
        ),
        "data_quality_daily": {
            **bar_chart(
                fig["data_quality_daily"],
                "Failure rate per table and expectation",
                x=field("failure_rate:Q", title="failed / (passed + failed)", axis={"format": "%"}),
                y=field("check:N", title=None, sort=None, axis={"labelLimit": 320}),
                # Below the chart, labels whole: beside it, the legend did not fit the page's column.
                color=field("day:N", title="day", legend={"orient": "bottom", "labelLimit": 0, "columns": 4}),
                tooltip=[
                    "day:N",
                    "table_name:N",
                    "expectation:N",
                    "passed:Q",
                    "failed:Q",
                    "dropped:Q",
                    field("failure_rate:Q", format=".3%"),
                ],
            ),
            "transform": [{"calculate": "datum.table_name + ' \u00b7 ' + datum.expectation", "as": "check"}],
        },
        "ingestion_daily": bar_chart(
            fig["ingestion_daily"],
            "Ingestion per day (records landed)",
            x=field("day:N", title=None),
            y=field("records_landed:Q", title="records"),
            color=field("source:N"),
            xOffset=field("source:N"),
            tooltip=[
                "day:N",
                "source:N",
                "files:Q",
                "records_landed:Q",
                "rows_rescued:Q",
                "rows_quarantined:Q",
                field("rescued_share:Q", format=".3%"),
            ],
        ),
        "pipeline_runs": _runs_chart(fig["pipeline_runs"]),
    }
    return {name: {"$schema": VEGA_LITE, **spec, "width": W, "height": H} for name, spec in charts.items()}


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


def render(fig: dict[str, list[dict]], *, as_of: datetime, model_version: str, generated_at: datetime) -> str:
    """The page's HTML (its charts' specs inlined: ``chart_specs``)."""
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
    return page
