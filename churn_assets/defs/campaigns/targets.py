"""Who a campaign run writes to, and what each of them is told (the decision, in code)."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb

from churn_assets.defs.campaigns.decide import Decision, decide
from churn_assets.timeutil import utcnow

# A customer who got a ready message within the cooldown is not written to again.
_RECENT = "SELECT user_id FROM campaigns.retention_messages WHERE status = 'ready' AND created_at >= ?"
# The at-risk customers, written once; ``{recent}`` is the cooldown's customers: the ledger's query
# on DuckDB, the view of the ledger's rows on Spark (the ledger stays in the DuckDB file).
# The chosen customers first, then their last order: aggregating every customer's orders would
# follow the whole history. This exact form keeps only customers with a user row and an order
# before it ranks; every gold customer has both (gold is silver's users joined with their
# orders), so the top form below, which ranks the predictions alone and then looks up the chosen
# few, gives the same rows whenever it fills the cap (3x faster at 100x the reference).
_LAST_ORDER = """
    last_order AS (
        SELECT user_id, arg_max(amount, creation_date) AS amount, arg_max(item_count, creation_date) AS items,
               max(creation_date) AS last_date
        FROM silver.churn_orders WHERE user_id IN (SELECT user_id FROM chosen) GROUP BY user_id)
    SELECT c.*, lo.amount, lo.items, lo.last_date
    FROM chosen c JOIN last_order lo USING (user_id)
    ORDER BY c.churn_probability DESC, c.total_amount DESC, c.user_id"""
TARGETS_TEMPLATE = (
    """
    WITH chosen AS (
        SELECT p.user_id, u.firstname, u.canal, u.country, p.churn_probability, f.total_amount
        FROM gold.churn_prediction p
        JOIN silver.churn_users u USING (user_id)
        JOIN gold.churn_features f USING (user_id)
        WHERE p.churn_prediction = 1 AND p.user_id NOT IN ({recent})
          AND EXISTS (SELECT 1 FROM silver.churn_orders o WHERE o.user_id = p.user_id)
        ORDER BY p.churn_probability DESC, f.total_amount DESC, p.user_id
        LIMIT ?),"""
    + _LAST_ORDER
)
# The cap-th highest probability among the eligible (one top-N over the predictions alone) bounds
# the ranking: every customer of the top cap has at least it, so only those few are ranked
# (0.8 -> 0.4 s at 100x the reference, 4.6M customers at risk). A prediction carries its customer's
# total amount as gold has it (scoring rewrites the row when it moves): no join with gold (0.46 -> 0.35 s).
TOP_TARGETS_TEMPLATE = (
    """
    WITH cut AS (
        SELECT min(churn_probability) AS lowest FROM (
            SELECT churn_probability FROM gold.churn_prediction
            WHERE churn_prediction = 1 AND user_id NOT IN ({recent})
            ORDER BY churn_probability DESC LIMIT ?)),
    top AS (
        SELECT p.user_id, p.churn_probability, p.total_amount
        FROM gold.churn_prediction p
        WHERE p.churn_prediction = 1 AND p.churn_probability >= (SELECT lowest FROM cut) AND p.user_id NOT IN ({recent})
        ORDER BY p.churn_probability DESC, p.total_amount DESC, p.user_id
        LIMIT ?),
    chosen AS (
        SELECT t.user_id, u.firstname, u.canal, u.country, t.churn_probability, t.total_amount
        FROM top t JOIN silver.churn_users u USING (user_id)),"""
    + _LAST_ORDER
)
IN_COOLDOWN_TEMPLATE = "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1 AND user_id IN ({recent})"
TARGETS_SQL = TARGETS_TEMPLATE.format(recent=_RECENT)
TOP_TARGETS_SQL = TOP_TARGETS_TEMPLATE.format(recent=_RECENT)
IN_COOLDOWN_SQL = IN_COOLDOWN_TEMPLATE.format(recent=_RECENT)
RECENT_VIEW = "_campaign_recent"


def select_targets(con: duckdb.DuckDBPyConnection, cooldown_days: int, cap: int, tables=None) -> tuple[list[dict], int]:
    """Customers predicted to churn, highest risk then value first, not contacted within
    the cooldown; at most ``cap``. Returns (targets, customers skipped for cooldown).
    ``tables``: where the predictions, features and silver tables are when not in ``con`` (a
    Spark engine's cursor); the cooldown's customers come from the ledger in ``con`` either way."""
    since = utcnow() - timedelta(days=cooldown_days)
    if tables is None:
        in_cooldown = con.execute(IN_COOLDOWN_SQL, [since]).fetchall()[0][0]

        def targets(top: bool):
            return (
                con.execute(TOP_TARGETS_SQL, [since, cap, since, cap])
                if top
                else con.execute(TARGETS_SQL, [since, cap])
            )
    else:
        recent = con.execute(_RECENT, [since]).fetchall()
        tables.register(RECENT_VIEW, "user_id string", recent)
        recent_sql = f"SELECT user_id FROM {RECENT_VIEW}"
        in_cooldown = tables.execute(IN_COOLDOWN_TEMPLATE.format(recent=recent_sql)).fetchall()[0][0]

        def targets(top: bool):
            sql = (TOP_TARGETS_TEMPLATE if top else TARGETS_TEMPLATE).format(recent=recent_sql)
            return tables.execute(sql, [cap, cap] if top else [cap])

    cur = targets(top=True)
    rows = cur.fetchall()
    if len(rows) < cap:  # fewer at risk than the cap, or a chosen customer without a user row or an order
        cur = targets(top=False)
        rows = cur.fetchall()
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in rows], in_cooldown


def decision_for(customer: dict, today: date) -> Decision:
    days = (today - customer["last_date"].date()).days if customer["last_date"] else 10_000
    return decide(
        canal=customer["canal"],
        country=customer["country"],
        last_amount=float(customer["amount"] or 0),
        last_items=int(customer["items"] or 0),
        days_since_last_order=days,
        at_risk=True,
        today=today,
    )


def group_by_decision(
    targets: list[dict], today: date, prompt_version: str, generator: str
) -> tuple[dict[str, Decision], dict[str, list[dict]]]:
    """The distinct decisions by cache key, and the customers of each, in target order: one
    generation serves every customer with the same decision."""
    decisions: dict[str, Decision] = {}
    customers: dict[str, list[dict]] = {}
    for customer in targets:
        decision = decision_for(customer, today)
        key = decision.key(prompt_version, generator)
        customers.setdefault(key, []).append(customer)
        decisions[key] = decision
    return decisions, customers
