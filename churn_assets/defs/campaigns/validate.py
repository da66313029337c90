"""Every text, the model's or a template's, is checked against the copy rules before it
can be sent."""

from __future__ import annotations

import re

from churn_assets.defs.campaigns.decide import Decision
from churn_assets.defs.campaigns.templates import PLACEHOLDER

SHORT_MAX = 160  # one SMS / push, with the name filled in up to 20 characters
LONG_MIN, LONG_MAX = 200, 1500
SUBJECT_MAX = 80
# Words the copy must never contain, in every language it may be written in.
FORBIDDEN = {
    "churn or risk": r"churn|\brisk|at[- ]risk|risque|riesgo|abandon|leaving us|quitter|dejarnos",
    "gender": r"\bgender\b|\bmale\b|\bfemale\b|\bwom[ae]n\b|\bm[ae]n\b|\bsir\b|madam|monsieur|madame|mademoiselle|señor|señora|genre|género",
    "channel": r"\bsms\b|text message|e-?mail|\bapp\b|webapp|\bphone\b|mobile|push notification|courriel|correo|móvil|t[ée]l[ée]phone",
    "country": r"france|french|spain|spanish|españa|espagne|espagnol|united states|america|états-unis|estados unidos|francia|fran[çc]ais",
}
# Case-sensitive: "usa" is also a Spanish verb.
FORBIDDEN_EXACT = {"country": r"\bUSA\b|\bU\.S\.?\b|\bUS\b"}
CLOSINGS = r"(best regards|kind regards|regards|cheers|sincerely|cordialement|bien à vous|saludos|atentamente|un saludo|the team|l'équipe|el equipo)[\s,.!]*$"
LANGUAGE_MARKERS = {
    "en": r"\b(the|your|you|and|with|our)\b",
    "fr": r"\b(le|la|les|votre|vous|avec|nos|et)\b",
    "es": r"\b(el|la|los|tu|con|nuestr[oa]s?|y)\b",
}


def problems(decision: Decision, subject: str | None, texts: dict[str, str]) -> list[str]:
    """Everything wrong with a generated copy; empty means it may be sent."""
    out = []
    if set(texts) != set(decision.languages):
        out.append(f"languages {sorted(texts)} but {sorted(decision.languages)} required")
    if decision.style == "long" and not (subject and 0 < len(subject) <= SUBJECT_MAX):
        out.append("long copy needs a subject of at most 80 characters")
    if decision.style == "short" and subject:
        out.append("short copy has no subject")
    for lang, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            out.append(f"{lang}: empty")
            continue
        # A greeting of one or two words, then the name: "Hi {{first_name}}", "Good morning {{first_name}}".
        if text.count(PLACEHOLDER) != 1 or not re.match(r"^\s*[^\s,{]+(\s[^\s,{]+)?,?\s\{\{first_name\}\}", text):
            out.append(f"{lang}: must greet {PLACEHOLDER} once, at the start")
        size = len(text.replace(PLACEHOLDER, "X" * 20))
        if decision.style == "short" and size > SHORT_MAX:
            out.append(f"{lang}: {size} characters, short copy is at most {SHORT_MAX}")
        if decision.style == "long" and not LONG_MIN <= size <= LONG_MAX:
            out.append(f"{lang}: {size} characters, long copy is {LONG_MIN} to {LONG_MAX}")
        if re.search(CLOSINGS, text.strip(), re.IGNORECASE):
            out.append(f"{lang}: no closing greeting")
        if lang in LANGUAGE_MARKERS and not re.search(LANGUAGE_MARKERS[lang], text, re.IGNORECASE):
            out.append(f"{lang}: does not read as {lang}")
    parts = [p for p in [subject or "", *texts.values()] if isinstance(p, str)]
    for what, pattern in FORBIDDEN.items():
        if any(re.search(pattern, part, re.IGNORECASE) for part in parts):
            out.append(f"mentions {what}")
    for what, pattern in FORBIDDEN_EXACT.items():
        if any(re.search(pattern, part) for part in parts) and f"mentions {what}" not in out:
            out.append(f"mentions {what}")
    return out
