"""JSON nobody can store, through the real server: lone surrogates, NaN / Infinity / 1e400 and deep nesting.

Daphne serves the real application on a loopback port; the mock and Telnyx webhooks and the RPC each
answer a clear 4xx naming the problem, store nothing of the refused request, and keep what they had
accepted before. (Media frames: tests/calls/streams/test_media_stream.py.)
"""
from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest
from nacl.signing import SigningKey

from calls.models import Call, CallEvent, ProcessedWebhook
from providers.carriers.http import CarrierHttp
from voicecall_project.rpc_tokens import parse_rpc_tokens

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 20_000 + "]" * 20_000  # 40 kB: under every body limit
SIGNING_KEY = SigningKey(b"\x22" * 32)
TOKEN = "w" * 8 + "write-token-0001"

# (what goes in a string or number slot of an otherwise valid body, what the 400 must name)
BAD_VALUES = [
    ('"\\ud83d"', "lone surrogate U+D83D"),
    ('"ok \\udc00 then"', "lone surrogate U+DC00"),
    ("NaN", "non-finite number NaN"),
    ("Infinity", "non-finite number Infinity"),
    ("-Infinity", "non-finite number -Infinity"),
    ("1e400", "non-finite number 1e400"),
    (DEEP, "nesting deeper than 64"),
]


def strict_json(response: httpx.Response):
    """The body as JSON, refusing NaN and Infinity as any strict reader would."""
    def refuse(name):
        raise ValueError(f"{name} in the answer")

    return json.loads(response.content, parse_constant=refuse)


# --- the mock carrier's webhook -------------------------------------------------------------------


def mock_post(url: str, body: str | bytes) -> httpx.Response:
    return httpx.post(url + "/voice/webhook", content=body, timeout=10)


@pytest.mark.parametrize("value, problem", BAD_VALUES + [('{"\\ud83d": 1}', "lone surrogate U+D83D in a member name")])
def test_mock_webhook_refuses_unstorable_json_and_keeps_what_it_accepted(live_gateway, value, problem):
    call = Call.objects.create(provider="mock", direction="outbound", state="initiated", from_number="+15550000001",
                               to_number="+15550001111", mode="conversation")
    ringing = json.dumps({"events": [{"type": "call.ringing", "callId": str(call.pk)}]})
    assert mock_post(live_gateway, ringing).status_code == 200
    # A valid event first, then the bad value: the whole batch is refused, none of it stored.
    body = ('{"events": [{"type": "call.answered", "callId": "%s"},'
            ' {"type": "call.speech", "callId": "%s", "transcript": "hi", "confidence": %s}]}' % (call.pk, call.pk, value))
    response = mock_post(live_gateway, body)
    assert response.status_code == 400, response.text
    assert response.text.startswith("body: ") and problem in response.text
    assert list(CallEvent.objects.filter(call=call).values_list("type", flat=True)) == ["call.ringing"]
    call.refresh_from_db()
    assert call.state == "ringing"
    assert not ProcessedWebhook.objects.exclude(status_code=200).exists()


@pytest.mark.parametrize("body, problem", [
    (b'{"events": [{"type": "call.ringing", "callId": "\xff"}]}', "not UTF-8"),
    (('{"event": {"type": "call.ringing", "callId": "c", "x": %s}}' % DEEP).encode(), "nesting deeper than 64"),
    (b'{"event": {"type": "call.ringing", "callId": "\\ud83d\\ud83d"}}', "lone surrogate U+D83D at $.event.callId"),
])
def test_mock_webhook_names_where_the_problem_is(live_gateway, body, problem):
    response = mock_post(live_gateway, body)
    assert (response.status_code, problem in response.text) == (400, True), response.text
    assert not CallEvent.objects.exists() and not Call.objects.exists()


# --- Telnyx ---------------------------------------------------------------------------------------


@pytest.fixture
def telnyx(configure, monkeypatch):
    """Telnyx in force, its REST API answered in-process, and a signer for webhook bodies."""
    public = base64.b64encode(bytes(SIGNING_KEY.verify_key)).decode()
    loaded = configure({"enabled": True, "provider": "telnyx", "fromNumber": "+15550000001", "inboundPolicy": "open",
                        "publicUrl": "https://gw.example.com/voice/webhook",
                        "telnyx": {"apiKey": "KEY-telnyx", "connectionId": "conn-1", "publicKey": public}})
    assert not loaded.errors, loaded.errors
    monkeypatch.setattr(CarrierHttp, "request", lambda self, method, path, **kw: httpx.Response(
        200, json={"data": {"result": "ok"}}, request=httpx.Request(method, self.base_url + path)))

    def post(url: str, body: str) -> httpx.Response:
        ts = str(int(time.time()))
        signature = base64.b64encode(SIGNING_KEY.sign(f"{ts}|{body}".encode()).signature).decode()
        return httpx.post(url + "/voice/webhook", content=body, timeout=10, headers={
            "telnyx-signature-ed25519": signature, "telnyx-timestamp": ts, "Content-Type": "application/json"})

    return post


def telnyx_event(event_type: str, control_id: str, **payload) -> str:
    return json.dumps({"data": {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
                                "occurred_at": "2025-01-01T00:00:00.000000Z",
                                "payload": {"call_control_id": control_id, "direction": "incoming",
                                            "from": "+15551230001", "to": "+15550000001", **payload}}})


@pytest.mark.parametrize("value, problem", BAD_VALUES)
def test_telnyx_webhook_refuses_unstorable_json_and_keeps_what_it_accepted(live_gateway, telnyx, value, problem):
    assert telnyx(live_gateway, telnyx_event("call.initiated", "v3:leg-1")).status_code == 200
    call = Call.objects.get(provider_call_id="v3:leg-1")
    stored = CallEvent.objects.filter(call=call).count()
    remembered = ProcessedWebhook.objects.count()
    body = telnyx_event("call.transcription", "v3:leg-1", transcription_data={"transcript": "hello", "confidence": 0.5})
    body = body.replace("0.5", value, 1)
    response = telnyx(live_gateway, body)
    assert response.status_code == 400, response.text
    assert response.text.startswith("body: ") and problem in response.text
    assert CallEvent.objects.filter(call=call).count() == stored
    assert ProcessedWebhook.objects.count() == remembered
    assert not Call.objects.exclude(pk=call.pk).exists()


# --- the RPC --------------------------------------------------------------------------------------


@pytest.fixture
def rpc_post(live_gateway, settings):
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{TOKEN}")

    def post(body: str | bytes) -> httpx.Response:
        return httpx.post(live_gateway + "/voice/rpc", content=body, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})

    return post


@pytest.mark.parametrize("where", ["params", "id", "batch"])
@pytest.mark.parametrize("value, problem", BAD_VALUES)
def test_rpc_answers_a_parse_error_for_unstorable_json(rpc_post, outbox, where, value, problem):
    started = strict_json(rpc_post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "voicecall.start",
                                               "params": {"to": "+15550001111", "message": "Hi"}})))
    assert "result" in started, started
    calls = Call.objects.count()
    if where == "params":
        body = '{"jsonrpc": "2.0", "id": 2, "method": "voicecall.start", "params": {"to": "+15550002222", "message": %s}}' % value
    elif where == "id":
        body = '{"jsonrpc": "2.0", "id": %s, "method": "voicecall.start", "params": {"to": "+15550002222"}}' % value
    else:  # the bad member after a good one: the batch is refused whole
        body = ('[{"jsonrpc": "2.0", "id": 3, "method": "voicecall.start", "params": {"to": "+15550003333"}},'
                ' {"jsonrpc": "2.0", "id": 4, "method": "voicecall.status", "params": {"callId": %s}}]' % value)
    response = rpc_post(body)
    assert response.status_code == 400
    reply = strict_json(response)  # never NaN echoed back as an id
    assert reply["id"] is None and reply["error"]["code"] == -32700, reply
    assert reply["error"]["message"].startswith("Parse error: ") and problem in reply["error"]["message"]
    assert Call.objects.count() == calls  # nothing of the refused request ran
    assert Call.objects.filter(pk=started["result"]["callId"]).exists()


# --- form bodies (Twilio) -------------------------------------------------------------------------


def test_percent_encoded_bytes_that_are_not_utf8_are_never_a_500(live_gateway, configure, monkeypatch):
    """A form decode cannot make a lone surrogate: %ED%A0%BD (a surrogate in UTF-8) and %E9 become U+FFFD."""
    from twilio.request_validator import RequestValidator

    public = "https://gw.example.com/voice/webhook"
    configure({"enabled": True, "provider": "twilio", "fromNumber": "+15550000001", "inboundPolicy": "open",
               "publicUrl": public, "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "secret-token"}})
    monkeypatch.setattr(CarrierHttp, "request", lambda self, method, path, **kw: httpx.Response(
        200, json={}, request=httpx.Request(method, self.base_url + path)))
    body = ("CallSid=CA" + "b" * 32 + "&AccountSid=AC" + "1" * 32 + "&From=%2B1555%ED%A0%BD%E9&To=%2B15550000001"
            "&CallStatus=ringing&Direction=inbound")
    signed = dict(pair.split("=", 1) for pair in body.split("&"))
    signed.update({"From": "+1555\ufffd\ufffd\ufffd\ufffd", "To": "+15550000001"})
    signature = RequestValidator("secret-token").compute_signature(public, signed)
    response = httpx.post(live_gateway + "/voice/webhook", content=body, timeout=10, headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code < 500, response.text
    assert response.status_code == 200
    assert Call.objects.get(provider_call_id="CA" + "b" * 32).from_number == "+1555\ufffd\ufffd\ufffd\ufffd"
