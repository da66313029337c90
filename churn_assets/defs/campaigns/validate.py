"""Every text, the model's or a template's, is checked against the copy rules before it
can be sent, as strictly as the mailer downstream would read it: no link, no markup, no
control character, no line break in a subject, no leftover placeholder, and no offer,
percentage or amount other than the one decided in code."""

from __future__ import annotations

import re
import unicodedata

from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.templates import PLACEHOLDER

NAME_MAX = 40  # a first name is cut to this many characters before it fills the placeholder
SHORT_MAX = 160  # one SMS / push, with the customer's first name filled in
LONG_MIN, LONG_MAX = 200, 1500
SUBJECT_MAX = 80
# Words the copy must never contain, in every language it may be written in.
FORBIDDEN = {
    "churn or risk": r"churn|\brisk|at[- ]risk|risque|riesgo|abandon|leaving us|quitter|dejarnos",
    "gender": (
        r"\bgender\b|\bmale\b|\bfemale\b|\bwom[ae]n\b|\bm[ae]n\b|\bsir\b|madam|monsieur|madame|mademoiselle|"
        r"señor|señora|genre|género"
    ),
    "channel": (
        r"\bsms\b|text message|e-?mail|\bapp\b|webapp|\bphone\b|mobile|push notification|"
        r"courriel|correo|móvil|t[ée]l[ée]phone"
    ),
    "country": (
        r"france|french|spain|spanish|españa|espagne|espagnol|united states|america|"
        r"états-unis|estados unidos|francia|fran[çc]ais"
    ),
}
# Case-sensitive: "usa" is also a Spanish verb.
FORBIDDEN_EXACT = {"country": r"\bUSA\b|\bU\.S\.?\b|\bUS\b"}
CLOSINGS = (
    r"(best regards|kind regards|regards|cheers|sincerely|cordialement|bien à vous|"
    r"saludos|atentamente|un saludo|the team|l'équipe|el equipo)[\s,.!]*$"
)
LANGUAGE_MARKERS = {
    "en": r"\b(the|your|you|and|with|our)\b",
    "fr": r"\b(le|la|les|votre|vous|avec|nos|et)\b",
    "es": r"\b(el|la|los|tu|con|nuestr[oa]s?|y)\b",
}

# A link a mail client would make clickable: a scheme, www., an e-mail address, or a bare
# domain ("evil.example", "x.com"). The top-level label is all lower or all upper case so
# that a missing space after a full stop ("order.Browse") is not taken for a domain.
LINK = re.compile(
    r"(?i:\b(?:https?|ftp|mailto|tel|sms|javascript|data):|\bwww\.)"
    r"|[\w.+-]+@[\w-]+\.[\w.-]+"
    r"|(?<![\w@.-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[a-z]{2,24}|[A-Z]{2,24})(?![\w-])"
)
# HTML tags (even unclosed), character entities, Markdown links and emphasis.
MARKUP = re.compile(r"<\s*[A-Za-z/!?]|&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+);|\]\(|\*\*|__|`")
# Template syntax a renderer would leave visible or fill in: {{...}}, {x}, [Name], %s, ${x}.
PLACEHOLDERS = re.compile(r"[{}]|\[[^\]]{0,40}\]|%(?:\(\w+\))?[sd]\b|\$\{?[A-Za-z_]")
# Line and paragraph separators besides "\n", and every control or format character
# (C0/C1 controls, zero-width and bidi overrides): none belongs in copy.
_LINE_BREAKS = {"\u2028", "\u2029", "\x85"}

# What each offer sounds like, in every language the copy is written in. A text may speak
# only of the decided offer: naming another is a promise the business did not make.
OFFER_WORDS = {
    "discount": r"discount|\bcoupon|voucher|promo ?code|code promo|réduction|remise|rabais|descuento|rebaja|cupón",
    "free_shipping": (
        r"free (?:shipping|delivery)|ships? (?:for )?free|shipping (?:is |on us)|delivered (?:for )?free|"
        r"livraison (?:offerte|gratuite)|livrée? gratuitement|frais de port|"
        r"env[íi]o (?:gratis|gratuito)|entrega gratuita"
    ),
    "bundle": (
        r"\bbundle|for the price of|pay for \d|\b(?:3|three) for (?:2|two)\b|\d\s*x\s*\d|offre group[ée]e|"
        r"pour le prix de|payez-en|por el precio de|\b(?:nuestro|un|el) pack\b|\bpaga \d"
    ),
}
# Offers the business never makes.
OTHER_OFFERS = (
    r"half[- ](?:price|off)|moitié prix|mitad de precio|\bbogo\b|buy one,? get one|2\s*x\s*1|free gift|gift card|"
    r"carte cadeau|tarjeta regalo|cadeau offert|regalo|cash ?back|\bsale\b|\bsoldes\b|\brebajas\b"
)
PERCENT = re.compile(r"(\d+(?:[.,]\d+)?)\s*(?:%|percent\b|per cent\b|pour ?cent\b|por ciento\b)", re.IGNORECASE)
AMOUNT = re.compile(
    r"[$€£¥]\s*\d|\d(?:[\d.,]*\d)?\s*(?:[$€£¥]|(?:eur|euros?|usd|dollars?|pounds?|bucks)\b)", re.IGNORECASE
)
DISCOUNT_PERCENT = 15.0  # what "discount" means (prompts.RULES and the templates say 15 %)


def _controls(text: str, newlines_allowed: bool) -> bool:
    for ch in text:
        if ch == "\n" and newlines_allowed:
            continue
        if ch in _LINE_BREAKS or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return True
    return False


def offer_problems(decision: Decision, parts: list[str]) -> list[str]:
    """Any offer, percentage or amount in the copy that is not the decided offer."""
    out = []
    text = "\n".join(parts)
    for offer, pattern in OFFER_WORDS.items():
        if offer != decision.offer and re.search(pattern, text, re.IGNORECASE):
            out.append(f"offers {offer.replace('_', ' ')} but the decision is {decision.offer.replace('_', ' ')}")
    if re.search(OTHER_OFFERS, text, re.IGNORECASE):
        out.append("names an offer that is not the decided one")
    allowed = {DISCOUNT_PERCENT} if decision.offer == "discount" else set()
    percents = sorted({float(p.replace(",", ".")) for p in PERCENT.findall(text)} - allowed)
    if percents:
        out.append(f"percentage {', '.join(f'{p:g} %' for p in percents)} is not the decided offer")
    if AMOUNT.search(text):
        out.append("names an amount of money; the decided offer has none")
    return out


def problems(
    decision: Decision, subject: str | None, texts: dict[str, str], first_name: str | None = None
) -> list[str]:
    """Everything wrong with a copy whose texts still hold the placeholder; empty means it
    may be sent. Lengths count ``first_name`` in place of the placeholder: the customer's
    real name when known, else the longest one (NAME_MAX), so a copy shared by many
    customers fits every one of them."""
    out = []
    name_length = min(len(first_name), NAME_MAX) if first_name is not None else NAME_MAX
    if set(texts) != set(decision.languages):
        out.append(f"languages {sorted(texts)} but {sorted(decision.languages)} required")
    if subject is not None and not isinstance(subject, str):
        out.append("subject is not text")
        subject = None
    if decision.style == "long" and not (subject and 0 < len(subject) <= SUBJECT_MAX):
        out.append(f"long copy needs a subject of at most {SUBJECT_MAX} characters")
    if decision.style == "short" and subject:
        out.append("short copy has no subject")
    if subject and _controls(subject, newlines_allowed=False):
        out.append("subject has a line break or control character")
    for lang, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            out.append(f"{lang}: empty")
            continue
        # A greeting of one or two words, then the name: "Hi {{first_name}}", "Good morning {{first_name}}".
        if text.count(PLACEHOLDER) != 1 or not re.match(r"^\s*[^\s,{]+(\s[^\s,{]+)?,?\s\{\{first_name\}\}", text):
            out.append(f"{lang}: must greet {PLACEHOLDER} once, at the start")
        size = len(text.replace(PLACEHOLDER, "X" * name_length))
        if decision.style == "short" and size > SHORT_MAX:
            out.append(
                f"{lang}: {size} characters with a {name_length}-character name, short copy is at most {SHORT_MAX}"
            )
        if decision.style == "long" and not LONG_MIN <= size <= LONG_MAX:
            out.append(
                f"{lang}: {size} characters with a {name_length}-character name, long copy is {LONG_MIN} to {LONG_MAX}"
            )
        if re.search(CLOSINGS, text.strip(), re.IGNORECASE):
            out.append(f"{lang}: no closing greeting")
        if lang in LANGUAGE_MARKERS and not re.search(LANGUAGE_MARKERS[lang], text, re.IGNORECASE):
            out.append(f"{lang}: does not read as {lang}")
        if _controls(text, newlines_allowed=True):
            out.append(f"{lang}: control character")
    parts = [p for p in [subject or "", *texts.values()] if isinstance(p, str)]
    # The one placeholder of each text is filled in later; the subject's never is.
    unfilled = [subject or "", *(t.replace(PLACEHOLDER, "", 1) for t in parts[1:])]
    if any(LINK.search(part) for part in parts):
        out.append("has a link or domain name")
    if any(MARKUP.search(part) for part in parts):
        out.append("has markup")
    if any(PLACEHOLDERS.search(part) for part in unfilled):
        out.append("has a leftover placeholder")
    out += offer_problems(decision, parts)
    for what, pattern in FORBIDDEN.items():
        if any(re.search(pattern, part, re.IGNORECASE) for part in parts):
            out.append(f"mentions {what}")
    for what, pattern in FORBIDDEN_EXACT.items():
        if any(re.search(pattern, part) for part in parts) and f"mentions {what}" not in out:
            out.append(f"mentions {what}")
    return out
