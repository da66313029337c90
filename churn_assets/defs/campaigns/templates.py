"""The rule-following copy used offline (no API key) and as the fallback for a model text
that fails validation twice. Deterministic: same decision, same text."""

from __future__ import annotations

from churn_assets.defs.campaigns.decide import Decision

PLACEHOLDER = "{{first_name}}"

GREETING = {"en": "Hi {{first_name}},", "fr": "Bonjour {{first_name}},", "es": "Hola {{first_name}},"}
OFFER = {
    "discount": {
        "en": "15% off your next order",
        "fr": "15 % de remise sur votre prochaine commande",
        "es": "un 15 % de descuento en tu próximo pedido",
    },
    "free_shipping": {
        "en": "free shipping on your next order",
        "fr": "la livraison offerte sur votre prochaine commande",
        "es": "envío gratis en tu próximo pedido",
    },
    "bundle": {
        "en": "our bundle deal: 3 pieces for the price of 2",
        "fr": "notre offre groupée : 3 pièces pour le prix de 2",
        "es": "nuestro pack: 3 prendas por el precio de 2",
    },
}
# Short copy (SMS/push) has 160 characters: the offers said briefly.
SHORT_OFFER = {
    "discount": {"en": "15% off your next order", "fr": "15 % de remise", "es": "un 15 % de descuento"},
    "free_shipping": {"en": "free shipping on your next order", "fr": "la livraison offerte", "es": "envío gratis"},
    "bundle": {
        "en": "3 pieces for the price of 2",
        "fr": "3 pièces pour le prix de 2",
        "es": "3 prendas por el precio de 2",
    },
}
SEASON = {
    "winter": {
        "en": "cosy knits and warm layers",
        "fr": "mailles douillettes et couches chaudes",
        "es": "punto acogedor y capas cálidas",
    },
    "spring": {
        "en": "light jackets and fresh colours",
        "fr": "vestes légères et couleurs fraîches",
        "es": "chaquetas ligeras y colores frescos",
    },
    "summer": {
        "en": "linen shirts and summer dresses",
        "fr": "chemises en lin et robes d'été",
        "es": "camisas de lino y vestidos de verano",
    },
    "autumn": {
        "en": "new-season coats and boots",
        "fr": "manteaux et bottes de la nouvelle saison",
        "es": "abrigos y botas de nueva temporada",
    },
}
URGENT = {"en": "Only until Sunday.", "fr": "Jusqu'à dimanche.", "es": "Solo hasta el domingo."}
LONG_BODY = {
    "en": (
        "We have just refreshed the collection with {season}, picked to go with what you chose last time. "
        "As a thank-you for shopping with us, enjoy {offer}. Browse the new pieces, save your favourites and "
        "check out in a couple of clicks; returns stay free for 30 days."
    ),
    "fr": (
        "Nous venons de renouveler la collection avec {season}, choisies pour aller avec vos derniers achats. "
        "Pour vous remercier de votre fidélité, profitez de {offer}. Découvrez les nouveautés, gardez vos coups "
        "de cœur et commandez en quelques clics ; les retours restent gratuits pendant 30 jours."
    ),
    "es": (
        "Acabamos de renovar la colección con {season}, elegidos para combinar con tu última compra. "
        "Para darte las gracias, disfruta de {offer}. Descubre las novedades, guarda tus favoritos y "
        "compra en un par de clics; las devoluciones siguen siendo gratuitas durante 30 días."
    ),
}
SHORT_BODY = {
    "en": "enjoy {offer}, plus {season} just in.",
    "fr": "profitez de {offer}, et {season}.",
    "es": "disfruta de {offer} y {season}.",
}
SUBJECT = {
    "discount": "15% off picked for you",
    "free_shipping": "Your next order ships free",
    "bundle": "3 pieces for the price of 2",
}


def template_copy(decision: Decision) -> tuple[str | None, dict[str, str]]:
    """(subject for long copy, {language: text}) with the first-name placeholder."""
    texts = {}
    for lang in decision.languages:
        offer = (SHORT_OFFER if decision.style == "short" else OFFER)[decision.offer][lang]
        season = SEASON[decision.season][lang]
        urgent = f" {URGENT[lang]}" if decision.urgency == "urgent" else ""
        if decision.style == "short":
            body = SHORT_BODY[lang].format(offer=offer, season=season)
            texts[lang] = f"{GREETING[lang]} {body}{urgent}"
        else:
            body = LONG_BODY[lang].format(offer=offer, season=season)
            texts[lang] = f"{GREETING[lang]}\n\n{body}{urgent}"
    subject = (
        SUBJECT[decision.offer] + (" - this week only" if decision.urgency == "urgent" else "")
        if decision.style == "long"
        else None
    )
    return subject, texts
