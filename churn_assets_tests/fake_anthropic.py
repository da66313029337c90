"""A stand-in for the Anthropic Messages API on 127.0.0.1, for the real SDK to talk to.

It answers ``POST /v1/messages`` like the API: a message whose text is the JSON copy the
rules prompt asks for, with usage (cache write on the first call, cache reads after),
or an error in the API's shape. What each request gets is scripted: ``script`` is
consumed in order (one behaviour per request), then ``default`` applies; ``latency`` and
``error_rate`` make a slow, flaky API for the benchmark. Every request is recorded.

A behaviour is a name (``"ok"``, ``"500"``, ``"refusal"``...) or a callable that gets the
requested decision (a dict) and returns the answer: a dict (sent as its JSON) or raw text.
``answer`` is the callable behind ``"ok"`` (by default ``copy_for``, copy that follows every
rule); a test sets it to one that breaks a rule, e.g. ``lambda d: tamper(d, en=" https://evil.example/win")``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PHRASES = {
    "offer": {
        "discount": {
            "en": "take 15% off your next order",
            "fr": "profitez de 15 % de remise",
            "es": "aprovecha un 15 % de descuento",
        },
        "free_shipping": {
            "en": "your next order ships free",
            "fr": "votre prochaine commande est livrée gratuitement",
            "es": "tu próximo pedido tiene envío gratis",
        },
        "bundle": {
            "en": "pick 3 pieces and pay for 2",
            "fr": "choisissez 3 pièces et payez-en 2",
            "es": "elige 3 prendas y paga 2",
        },
    },
    "season": {
        "winter": {"en": "with our warm knits", "fr": "avec nos mailles chaudes", "es": "con nuestro punto cálido"},
        "spring": {
            "en": "with our light jackets",
            "fr": "avec nos vestes légères",
            "es": "con nuestras chaquetas ligeras",
        },
        "summer": {"en": "with our linen pieces", "fr": "avec nos pièces en lin", "es": "con nuestras prendas de lino"},
        "autumn": {"en": "with our new coats", "fr": "avec nos nouveaux manteaux", "es": "con nuestros abrigos nuevos"},
    },
    "urgent": {"en": "Until Sunday only.", "fr": "Jusqu'à dimanche.", "es": "Hasta el domingo."},
    "greet": {"en": "Hello {{first_name}},", "fr": "Bonjour {{first_name}},", "es": "Hola {{first_name}},"},
    "more": {
        "en": (
            "The new collection is in, and we kept your favourite styles in stock. "
            "Have a look and choose what you like; returns are free for 30 days."
        ),
        "fr": (
            "La nouvelle collection est arrivée et nous avons gardé vos styles préférés en stock. "
            "Jetez un œil et choisissez ce qui vous plaît ; les retours sont gratuits pendant 30 jours."
        ),
        "es": (
            "La nueva colección ya está aquí y tenemos tus estilos favoritos en stock. "
            "Echa un vistazo y elige lo que te guste; las devoluciones son gratis durante 30 días."
        ),
    },
}


def tamper(decision: dict, subject: str | None = None, **append: str) -> dict:
    """The good copy for ``decision`` with text appended to the versions named (``en=...``)
    and, for long copy, to the subject."""
    answer = copy_for(decision)
    for lang, extra in append.items():
        if lang in answer["texts"]:
            answer["texts"][lang] += extra
    if subject is not None and answer["subject"] is not None:
        answer["subject"] += subject
    return answer


def copy_for(decision: dict) -> dict:
    texts = {}
    for lang in decision["languages"]:
        line = (
            f"{PHRASES['greet'][lang]} {PHRASES['offer'][decision['offer']][lang]} "
            f"{PHRASES['season'][decision['season']][lang]}."
        )
        if decision["urgency"] == "urgent":
            line += " " + PHRASES["urgent"][lang]
        if decision["style"] == "long":
            line += " " + PHRASES["more"][lang]
        texts[lang] = line
    return {"subject": "Something new for you" if decision["style"] == "long" else None, "texts": texts}


class FakeAnthropic:
    def __init__(self, latency: float = 0.0, error_rate: float = 0.0, default="ok", seed: int = 0, answer=copy_for):
        self.script: deque = deque()
        self.default = default
        self.answer = answer
        self.latency = latency
        self.error_rate = error_rate
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._cached = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.monotonic()}
                    )
                    behaviour = fake.script.popleft() if fake.script else fake.default
                    if behaviour == "ok" and fake.error_rate and fake._rng.random() < fake.error_rate:
                        behaviour = fake._rng.choice(["429", "529", "500"])
                if fake.latency:
                    time.sleep(fake.latency)
                fake._answer(self, behaviour, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- answers -------------------------------------------------------------------------------

    def _send(self, handler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.send_header("request-id", f"req_{uuid.uuid4().hex[:12]}")
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, handler, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        self._send(handler, status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

    def _message(self, handler, body: dict, text: str, stop_reason: str = "end_turn") -> None:
        with self._lock:
            first = not self._cached
            self._cached = True
        usage = {
            "input_tokens": 40,
            "output_tokens": max(1, len(text) // 4),
            "cache_creation_input_tokens": 1500 if first else 0,
            "cache_read_input_tokens": 0 if first else 1500,
        }
        content = [{"type": "text", "text": text}] if text else []
        self._send(
            handler,
            200,
            {
                "id": f"msg_{uuid.uuid4().hex[:20]}",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage,
            },
        )

    def _answer(self, handler, behaviour, body: dict) -> None:
        if callable(behaviour):
            answer = behaviour(json.loads(body["messages"][0]["content"]))
            text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
            return self._message(handler, body, text)
        if behaviour == "429":
            return self._error(
                handler,
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                {"retry-after": "1"},
            )
        if behaviour == "529":
            return self._error(handler, 529, "overloaded_error", "Overloaded")
        if behaviour == "500":
            return self._error(handler, 500, "api_error", "Internal server error")
        if behaviour == "spend_limit":
            return self._error(
                handler,
                429,
                "rate_limit_error",
                "You have reached your spend limit for this workspace; raise it to continue.",
                {"x-should-retry": "false"},
            )
        if behaviour.startswith("sleep"):  # "sleep3": answer after 3 s (past the client's timeout)
            time.sleep(float(behaviour[5:]))
            behaviour = "ok"
        if behaviour == "refusal":
            return self._message(handler, body, "", stop_reason="refusal")
        if behaviour == "malformed":
            return self._message(
                handler, body, "Sure! Here is a lovely message for your customer: Hi there, come back soon."
            )
        if behaviour == "invalid":
            return self._message(
                handler, body, json.dumps({"subject": None, "texts": {"en": "We noticed your churn risk is high!"}})
            )
        return self._answer(handler, self.answer, body)

    # --- what the tests read -------------------------------------------------------------------

    def decisions_requested(self) -> list[str]:
        return [r["body"]["messages"][0]["content"] for r in self.requests]
