"""Retention campaigns: decisions in code, words from Claude (the real SDK against a fake
Messages server on 127.0.0.1) or offline templates, validation, cost and contact limits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import date

import dagster as dg
import duckdb
import pytest

from churn_assets.defs.campaigns.decide import Decision, decide, offer_for, season_for
from churn_assets.defs.campaigns.resources import AnthropicResource, CampaignPolicyResource
from churn_assets.defs.campaigns.templates import template_copy
from churn_assets.defs.campaigns.validate import problems
from churn_assets.generator import generate_history
from churn_assets.settings import Settings
from churn_assets_tests.fake_anthropic import FakeAnthropic, tamper
from churn_assets_tests.helpers import assert_no_personal_data, materialize, one, query

AS_OF = "2026-11-01T06:00:00"
SELECT = "campaigns/retention_messages"


# --- decisions (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount, items, days, offer",
    [
        (40, 2, 10, "discount"),  # discount (amount), bundle (items), discount (recency): 2 votes
        (40, 2, 45, "free_shipping"),  # the rules' own conflict: 1-1-1, ties go to free shipping
        (150, 2, 10, "free_shipping"),  # free shipping, bundle, discount: tie -> free shipping
        (150, 6, 45, "free_shipping"),  # unanimous
        (40, 6, 10, "discount"),  # discount, free shipping, discount
        (100, 5, 30, "discount"),  # no rule votes: discount
        (100, 2, 30, "bundle"),  # only the items rule votes
    ],
)
def test_offer_precedence(amount, items, days, offer):
    assert offer_for(amount, items, days) == offer


def test_decisions_follow_the_rules():
    d = decide(
        canal="PHONE",
        country="FR",
        last_amount=40,
        last_items=2,
        days_since_last_order=10,
        at_risk=True,
        today=date(2026, 7, 1),
    )
    assert d == Decision("short", ("en", "fr"), "discount", "urgent", "summer")
    d = decide(
        canal="WEBAPP",
        country="USA",
        last_amount=40,
        last_items=2,
        days_since_last_order=10,
        at_risk=True,
        today=date(2026, 1, 5),
    )
    assert (d.style, d.languages, d.season) == ("long", ("en",), "winter")
    assert decide(
        canal="MOBILE",
        country="SPAIN",
        last_amount=1,
        last_items=1,
        days_since_last_order=1,
        at_risk=True,
        today=date(2026, 4, 1),
    ).languages == ("en", "es")
    assert season_for(date(2026, 7, 1), "AU") == "winter" and season_for(date(2026, 10, 1), "FR") == "autumn"
    assert d.key("v1", "m") == Decision(*d.__dict__.values()).key("v1", "m") != d.key("v2", "m")


def test_validation_catches_each_rule():
    d = Decision("short", ("en", "fr"), "discount", "urgent", "winter")
    good = {
        "en": "Hi {{first_name}}, 15% off until Sunday with our warm knits.",
        "fr": "Bonjour {{first_name}}, 15 % de remise avec nos mailles.",
    }
    assert problems(d, None, good) == []
    assert "mentions churn or risk" in problems(
        d, None, {**good, "en": "Hi {{first_name}}, you are at risk of leaving!"}
    )
    assert "mentions country" in problems(d, None, {**good, "en": "Hi {{first_name}}, the best of France for you."})
    assert "mentions country" in problems(d, None, {**good, "en": "Hi {{first_name}}, shipping across the USA."})
    assert "mentions channel" in problems(d, None, {**good, "en": "Hi {{first_name}}, open the app for 15% off."})
    assert "mentions gender" in problems(d, None, {**good, "fr": "Bonjour madame {{first_name}}, 15 % de remise."})
    assert any("at most 160" in p for p in problems(d, None, {**good, "en": "Hi {{first_name}}, " + "x" * 200}))
    assert any("languages" in p for p in problems(d, None, {"en": good["en"]}))
    assert any("closing" in p for p in problems(d, None, {**good, "en": "Hi {{first_name}}, 15% off. Best regards"}))
    no_greeting = {**good, "en": "15% off for you {{first_name}}, with our knits and more"}
    assert any("greet" in p for p in problems(d, None, no_greeting))
    long = Decision("long", ("en",), "discount", "urgent", "winter")
    assert any("subject" in p for p in problems(long, None, {"en": "Hi {{first_name}}, " + "y " * 150}))


# --- a warehouse with predictions, copied for each test ----------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    home = tmp_path_factory.mktemp("scored")
    generate_history(home, customers=6_000, seed=31, end=date(2026, 11, 1), progress=False)
    assert materialize(home, "*gold/churn_prediction", as_of=AS_OF).success
    return home


@pytest.fixture
def home(scored, tmp_path):
    shutil.copy(scored / "warehouse.duckdb", tmp_path / "warehouse.duckdb")
    return tmp_path


def campaign(home, fake: FakeAnthropic | None = None, cap: int = 1000, raise_on_error: bool = True, **anthropic):
    resources = {"campaign_policy": CampaignPolicyResource.from_settings(Settings(), max_messages_per_run=cap)}
    if fake is not None:
        resources["anthropic"] = AnthropicResource.from_settings(
            Settings(), api_key="test-key-not-a-secret", base_url=fake.url, **anthropic
        )
    result = materialize(home, SELECT, as_of=AS_OF, raise_on_error=raise_on_error, **resources)
    meta = {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    return result, meta.get(SELECT, {})


def messages(home) -> list[dict]:
    cur_cols = [
        r[0]
        for r in query(
            home,
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema='campaigns' AND table_name='retention_messages' "
            "ORDER BY ordinal_position",
        )
    ]
    rows = query(home, "SELECT * FROM campaigns.retention_messages ORDER BY created_at")
    return [dict(zip(cur_cols, r)) for r in rows]


def at_risk(home) -> int:
    return one(home, "SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1")


def decision_of(m) -> Decision:
    return Decision(m["style"], tuple(m["languages"].split(",")), m["offer"], m["urgency"], m["season"])


def assert_all_valid(home, msgs):
    names = dict(query(home, "SELECT user_id, firstname FROM silver.churn_users"))
    for m in msgs:
        texts = json.loads(m["texts"])
        name = names[m["user_id"]]
        unpersonalized = {k: v.replace(name, "{{first_name}}", 1) for k, v in texts.items()}
        assert problems(decision_of(m), m["subject"], unpersonalized) == [], m


# --- offline ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_offline_every_at_risk_customer_within_the_cap_gets_a_valid_message(home):
    result, meta = campaign(home, cap=300)
    assert meta["mode"].startswith("offline") and meta["api_calls"] == 0
    msgs = messages(home)
    assert len(msgs) == 300 == meta["customers_targeted"] and {m["status"] for m in msgs} == {"ready"}
    assert len({m["user_id"] for m in msgs}) == 300
    # The 300 highest-risk customers (then value).
    expected = [
        r[0]
        for r in query(
            home,
            """SELECT p.user_id
        FROM gold.churn_prediction p JOIN gold.churn_features f USING (user_id)
        WHERE churn_prediction = 1 ORDER BY churn_probability DESC, f.total_amount DESC, p.user_id LIMIT 300""",
        )
    ]
    assert sorted(m["user_id"] for m in msgs) == sorted(expected)
    assert_all_valid(home, msgs)
    assert meta["validation_pass_rate"] == 1.0
    # The outbox: every ready message, the source system's customer id, no contact data.
    outbox = [json.loads(line) for line in open(meta["outbox"])]
    assert len(outbox) == 300 and {o["user_id"] for o in outbox} == {m["user_id"] for m in msgs}
    emails = {r[0] for r in query(home, "SELECT email FROM bronze.churn_users_bronze")}
    raw = open(meta["outbox"]).read()
    assert not any(e in raw for e in list(emails)[:2000]) and "address" not in raw and "email" not in raw
    # A second cycle, unchanged data: nobody inside the cooldown is written to again.
    _, meta2 = campaign(home, cap=300)
    assert meta2["customers_in_cooldown"] == 300 and len(messages(home)) == 300 + meta2["customers_targeted"]
    assert not {m["user_id"] for m in messages(home)[300:]} & {m["user_id"] for m in msgs}


# --- against the fake API, through the real SDK --------------------------------------------------------


@pytest.mark.slow
def test_success_no_pii_cached_rules_and_dedup(home):
    with FakeAnthropic() as fake:
        _, meta = campaign(home, fake)
    msgs = messages(home)
    assert len(msgs) == min(1000, at_risk(home)) and {m["status"] for m in msgs} == {"ready"}
    assert {m["generator"] for m in msgs} == {"claude-haiku-5-5"}
    assert_all_valid(home, msgs)
    # One call per distinct decision, not per customer.
    distinct = len({decision_of(m) for m in msgs})
    assert meta["api_calls"] == len(fake.requests) == meta["distinct_decisions"] == distinct < len(msgs) / 5
    assert sum(m["cost_usd"] for m in msgs) == pytest.approx(meta["cost_usd"]) and meta["cost_usd"] > 0
    for r in fake.requests:
        assert r["headers"]["Authorization"] == "Bearer test-key-not-a-secret"
        system = r["body"]["system"]
        assert system[0]["cache_control"] == {"type": "ephemeral"} and "apparel retailer" in system[0]["text"]
        assert "temperature" not in r["body"]
    people = query(home, "SELECT id, firstname, lastname, email, address FROM bronze.churn_users_bronze")
    assert people and None not in {v for row in people for v in row}
    assert_no_personal_data(fake.requests, people)
    # Next cycle, unchanged data: nobody new to write to inside the cooldown, zero calls.
    with FakeAnthropic() as fake2:
        _, meta2 = campaign(home, fake2)
    assert len(fake2.requests) == 0 and meta2["api_calls"] == 0


@pytest.mark.slow
def test_identical_decisions_are_not_asked_again_next_cycle(home):
    with FakeAnthropic() as fake:
        campaign(home, fake, cap=200)
        first = len(fake.requests)
        campaign(home, fake, cap=200)  # 200 other customers, mostly the same decisions
    assert first > 0 and len(fake.requests) - first < first
    assert len(set(fake.decisions_requested())) == len(fake.decisions_requested())  # never the same decision twice


@pytest.mark.slow
@pytest.mark.parametrize("error", ["429", "529", "500"])
def test_transient_errors_are_retried_by_the_sdk(home, error):
    with FakeAnthropic() as fake:
        fake.script.extend([error, error])
        _, meta = campaign(home, fake, cap=20, max_concurrency=1)
    assert {m["status"] for m in messages(home)} == {"ready"}
    assert {m["generator"] for m in messages(home)} == {"claude-haiku-5-5"}
    assert len(fake.requests) == meta["distinct_decisions"] + 2
    if error == "429":  # retry-after: 1 is obeyed
        assert fake.requests[1]["at"] - fake.requests[0]["at"] >= 0.9


@pytest.mark.slow
def test_a_timeout_is_retried(home):
    with FakeAnthropic() as fake:
        fake.script.append("sleep3")
        _, meta = campaign(home, fake, cap=10, max_concurrency=1, timeout_seconds=1.0)
    assert {m["status"] for m in messages(home)} == {"ready"} and len(fake.requests) == meta["distinct_decisions"] + 1


@pytest.mark.slow
def test_malformed_output_gets_one_corrective_turn_then_the_template(home):
    with FakeAnthropic() as fake:
        fake.script.extend(["malformed", "ok"])  # the first decision: fixed on the corrective turn
        fake.script.extend(["invalid", "malformed"])  # the second: template
        _, meta = campaign(home, fake, cap=50, max_concurrency=1)
    msgs = messages(home)
    assert {m["status"] for m in msgs} == {"ready"}
    corrective = fake.requests[1]["body"]["messages"]
    assert len(corrective) == 3 and "broke these rules" in corrective[2]["content"]
    fallbacks = [m for m in msgs if m["generator"] == "template"]
    assert fallbacks and all("template after model invalid" in m["detail"] for m in fallbacks)
    assert len({m["input_hash"] for m in fallbacks}) == 1
    assert_all_valid(home, msgs)


@pytest.mark.slow
def test_a_refusal_falls_back_to_the_template(home):
    with FakeAnthropic() as fake:
        fake.script.append("refusal")
        campaign(home, fake, cap=20, max_concurrency=1)
    refused = [m for m in messages(home) if m["detail"] and "refused" in m["detail"]]
    assert refused and {m["generator"] for m in refused} == {"template"} and {m["status"] for m in refused} == {"ready"}


@pytest.mark.slow
def test_without_fallback_statuses_say_what_happened(home):
    with FakeAnthropic() as fake:
        fake.script.extend(["refusal", "invalid", "invalid"])
        materialize(
            home,
            SELECT,
            as_of=AS_OF,
            anthropic=AnthropicResource.from_settings(Settings(), api_key="k", base_url=fake.url, max_concurrency=1),
            campaign_policy=CampaignPolicyResource.from_settings(
                Settings(), max_messages_per_run=40, fallback_to_template=False
            ),
        )
    statuses = {m["status"] for m in messages(home)}
    assert {"refused", "invalid", "ready"} <= statuses
    assert all(m["outbox"] is None for m in messages(home) if m["status"] != "ready")


@pytest.mark.slow
def test_spend_limit_stops_the_run_cleanly_without_retrying(home):
    with FakeAnthropic() as fake:
        fake.script.append("spend_limit")
        result, meta = campaign(home, fake, cap=100, max_concurrency=1)
    assert result.success
    assert len(fake.requests) == 1  # not retried, and no call after it
    assert "spend limit" in meta["stopped_early"]
    assert {m["status"] for m in messages(home)} == {"skipped_budget"}
    assert meta["customers_targeted"] == len(messages(home))


@pytest.mark.slow
def test_the_budget_holds(home):
    with FakeAnthropic() as fake:
        # One call costs ~0.0035 $ (1,500 cached-write tokens + output); 0.01 $ pays for two.
        _, meta = campaign(home, fake, cap=500, max_concurrency=2, run_budget_usd=0.01)
    assert 0 < meta["cost_usd"] <= 0.01
    statuses = {m["status"] for m in messages(home)}
    assert statuses == {"ready", "skipped_budget"}
    assert len(fake.requests) <= 3


@pytest.mark.slow
def test_a_killed_run_loses_nothing_and_does_not_ask_again(home, tmp_path):
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "DAGSTER_HOME": str(tmp_path / "dh"),
        "CHURN_AS_OF": AS_OF,
        "ANTHROPIC_API_KEY": "test-key",
        "CHURN_CAMPAIGN_MAX_MESSAGES": "400",
    }
    with FakeAnthropic(latency=0.05) as fake:
        env["ANTHROPIC_BASE_URL"] = fake.url
        cmd = [sys.executable, "-m", "churn_assets.cli", "run", "--select", SELECT]
        killed = subprocess.run(cmd, env={**env, "CHURN_TEST_KILL_AT": "after_generation:5"}, capture_output=True)
        assert killed.returncode == -signal.SIGKILL
        before = messages(home)
        asked_first = list(fake.decisions_requested())
        assert len(before) > 0 and all(m["outbox"] is None for m in before)
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = messages(home)
    # Nothing generated before the kill was lost or asked for again...
    assert {m["message_id"] for m in before} <= {m["message_id"] for m in after}
    generated_before = {m["input_hash"] for m in before}
    asked_again = [d for d in fake.decisions_requested()[len(asked_first) :]]
    assert not {json.dumps(json.loads(d), sort_keys=True) for d in asked_again} & {
        json.dumps(
            {
                "style": m["style"],
                "languages": m["languages"].split(","),
                "offer": m["offer"],
                "urgency": m["urgency"],
                "season": m["season"],
            },
            sort_keys=True,
        )
        for m in before
    }
    assert generated_before
    # ...no customer got two messages (the re-run is a run of its own: its cap of 400 goes
    # to customers not yet written to), and every ready message reached an outbox.
    assert len(after) == len({m["user_id"] for m in after}) == len(before) + 400
    assert all(m["outbox"] for m in after if m["status"] == "ready")
    lines = [json.loads(line) for f in (home / "outbox").glob("*.jsonl") for line in open(f)]
    assert sorted(o["message_id"] for o in lines) == sorted(m["message_id"] for m in after if m["status"] == "ready")


# --- copy checked as strictly as a mailer would -------------------------------------------------------

SHORT = Decision("short", ("en", "fr"), "free_shipping", "urgent", "winter")
LONG = Decision("long", ("en",), "free_shipping", "normal", "summer")
GOOD_SHORT = {
    "en": "Hi {{first_name}}, your next order ships free with our warm knits. Until Sunday only.",
    "fr": "Bonjour {{first_name}}, la livraison offerte avec nos mailles chaudes.",
}
GOOD_LONG_SUBJECT = "Your next order ships free"
GOOD_LONG = {
    "en": "Hi {{first_name}},\n\nSummer is here and so are our linen shirts. Your next order ships free: "
    "pick your favourites whenever you like, and returns stay free for 30 days. Have a look at the "
    "new pieces and choose what you like best."
}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (" Claim it at https://evil.example/win", "link"),
        (" Shop evil.example today.", "link"),
        (" See www.x.com", "link"),
        (" Write to win@evil.example", "link"),
        (" <script>alert(1)</script>", "markup"),
        (" <b>now</b>", "markup"),
        (" &amp; more", "markup"),
        (" [Shop now](shop)", "markup"),
        (" Use {{discount_code}}", "placeholder"),
        (" Dear [Name]", "placeholder"),
        (" \x07", "control character"),
        (" \u202eevil", "control character"),
        (" 50% off everything", "percentage 50 %"),
        (" 15% off too", "percentage 15 %"),  # 15 % is the discount, not this decision's free shipping
        (" Save $20 today", "amount"),
        (" Save 20 EUR today", "amount"),
        (" Plus 3 for 2 on shirts", "offers bundle"),
        (" And a discount code", "offers discount"),
        (" Free gift inside", "not the decided one"),
    ],
)
def test_each_mailer_rule(extra, expected):
    assert problems(SHORT, None, GOOD_SHORT) == [] and problems(LONG, GOOD_LONG_SUBJECT, GOOD_LONG) == []
    for decision, subject, texts in ((SHORT, None, GOOD_SHORT), (LONG, GOOD_LONG_SUBJECT, GOOD_LONG)):
        found = problems(decision, subject, {**texts, "en": texts["en"] + extra})
        assert any(expected in p for p in found), (extra, found)
    if "\x07" not in extra and "\u202e" not in extra:  # a subject is checked the same way
        found = problems(LONG, GOOD_LONG_SUBJECT + extra, GOOD_LONG)
        assert any(expected in p for p in found), (extra, found)


def test_subject_rules_and_placeholders():
    for bad in ("Something new\nBcc: x@y.z", "Something new\r\nBcc: x@y.z", "New\u2028Bcc: x", "Ships free\x00"):
        assert "subject has a line break or control character" in problems(LONG, bad, GOOD_LONG)
    # The subject is never personalized: a placeholder there would reach the customer as is.
    assert "has a leftover placeholder" in problems(LONG, "For you, {{first_name}}", GOOD_LONG)
    # Line breaks stay allowed in a body; the offers of the decision itself pass.
    assert (
        problems(
            Decision("short", ("en",), "discount", "urgent", "winter"),
            None,
            {"en": "Hi {{first_name}},\n15% off your next order with our warm knits."},
        )
        == []
    )
    assert (
        problems(
            Decision("short", ("en", "es"), "bundle", "urgent", "winter"),
            None,
            {
                "en": "Hi {{first_name}}, 3 pieces for the price of 2 with our warm knits.",
                "es": "Hola {{first_name}}, 3 prendas por el precio de 2 con nuestro punto cálido.",
            },
        )
        == []
    )
    # No false alarm on a missing space after a full stop, decimals or "30 days".
    assert (
        problems(
            SHORT,
            None,
            {
                **GOOD_SHORT,
                "en": "Hi {{first_name}}, your next order ships free.Until Sunday, 30 days of free returns.",
            },
        )
        == []
    )


def test_length_uses_the_real_first_name():
    text = {
        "en": "Hi {{first_name}}, your next order ships free with our warm knits, new coats and boots. "
        "Have a look and choose what you like."
    }
    d = Decision("short", ("en",), "free_shipping", "urgent", "winter")
    assert len(text["en"]) == 125
    assert problems(d, None, text, first_name="Al") == []  # 113 characters to send
    assert problems(d, None, text, first_name="Maximiliana Alexandrina Josefina-Marie") == []  # 38: 149
    long_name = "X" * 40  # 151: still fits
    assert problems(d, None, text, first_name=long_name) == []
    # 139 with the placeholder: the old check (a 20-character name) passed it.
    longer = {"en": text["en"] + " Until Sunday."}
    assert problems(d, None, longer, first_name="Al") == []
    assert any("165 characters with a 40-character name" in p for p in problems(d, None, longer, first_name=long_name))
    # Without a name (a copy shared by many customers), the longest name counts.
    assert problems(d, None, longer) == problems(d, None, longer, first_name=long_name) != []
    # Every template fits every name, in every language and decision.
    for style in ("short", "long"):
        for langs in (("en",), ("en", "fr"), ("en", "es")):
            for offer in ("discount", "free_shipping", "bundle"):
                for season in ("winter", "spring", "summer", "autumn"):
                    for urgency in ("urgent", "normal"):
                        dd = Decision(style, langs, offer, urgency, season)
                        assert problems(dd, *template_copy(dd), first_name=long_name) == [], dd


def test_a_text_with_any_problem_is_never_ready():
    from churn_assets.defs.campaigns.generation import Generation
    from churn_assets.defs.campaigns.messages import choose_copy

    d = Decision("short", ("en",), "free_shipping", "urgent", "winter")
    fits_short_names = Generation(d, "claude", "ok", None, {"en": "Hi {{first_name}}, your " + "knits " * 20})  # 143
    assert choose_copy(fits_short_names, "Al", True).copy is fits_short_names
    long_name = choose_copy(fits_short_names, "X" * 40, True)
    assert (long_name.status, long_name.copy.generator, long_name.model_error) == ("ready", "template", "invalid copy")
    assert "characters with a 40-character name" in long_name.detail
    no_fallback = choose_copy(fits_short_names, "X" * 40, False)
    assert (no_fallback.status, no_fallback.copy) == ("invalid", None)
    # Offline, a template with a problem is not sent either.
    broken_template = Generation(d, "template", "ok", None, {"en": "Hi {{first_name}}, see www.x.com"})
    offline = choose_copy(broken_template, "Al", True)
    assert (offline.status, offline.copy) == ("invalid", None)


def test_one_generation_becomes_one_message_per_customer_paid_once():
    from churn_assets.defs.campaigns.generation import Generation
    from churn_assets.defs.campaigns.messages import message_rows
    from churn_assets.defs.campaigns.run import CampaignResult

    d = Decision("short", ("en",), "free_shipping", "urgent", "winter")
    gen = Generation(
        d,
        "claude",
        "ok",
        None,
        {"en": "Hi {{first_name}}, your " + "knits " * 20},
        api_calls=1,
        input_tokens=900,
        output_tokens=120,
        cost_usd=0.002,
        checked=1,
        passed=1,
    )
    customers = [
        {"user_id": "u1", "firstname": "Al", "canal": "MOBILE"},
        {"user_id": "u2", "firstname": "X" * 40, "canal": "PHONE"},
        {"user_id": "u3", "firstname": "Bea\u202e", "canal": "MOBILE"},
    ]
    kwargs = dict(key="k", run_id="r", prompt_version="v", fallback_to_template=True)
    rows = message_rows(gen, customers, from_cache=False, **kwargs)
    assert [r.user_id for r in rows] == ["u1", "u2", "u3"] and len({r.message_id for r in rows}) == 3
    paid = [(r.input_tokens, r.output_tokens, r.cost_usd) for r in rows]
    assert paid == [(900, 120, 0.002), (0, 0, 0.0), (0, 0, 0.0)]
    # The 40-character name makes the model's copy too long: that customer gets the template.
    assert [(r.status, r.generator, r.model_error) for r in rows] == [
        ("ready", "claude", None),
        ("ready", "template", "invalid copy"),
        ("ready", "claude", None),
    ]
    assert json.loads(rows[2].texts)["en"].startswith("Hi Bea, your knits")  # the bidi control is gone
    cached = message_rows(gen, customers[:1], from_cache=True, **kwargs)
    assert (cached[0].input_tokens, cached[0].cost_usd) == (0, 0.0)

    result = CampaignResult()
    result.count_generation(gen, from_cache=False)
    result.count_messages(rows)
    result.count_generation(gen, from_cache=True)  # checked and paid for when it was cached
    result.count_messages(cached)
    assert (result.api_calls, result.input_tokens, result.checked, result.passed) == (1, 900, 1, 1)
    assert result.statuses == {"ready": 4} and result.by_generator == {"claude": 3, "template": 1}
    assert result.model_errors == {"invalid copy": 1}
    assert result.degradation() == (
        "1 of 4 messages without the model's copy (invalid copy 1); 1 sent with the template instead"
    )


def test_message_rows_match_the_table_the_warehouse_creates():
    from churn_assets.defs.campaigns.messages import MESSAGE_COLUMNS
    from churn_assets.warehouse import ensure_campaign_tables

    con = duckdb.connect()
    ensure_campaign_tables(con)
    ensure_campaign_tables(con)  # idempotent: every run calls it
    columns = [r[0] for r in con.execute("DESCRIBE campaigns.retention_messages").fetchall()]
    assert MESSAGE_COLUMNS.split(", ") == columns
    assert {r[0] for r in con.execute("SHOW TABLES FROM campaigns").fetchall()} >= {
        "copy_cache",
        "retention_messages",
        "outbox_files",
    }


def _padded(decision: dict) -> dict:
    """Short copy of 137 characters with the placeholder: 163 with a 40-character name."""
    texts = {lang: (t + " Have a look" + " and more" * 20)[:136] + "." for lang, t in tamper(decision)["texts"].items()}
    return {"subject": None, "texts": texts} if decision["style"] == "short" else tamper(decision)


def _break(rule: str):
    return {
        "url": lambda d: tamper(d, en=" Claim it at https://evil.example/win"),
        "bare domain": lambda d: tamper(d, en=" Shop evil.example today."),
        "www": lambda d: tamper(d, en=" See www.x.com"),
        "markup": lambda d: tamper(d, en=" <script>alert(1)</script>"),
        "header injection": lambda d: {**tamper(d), "subject": "Something new\nBcc: x@y.z"},
        "control character": lambda d: tamper(d, en=" \x1b[31m"),
        "placeholder": lambda d: tamper(d, en=" Use {{discount_code}}."),
        "wrong offer": lambda d: tamper(d, en=" 50% off everything!"),
        "amount": lambda d: tamper(d, en=" Save $20 today."),
        "length": _padded,
    }[rule]


@pytest.mark.parametrize(
    "rule, evidence, problem",
    [
        ("url", "evil.example", "link"),
        ("bare domain", "evil.example", "link"),
        ("www", "www.x.com", "link"),
        ("markup", "<script>", "markup"),
        ("header injection", "Bcc:", "line break"),
        ("control character", "\x1b", "control character"),
        ("placeholder", "{{discount_code}}", "placeholder"),
        ("wrong offer", "50% off", "percentage 50 %"),
        ("amount", "$20", "amount"),
    ],
)
@pytest.mark.slow
def test_a_model_answer_breaking_a_rule_gets_a_corrective_turn_then_the_template(home, rule, evidence, problem):
    with FakeAnthropic(answer=_break(rule)) as fake:
        _, meta = campaign(home, fake, cap=60, max_concurrency=2)
    msgs = messages(home)
    assert len(msgs) == 60 and {m["status"] for m in msgs} == {"ready"}
    # Every decision was asked twice (the answer, then the corrective turn), naming the problem.
    assert len(fake.requests) == 2 * meta["distinct_decisions"]
    corrective = [r["body"]["messages"][2]["content"] for r in fake.requests if len(r["body"]["messages"]) == 3]
    assert len(corrective) == meta["distinct_decisions"] and all(problem in c for c in corrective)
    # Then the template, said in the data and the metadata; the bad copy reached no outbox and no cache.
    assert {m["generator"] for m in msgs} == {"template"} and {m["model_error"] for m in msgs} == {"invalid copy"}
    assert all(problem in m["detail"] for m in msgs)
    assert meta["messages_by_generator"] == {"template": 60} and meta["model_errors"] == {"invalid copy": 60}
    assert meta["validation_pass_rate"] == 0.0
    outbox_text = open(meta["outbox"], encoding="utf-8").read()
    assert evidence not in outbox_text and len(outbox_text.splitlines()) == 60
    assert one(home, "SELECT count(*) FROM campaigns.copy_cache") == 0
    assert_all_valid(home, msgs)


@pytest.mark.slow
def test_copy_too_long_for_a_40_character_name_is_not_sent(home):
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    con.execute("UPDATE silver.churn_users SET firstname = 'Alexandrina-Maximiliana Josefina Marieke'")  # 40
    con.close()
    with FakeAnthropic(answer=_break("length")) as fake:
        _, meta = campaign(home, fake, cap=80, max_concurrency=2)
    msgs = messages(home)
    short = [m for m in msgs if m["style"] == "short"]
    assert short and {m["status"] for m in msgs} == {"ready"}
    # The answer had 137 characters with the placeholder: 163 with this name; it got the template.
    assert {m["generator"] for m in short} == {"template"} and all("40-character name" in m["detail"] for m in short)
    for m in short:
        texts = json.loads(m["texts"]).values()
        assert all(len(t) <= 160 and "Alexandrina-Maximiliana Josefina Marieke" in t for t in texts)
    assert {m["generator"] for m in msgs if m["style"] == "long"} == {"claude-haiku-5-5"}


@pytest.mark.slow
def test_cached_copy_is_checked_again_when_used(home):
    with FakeAnthropic() as fake:
        campaign(home, fake, cap=100)
        # A bad copy in the cache (written by an older, laxer version, or tampered with).
        con = duckdb.connect(str(home / "warehouse.duckdb"))
        key, texts = con.execute(
            "SELECT cache_key, texts FROM campaigns.copy_cache ORDER BY cache_key LIMIT 1"
        ).fetchall()[0]
        bad = {lang: t + " https://evil.example/win" for lang, t in json.loads(texts).items()}
        con.execute("UPDATE campaigns.copy_cache SET texts = ? WHERE cache_key = ?", [json.dumps(bad), key])
        con.close()
        asked = len(fake.requests)
        _, meta = campaign(home, fake, cap=400)  # 400 other customers: most decisions are cached
    msgs = [m for m in messages(home) if m["input_hash"] == key]
    assert meta["cached_copies_rejected"] == 1
    assert meta["cache_hits"] == meta["distinct_decisions"] - (len(fake.requests) - asked)
    assert len(fake.requests) > asked  # the rejected decision was written again
    assert "evil.example" not in "".join(m["texts"] for m in messages(home))
    assert "evil.example" not in "".join(r[0] for r in query(home, "SELECT texts FROM campaigns.copy_cache"))
    assert msgs and {m["status"] for m in msgs} == {"ready"}


# --- the outbox: every ready message in exactly one file ------------------------------------------------


def outbox_files(home) -> tuple[dict[str, list[dict]], list[str]]:
    folder = home / "outbox"
    files = {f.name: [json.loads(line) for line in open(f, encoding="utf-8")] for f in folder.glob("*.jsonl")}
    return files, sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_exactly_once(home, taken: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """Every ready message in exactly one file (those on disk plus any a sender took away),
    the file the warehouse records for it; no marker left, every file handed over."""
    files, markers = outbox_files(home)
    handed = [*files.items(), *(taken or {}).items()]  # a file written again after the sender took it counts twice
    ready = {m["message_id"]: m for m in messages(home) if m["status"] == "ready"}
    seen = Counter(o["message_id"] for _, lines in handed for o in lines)
    assert set(seen) == set(ready) and set(seen.values()) == {1}, seen.most_common(3)
    assert all(ready[o["message_id"]]["outbox"] == name for name, lines in handed for o in lines)
    files.update(taken or {})
    assert markers == [] and one(home, "SELECT count(*) FROM campaigns.outbox_files WHERE handed_over_at IS NULL") == 0
    return files


@pytest.mark.parametrize(
    "point, sender_took_it",
    [
        ("outbox_recorded", False),  # the file's name recorded on its messages, nothing written yet
        ("outbox_file_written", False),  # written and fsynced under the hidden name, not renamed
        ("outbox_renamed", False),  # renamed (handed over), not yet recorded as such
        ("outbox_renamed", True),  # ... and the sender took the file away before the next run
    ],
)
@pytest.mark.slow
def test_outbox_exactly_once_through_kills(home, tmp_path, point, sender_took_it):
    env = {
        **os.environ,
        "CHURN_HOME": str(home),
        "DAGSTER_HOME": str(tmp_path / "dh"),
        "CHURN_AS_OF": AS_OF,
        "CHURN_CAMPAIGN_MAX_MESSAGES": "120",
    }
    cmd = [sys.executable, "-m", "churn_assets.cli", "run", "--select", SELECT]
    killed = subprocess.run(cmd, env={**env, "CHURN_TEST_KILL_AT": point}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    # The kill landed where intended.
    ((name, n),) = query(home, "SELECT file_name, messages FROM campaigns.outbox_files WHERE handed_over_at IS NULL")
    folder, marker = home / "outbox", home / "outbox" / f".{name}.tmp"
    assert n == 120 == one(home, "SELECT count(*) FROM campaigns.retention_messages WHERE outbox = ?", [name])
    if point == "outbox_recorded":
        assert marker.stat().st_size == 0 and not (folder / name).exists()
    elif point == "outbox_file_written":
        assert len(marker.read_text().splitlines()) == 120 and not (folder / name).exists()
    else:
        assert not marker.exists() and len((folder / name).read_text().splitlines()) == 120
    taken = {}
    if sender_took_it:
        taken[name] = [json.loads(line) for line in open(folder / name, encoding="utf-8")]
        (folder / name).unlink()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(messages(home)) == len({m["user_id"] for m in messages(home)}) == 240
    files = assert_exactly_once(home, taken)
    # The killed run's file holds its 120 messages (written again only when it never got
    # its final name); the re-run's file holds the re-run's 120, none of the first run's.
    assert sorted(len(lines) for lines in files.values()) == [120, 120] and name in files


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_generation:3", "outbox_recorded", "outbox_file_written", "outbox_renamed"])
def test_outbox_exactly_once_through_a_step_retry(home, monkeypatch, point):
    from churn_assets import faults

    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("CHURN_TEST_RETRY_AT", point)
    result, meta = campaign(home, cap=120)
    assert result.success
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 1
    run_id = result.run_id
    msgs = messages(home)
    assert {m["run_id"] for m in msgs} == {run_id} and len(msgs) == len({m["user_id"] for m in msgs}) == 120
    files = assert_exactly_once(home)
    assert list(files) == [f"{run_id}.jsonl"]  # one file, never overwritten nor doubled
    if point.startswith("outbox"):
        # The retry found the first attempt's file and finished it; it had nothing new to write.
        assert (meta["outbox_files_recovered"], meta["messages_outboxed"], meta["customers_targeted"]) == (1, 0, 0)


@pytest.mark.slow
def test_a_retry_with_more_messages_never_overwrites_a_handed_over_file(home):
    from datetime import datetime
    from pathlib import Path

    from churn_assets.defs.campaigns.run import run_campaign

    args = dict(
        run_id="run-a",
        as_of=datetime.fromisoformat(AS_OF),
        outbox_dir=home / "outbox",
        writer=None,
        model_name="m",
        concurrency=1,
        cooldown_days=7,
    )
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:
        first = run_campaign(con, cap=50, **args)
        before = Path(first.outbox).read_bytes()
        again = run_campaign(con, cap=80, **args)  # the same run once more, now allowed 30 more messages
        assert Path(first.outbox).read_bytes() == before and first.outbox.endswith("run-a.jsonl")
        assert again.outbox.endswith("run-a.2.jsonl") and (again.targets, again.outboxed) == (30, 30)
        last = run_campaign(con, cap=80, **args)  # the run's cap is spent
        assert (last.targets, last.outbox) == (0, None)
    finally:
        con.close()
    assert sorted(len(v) for v in assert_exactly_once(home).values()) == [30, 50]
    # The message id is what a sender de-duplicates on: the warehouse's, stable across rewrites.
    handed_over = {o["message_id"] for v in outbox_files(home)[0].values() for o in v}
    assert handed_over == {m["message_id"] for m in messages(home)}


# --- degradation is visible -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_total_outage_is_visible(home):
    from churn_assets.summary import cycle_summary

    with FakeAnthropic(default="500") as fake:
        result, meta = campaign(home, fake, cap=100, max_retries=1)
    assert result.success
    decisions = meta["distinct_decisions"]
    assert decisions > 3 and len(fake.requests) == 2 * decisions  # each call, and the SDK's one retry
    assert {m["status"] for m in messages(home)} == {"ready"}
    assert meta["messages_by_generator"] == {"template": 100}
    assert meta["model_errors"] == {"HTTP 500": 100} and meta["api_errors"] == {"HTTP 500": decisions}
    assert "validation_pass_rate" not in meta  # nothing was checked: no rate that reads as a pass
    expected = "100 of 100 messages without the model's copy (HTTP 500 100); 100 sent with the template instead"
    assert meta["degraded"] == expected
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "model_wrote_the_copy"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and check.description == expected
    assert [line for line in cycle_summary(Settings(home=home)).splitlines() if line.startswith("campaign")] == [
        f"campaign   last run DEGRADED: {expected}"
    ]


@pytest.mark.slow
def test_a_partial_degradation_is_visible_and_a_healthy_run_passes(home):
    from churn_assets.summary import cycle_summary

    with FakeAnthropic() as fake:
        fake.script.extend(["500", "500", "refusal"])  # the first decision fails, the second is refused
        result, meta = campaign(home, fake, cap=100, max_retries=1, max_concurrency=1)
    msgs = messages(home)
    failed = [m for m in msgs if m["model_error"] == "HTTP 500"]
    refused = [m for m in msgs if m["model_error"] == "refused"]
    assert failed and refused and len({m["input_hash"] for m in failed}) == len({m["input_hash"] for m in refused}) == 1
    assert meta["model_errors"] == {"HTTP 500": len(failed), "refused": len(refused)}
    assert meta["api_errors"] == {"HTTP 500": 1}
    assert meta["messages_by_generator"] == {
        "template": len(failed) + len(refused),
        "claude-haiku-5-5": 100 - len(failed) - len(refused),
    }
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "model_wrote_the_copy"]
    assert not check.passed and "DEGRADED" in cycle_summary(Settings(home=home))
    with FakeAnthropic() as fake:
        result, meta = campaign(home, fake, cap=100)
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "model_wrote_the_copy"]
    assert check.passed and meta["degraded"] == "no" and meta["model_errors"] == {}
    assert "campaign   last run 100 messages, all with the model's copy" in cycle_summary(Settings(home=home))
    _, meta = campaign(home, cap=50)  # offline: the templates are the plan, not a degradation
    assert meta["degraded"] == "no" and "from the offline templates" in cycle_summary(Settings(home=home))


@pytest.mark.slow
def test_targets_are_the_exact_ranking_whether_the_top_form_fills_the_cap_or_not(home):
    """The top form (rank the predictions, then look up the chosen) gives the exact form's
    rows: with customers in cooldown, at caps it fills, at a cap above everyone at risk, and when a
    top customer has lost every order in silver (then the exact form answers)."""
    from datetime import timedelta

    from churn_assets.defs.campaigns.targets import TARGETS_SQL, TOP_TARGETS_SQL, select_targets
    from churn_assets.timeutil import utcnow

    campaign(home, cap=25)  # 25 customers in cooldown, and the campaign tables
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:

        def exact(cap: int) -> list[tuple]:
            return con.execute(TARGETS_SQL, [utcnow() - timedelta(days=7), cap]).fetchall()

        def chosen(cap: int) -> list[tuple]:
            targets, in_cooldown = select_targets(con, 7, cap)
            assert in_cooldown == 25
            return [tuple(t.values()) for t in targets]

        eligible = con.execute("SELECT count(*) FROM gold.churn_prediction WHERE churn_prediction = 1").fetchall()
        everyone = eligible[0][0] - 25 + 10
        for cap in (1, 37, 400, everyone):
            assert chosen(cap) == exact(cap), cap
            # Up to everyone at risk, the top form alone answers (the exact form is the fallback).
            since = utcnow() - timedelta(days=7)
            top = con.execute(TOP_TARGETS_SQL, [since, cap, since, cap]).fetchall()
            assert (len(top) == cap) == (cap < everyone), cap
        assert len(chosen(everyone)) == everyone - 10  # the cap was above everyone at risk
        # Each target's last order is its latest order in silver (one of them, on a tied date).
        last = {row[0]: row[6:9] for row in chosen(400)}
        latest = con.execute(
            """SELECT user_id, max(creation_date), list((amount, item_count)) FROM silver.churn_orders o
               WHERE user_id IN (SELECT unnest(?))
                 AND creation_date = (SELECT max(creation_date) FROM silver.churn_orders WHERE user_id = o.user_id)
               GROUP BY user_id""",
            [list(last)],
        ).fetchall()
        assert len(latest) == len(last) == 400
        for user_id, date_, orders in latest:
            amount, items, last_date = last[user_id]
            assert last_date == date_ and (amount, items) in [tuple(o) for o in orders], user_id
        # A cap that cuts through customers of one probability: the cut keeps them all, and value
        # then key order them, as in the exact form.
        tied = [row[0] for row in exact(15)[10:15]]
        con.execute(
            "UPDATE gold.churn_prediction SET churn_probability = ? WHERE user_id IN (SELECT unnest(?))",
            [exact(15)[10][4], tied],
        )
        since = utcnow() - timedelta(days=7)
        for cap in (11, 12, 13, 14):
            # The top form alone (not its fallback) returns the exact ranking.
            assert con.execute(TOP_TARGETS_SQL, [since, cap, since, cap]).fetchall() == exact(cap), cap
            assert chosen(cap) == exact(cap), cap
        assert len({row[4] for row in exact(15)[10:15]}) == 1
        # A top customer without orders (silver changed under gold): left out, the next one taken.
        first = chosen(37)
        con.execute("DELETE FROM silver.churn_orders WHERE user_id = ?", [first[0][0]])
        after = chosen(37)
        assert after == exact(37) and len(after) == 37
        assert first[0][0] not in {row[0] for row in after} and after[:36] == first[1:]
    finally:
        con.close()
