"""The retention campaign against a slow, flaky API: the fake Messages server on
127.0.0.1 with ``--latency`` per call and ``--error-rate`` transient errors (429 with
retry-after, 529, 500), through the real SDK.

Usage:  python benchmarks/bench_campaigns.py [--customers 1000] [--latency 0.3] [--error-rate 0.2]

Side by side on the same at-risk customers:
- project: the campaign step (decisions in code, one call per distinct decision, cache,
  concurrency 4, the SDK's retries);
- baseline: one call per customer (no de-duplication), same client and concurrency, on
  the first ``--baseline-customers`` of them, extrapolated to all (a full run would be
  most of the benchmark's time).
It prints the wall time, calls, tokens and dollars per 1,000 customers, and checks that
no customer was lost or written to twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from churn_assets.defs.campaigns.resources import AnthropicResource, CampaignPolicyResource  # noqa: E402
from churn_assets.defs.campaigns.targets import decision_for, select_targets  # noqa: E402
from churn_assets.generator import generate_history  # noqa: E402
from churn_assets.settings import Settings  # noqa: E402
from churn_assets_tests.fake_anthropic import FakeAnthropic  # noqa: E402
from churn_assets_tests.helpers import load_defs  # noqa: E402

AS_OF = "2026-11-01T06:00:00"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1000, help="at-risk customers to write to")
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--error-rate", type=float, default=0.2)
    ap.add_argument("--baseline-customers", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    home = Path(tempfile.mkdtemp(prefix="churn-bench-campaign-"))
    generate_history(home, customers=20_000, seed=42, end=date(2026, 11, 1), progress=False)
    defs = load_defs(home, AS_OF)
    res = defs.resources
    dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection="*gold/churn_prediction",
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
    )
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    at_risk = con.execute("SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1").fetchall()[0][0]
    assert at_risk >= args.customers, f"only {at_risk} at-risk customers"
    con.execute("CREATE SCHEMA IF NOT EXISTS campaigns")
    from churn_assets.warehouse import ensure_campaign_tables

    ensure_campaign_tables(con)
    targets, _ = select_targets(con, 7, args.customers)
    con.close()

    with FakeAnthropic(latency=args.latency, error_rate=args.error_rate, seed=1) as fake:
        anthropic = AnthropicResource.from_settings(Settings.load(), api_key="bench-key", base_url=fake.url)
        t0 = time.perf_counter()
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection="campaigns/retention_messages",
            resources={
                **res,
                "anthropic": anthropic,
                "campaign_policy": CampaignPolicyResource.from_settings(
                    Settings.load(), max_messages_per_run=args.customers
                ),
            },
            instance=dg.DagsterInstance.ephemeral(),
        )
        took = time.perf_counter() - t0
        meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
        requests = len(fake.requests)

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    rows, users, ready = con.execute(
        "SELECT count(*), count(DISTINCT user_id), count(*) FILTER (status = 'ready') FROM campaigns.retention_messages"
    ).fetchall()[0]
    con.close()
    per_k = 1000 / args.customers
    print(
        f"{args.customers:,} at-risk customers, API latency {args.latency * 1000:.0f} ms, "
        f"{args.error_rate:.0%} transient errors"
    )
    print(
        f"PROJECT   wall {took:.1f}s (step and run) | {meta['distinct_decisions']} distinct decisions | "
        f"HTTP requests "
        f"{requests} (incl. retries) | per 1,000 customers: {meta['api_calls'] * per_k:.0f} calls, "
        f"{(meta['input_tokens'] + meta['output_tokens']) * per_k:,.0f} tokens, ${meta['cost_usd'] * per_k:.4f}"
    )
    print(
        f"          messages {rows:,} for {users:,} customers ({ready:,} ready); lost {args.customers - users}, "
        f"duplicated {rows - users}; validation pass rate {meta.get('validation_pass_rate', 0):.0%}; "
        f"degraded: {meta['degraded']}"
    )

    # Baseline: one call per customer, no de-duplication, same SDK settings.
    with FakeAnthropic(latency=args.latency, error_rate=args.error_rate, seed=2) as fake:
        writer = AnthropicResource.from_settings(Settings.load(), api_key="bench-key", base_url=fake.url).writer()
        sample = targets[: args.baseline_customers]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            gens = list(pool.map(lambda c: writer.write(decision_for(c, date.fromisoformat(AS_OF[:10]))), sample))
        base = time.perf_counter() - t0
        calls = sum(g.api_calls for g in gens)
        tokens = sum(g.input_tokens + g.output_tokens for g in gens)
        cost = sum(g.cost_usd for g in gens)
    k = 1000 / len(sample)
    print(
        f"BASELINE  one call per customer on {len(sample)}: {base:.1f}s -> "
        f"{base * args.customers / len(sample):.0f}s for "
        f"{args.customers:,} | per 1,000 customers: {calls * k:.0f} calls, {tokens * k:,.0f} tokens, ${cost * k:.4f}"
    )
    print(
        f"RATIO     time {took / (base * args.customers / len(sample)):.2f}x of the baseline's, "
        f"cost {meta['cost_usd'] * per_k / (cost * k):.3f}x"
    )


if __name__ == "__main__":
    main()
