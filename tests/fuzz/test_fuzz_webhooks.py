"""Fuzzing the carrier webhooks through the real ASGI application, signed as each carrier signs.

Mock JSON batches, Telnyx JSON (Ed25519-signed by the test), Twilio and Plivo forms (signed with their
auth tokens), drawn realistic, mutated and nasty (NaN, 1e400, lone surrogates, deep nesting, bytes that
are not UTF-8, percent-escapes of such bytes). Invariants for every request: never a 5xx, no ERROR
logged by the application, a refused request stores nothing, an accepted mock batch stores every
event naming a known call, and the database stays consistent.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from core.events import EVENT_TYPES, LAST_MILLISECOND, NormalizedEvent, _CAMEL
from core.states import END_REASONS
from providers.carriers.base import WebhookRequest
from providers.carriers.plivo.webhook import _grouped, _sign, v3_base
from providers.carriers.twilio.webhook import signature as twilio_signature
from tests.fuzz import budget
from tests.fuzz.jsontext import mostly, spliced
from tests.providers.carriers.test_carrier_fuzz import (
    PUBLIC_URL,
    REQUESTS,
    SEED_IDS,
    TURN,
    assert_database_invariants,
    carrier_config,
    seed_calls,
)

pytestmark = pytest.mark.django_db(transaction=True)

TELNYX_KEY = SigningKey(b"\x33" * 32)
RESEED_EVERY = 100  # examples between fresh seeds: the tables stay small, the calls move through states meanwhile
CHECK_EVERY = 10  # examples between full consistency checks (and one before every reseed): an inconsistency stays
HOST = "gw.example.com"
QUERY_SAFE = "=&%+;/?:@,$!*'()~[]"


def gateway_config(carrier: str) -> dict:
    data = carrier_config("twilio" if carrier == "mock" else carrier, "open")
    data.pop("skipSignatureVerification")  # every request is signed for real
    data["provider"] = carrier
    data["telnyx"]["publicKey"] = base64.b64encode(bytes(TELNYX_KEY.verify_key)).decode()
    return data


class Webhooks:
    """Posts to the real ASGI application and checks the invariants after each request."""

    def __init__(self, carrier: str, loop, app_errors) -> None:
        from voicecall_project.asgi import application

        self.carrier = carrier
        self.loop = loop
        self.app_errors = app_errors
        self.examples = 0
        transport = httpx.ASGITransport(app=application, client=("10.0.0.7", 5555))
        self.client = httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}")

    def reseed(self) -> None:
        if self.examples:
            assert_database_invariants()
        seed_calls("twilio" if self.carrier == "mock" else self.carrier)
        if self.carrier == "mock":
            from calls.models import Call

            Call.objects.update(provider="mock")  # the same three calls, owned by the mock carrier

    def post(self, query: str, body: bytes, *, content_type: str, sign) -> httpx.Response:
        if self.examples % RESEED_EVERY == 0:
            self.reseed()
        self.examples += 1
        # What an HTTP client can send: control characters and spaces percent-encoded, the rest as drawn.
        url = "/voice/webhook" + (f"?{quote(query, safe=QUERY_SAFE)}" if query else "")
        request = self.client.build_request("POST", url, content=body, headers={"Content-Type": content_type})
        sign(request)
        before = row_counts()
        budget.sent()
        response = self.loop.run_until_complete(self.client.send(request))
        assert response.status_code < 500, (response.status_code, response.text, body[:300])
        assert response.status_code in (200, 400, 401), (response.status_code, response.text)
        budget.outcome(self.carrier, response.status_code)
        assert not self.app_errors.take(), body[:300]
        if response.status_code != 200:
            assert row_counts() == before, (response.status_code, response.text)
        elif self.examples % CHECK_EVERY == 0:
            assert_database_invariants()
        return response

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())


def row_counts() -> tuple[int, ...]:
    """The rows of every table a webhook writes, in one query (a refused request must change none)."""
    from django.db import connection

    from calls.models import Call, CallEvent, CallTurn, CarrierDocument, ProcessedWebhook, TranscriptEntry

    tables = [model._meta.db_table for model in (Call, CallEvent, TranscriptEntry, CallTurn, ProcessedWebhook, CarrierDocument)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {connection.ops.quote_name(t)})" for t in tables))
        return tuple(cursor.fetchone())


@pytest.fixture
def webhooks(request, configure, monkeypatch, loop, app_errors):
    from providers.carriers.http import CarrierHttp

    carrier = request.param
    loaded = configure(gateway_config(carrier))
    assert not loaded.errors, loaded.errors
    # The carrier's REST API (answering, hanging up) answers in-process: the jobs a webhook starts succeed,
    # so an ERROR logged means the application's own failure, not an unreachable test address.
    monkeypatch.setattr(CarrierHttp, "request", lambda self, method, path, **kwargs: httpx.Response(
        200, json={"data": {"result": "ok"}}, request=httpx.Request(method, self.base_url + path)))
    hooks = Webhooks(carrier, loop, app_errors)
    yield hooks
    hooks.close()
    assert_database_invariants()


# --- mock batches -----------------------------------------------------------------------------------

BASE_FIELDS = set(NormalizedEvent.__dataclass_fields__)
FIELDS = {kind: [_CAMEL.get(f, f) for f in cls.__dataclass_fields__ if f not in BASE_FIELDS] for kind, cls in EVENT_TYPES.items()}
text = st.text(max_size=20)
VALUES = {
    "text": text, "transcript": text, "isFinal": st.booleans(), "confidence": st.floats(0, 1),
    "durationMs": st.integers(0, 10**7), "digits": st.sampled_from(["1", "#", "123", "w"]) | text,
    "reason": st.sampled_from(sorted(END_REASONS)) | text, "detail": text, "error": text, "retryable": st.booleans(),
    "answeredBy": st.sampled_from(["human", "machine", "fax"]) | text,
    "recordingId": st.sampled_from(["RE1", "RE2"]) | text, "status": st.sampled_from(["in-progress", "completed", "failed"]) | text,
    "url": st.sampled_from(["https://api.twilio.com/r/RE1", "ftp://x"]) | text,
    "durationSeconds": st.floats(0, 1e8) | st.integers(-5, 10), "channels": st.integers(0, 3),
    "transferId": st.uuids().map(str) | text, "outcome": st.sampled_from(["connected", "failed"]) | text,
    "hangupCaller": st.booleans(),
    "timestamp": mostly(st.integers(0, LAST_MILLISECOND - 1) | st.floats(0, 1e13), st.integers(-(2**70), 2**70)),
    "direction": mostly(st.sampled_from(["inbound", "outbound"]), text),
    "from": mostly(st.sampled_from(["+15550001111", "client:alice"]), text), "to": mostly(st.just("+15550002222"), text),
    "providerCallId": mostly(st.uuids().map(str), text), "turnToken": st.sampled_from([TURN, "stale"]), "id": st.uuids().map(str),
}


# Any JSON value, for a field that expects another type (objects and lists are not hashable, for one).
WRONG_TYPES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
                           lambda inner: st.lists(inner, max_size=2) | st.dictionaries(text, inner, max_size=2), max_leaves=4)


@st.composite
def mock_events(draw):
    kind = draw(mostly(st.sampled_from(sorted(EVENT_TYPES)), text))
    event = {"type": kind, "callId": draw(mostly(st.sampled_from(SEED_IDS + ("unknown-call",)), text)),
             "dedupeKey": draw(st.uuids().map(str))}
    optional = FIELDS.get(kind, []) + ["timestamp", "direction", "from", "to", "providerCallId", "turnToken"]
    for name in draw(st.lists(st.sampled_from(optional), unique=True, max_size=4)):
        event[name] = draw(mostly(VALUES[name], WRONG_TYPES, one_in=12))
    if draw(st.integers(0, 30)) == 0:
        event[draw(text)] = draw(text)  # an unknown field
    return event


@st.composite
def mock_bodies(draw) -> bytes:
    shape = draw(st.integers(0, 9))
    if shape <= 6:
        document = {"events": draw(st.lists(mock_events(), min_size=1, max_size=4))}
    elif shape == 7:
        document = {"event": draw(mock_events())}
    elif shape == 8:
        return draw(st.binary(max_size=80))
    else:
        document = draw(st.lists(mock_events(), max_size=2))
    return draw(spliced(document)).encode("utf-8")


def stored_keys(body: bytes) -> list[str]:
    """The dedupe keys of the events of an accepted mock body that name a known call."""
    data = json.loads(body)
    events = data["events"] if "events" in data else [data["event"]]
    return [e["dedupeKey"] for e in events if e.get("callId") in SEED_IDS]


def stored(key: str) -> bool:
    """An event with this dedupe key is recorded (a retryable error is kept without its key, so a
    redelivery is applied again: found by the key in its payload)."""
    from calls.models import CallEvent

    return (CallEvent.objects.filter(dedupe_key=key).exists()
            or CallEvent.objects.filter(type="call.error", dedupe_key=None, payload__dedupeKey=key).exists())


@pytest.mark.parametrize("webhooks", ["mock"], indirect=True)
@budget.fuzz_settings("mock")
@given(body=mock_bodies())
def test_mock_webhook(webhooks, body):
    from calls.models import Call

    known = set(map(str, Call.objects.filter(pk__in=SEED_IDS).values_list("pk", flat=True)))
    response = webhooks.post("", body, content_type="application/json", sign=lambda request: None)
    if response.status_code == 200 and known == set(SEED_IDS):
        missing = [key for key in stored_keys(body) if not stored(key)]
        assert not missing, (body, response.text, missing)


# --- Telnyx -----------------------------------------------------------------------------------------


@st.composite
def telnyx_bodies(draw) -> bytes:
    body = draw(REQUESTS["telnyx"]()).body
    try:
        document = json.loads(body)
    except ValueError:
        return body
    return draw(spliced(document)).encode("utf-8")


def telnyx_sign(request: httpx.Request) -> None:
    ts = str(int(time.time()))
    signed = TELNYX_KEY.sign(ts.encode() + b"|" + request.content).signature
    request.headers["telnyx-signature-ed25519"] = base64.b64encode(signed).decode()
    request.headers["telnyx-timestamp"] = ts


@pytest.mark.parametrize("webhooks", ["telnyx"], indirect=True)
@budget.fuzz_settings("telnyx")
@given(body=telnyx_bodies(), query=st.sampled_from(["", "callId=" + SEED_IDS[0], "flow=answer"]))
def test_telnyx_webhook(webhooks, body, query):
    webhooks.post(query, body, content_type="application/json", sign=telnyx_sign)


# --- Twilio and Plivo forms ---------------------------------------------------------------------------

# Percent-escapes a form decode may meet: not UTF-8, a surrogate in UTF-8, NUL, broken escapes.
ESCAPES = st.sampled_from(["%FF", "%E9", "%ED%A0%BD", "%C3", "%00", "%", "%zz", "%F0%9F%98%80", "+", "%2B"])


@st.composite
def form_bodies(draw, carrier: str) -> tuple[str, bytes]:
    request = draw(REQUESTS[carrier]())
    body = request.body
    if draw(st.integers(0, 3)) == 0 and b"=" in body:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(ESCAPES).encode() + body[at:]
    return request.query_string, body


def signed_as_gateway_sees_it(request: httpx.Request) -> WebhookRequest:
    """The request as the webhook app builds it: the query as sent, the body's form fields decoded."""
    return WebhookRequest(method="POST", path="/voice/webhook", query_string=request.url.query.decode("latin-1"),
                          headers={"host": HOST}, body=request.content)


def form_params(seen: WebhookRequest) -> list[tuple[str, str]]:
    try:
        return seen.form_pairs()
    except ValueError:
        return []  # not UTF-8: cannot be signed; the gateway refuses it either way


def twilio_sign(request: httpx.Request) -> None:
    seen = signed_as_gateway_sees_it(request)
    url = PUBLIC_URL + (f"?{seen.query_string}" if seen.query_string else "")
    request.headers["X-Twilio-Signature"] = twilio_signature("twilio-token", url, form_params(seen))


def plivo_sign(request: httpx.Request) -> None:
    seen = signed_as_gateway_sees_it(request)
    url = PUBLIC_URL + (f"?{seen.query_string}" if seen.query_string else "")
    nonce = uuid.uuid4().hex[:20]
    base = v3_base("POST", url, _grouped(form_params(seen)))
    request.headers["X-Plivo-Signature-V3"] = base64.b64encode(_sign("plivo-token", f"{base}.{nonce}")).decode()
    request.headers["X-Plivo-Signature-V3-Nonce"] = nonce


FORM_SIGNERS = {"twilio": twilio_sign, "plivo": plivo_sign}


@pytest.mark.parametrize("webhooks", sorted(FORM_SIGNERS), indirect=True)
@budget.fuzz_settings("forms", parts=len(FORM_SIGNERS))
@given(data=st.data())
def test_form_webhook(webhooks, data):
    query, body = data.draw(form_bodies(webhooks.carrier))
    webhooks.post(query, body, content_type="application/x-www-form-urlencoded", sign=FORM_SIGNERS[webhooks.carrier])
