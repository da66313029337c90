"""Materialization metadata shared by every layer: row counts, column schema, a preview.

What a preview may show is decided here, for every preview of the project: Dagster
metadata (and so the event log and the UI), the dashboard page, MLflow's input example.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
import duckdb

# Personal data (first and last name, e-mail even pseudonymized, address, and free text
# that can be built from them or carry them: a message's subject and texts, a raw record,
# an error detail, a visited URL) stays in the warehouse's own tables and the outbox.
# Metadata is read by many more people than the warehouse, so previews show only the
# columns listed here: a positive list, so that a new column stays hidden until someone
# decides it is not personal.
PREVIEW_COLUMNS = frozenset(
    {
        # keys and source fields
        "id",
        "user_id",
        "order_id",
        "event_id",
        "session_id",
        "message_id",
        "run_id",
        "canal",
        "country",
        "gender",
        "age_group",
        "churn",
        "creation_date",
        "creation_month",  # gold.churn_prediction: creation_date's month
        "last_activity_date",
        "transaction_date",
        "item_count",
        "amount",
        "platform",
        "date",
        "action",
        # gold features and predictions
        "order_count",
        "total_amount",
        "total_item",
        "last_transaction",
        "event_count",
        "session_count",
        "last_event",
        "days_since_creation",
        "days_since_last_activity",
        "days_last_event",
        "churn_probability",
        "churn_prediction",
        "model_name",
        "model_version",
        "scored_at",
        # campaign messages: the decision and the bookkeeping, never subject or texts
        "channel",
        "style",
        "languages",
        "offer",
        "urgency",
        "season",
        "generator",
        "prompt_version",
        "input_hash",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "status",
        "created_at",
        "outbox",
        # dashboard figures (aggregates and run bookkeeping)
        "name",
        "value",
        "as_of",
        "month",
        "revenue",
        "orders",
        "orders_with_amount",
        "customers",
        "at_risk",
        "at_risk_share",
        "tenure",
        "from_months",
        "value_at_risk",
        "day",
        "table_name",
        "expectation",
        "passed",
        "failed",
        "dropped",
        "failure_rate",
        "source",
        "files",
        "records_landed",
        "rows_loaded",
        "rows_rescued",
        "rows_quarantined",
        "rescued_share",
        "layer",
        "updated_at",
        "job_name",
        "started_at",
        "ended_at",
        "duration_seconds",
        "raised_at",
        "kind",
        "link",
        "state",
        "files_appended",
        "files_new_version",
    }
)
# Free-text columns that are safe in one table only: the KPI's month, an alert's reason
# (written by the monitoring from run failures, and sent as the alert itself).
PREVIEW_COLUMNS_OF = {
    "dashboard.kpis": frozenset({"detail"}),
    "dashboard.alerts": frozenset({"reason"}),
}


def previewable(columns: Iterable[str], table: str = "") -> list[str]:
    """The columns (of ``table``, ``schema.name``) a preview may show, in their order."""
    extra = PREVIEW_COLUMNS_OF.get(table, frozenset())
    return [c for c in columns if c in PREVIEW_COLUMNS or c in extra]


def shareable_example(frame, what: str = "input example"):
    """``frame`` unchanged if every column may be shown, else refused: an input example
    cannot drop a column the model needs, so a personal one there is an error."""
    hidden = [c for c in frame.columns if c not in set(previewable(frame.columns))]
    if hidden:
        raise ValueError(f"{what} would carry columns that are not on the preview list: {', '.join(hidden)}")
    return frame


def table_metadata(con: duckdb.DuckDBPyConnection, qualified: str, preview_rows: int = 5) -> dict:
    schema, table = qualified.split(".")
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
        "ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    total = con.execute(f"SELECT count(*) FROM {qualified}").fetchall()[0][0]
    shown = previewable([c for c, _ in cols], qualified)
    if shown:
        quoted = ", ".join(f'"{c}"' for c in shown)
        rows = con.execute(f"SELECT {quoted} FROM {qualified} LIMIT {preview_rows}").fetchall()
        preview = markdown_table(shown, rows)
    else:
        preview = "_(no column of this table may be previewed)_"
    return {
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(name=c, type=t) for c, t in cols]),
        "preview": dg.MetadataValue.md(preview),
    }


def markdown_table(columns: list[str], rows: Iterable[tuple]) -> str:
    """Rows as a Markdown table (Python values, no dataframe: the data steps need not import one)."""
    body = [
        "| " + " | ".join("" if v is None else str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
        for row in rows
    ]
    if not body:
        return "_(no rows)_"
    head = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    return "\n".join([head, sep, *body])
