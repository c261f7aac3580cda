"""Webhook security for the three real carriers, through the real ASGI application.

Signed with the carriers' own SDKs (Twilio RequestValidator, Plivo signature_v3) or a throw-away
Ed25519 key (Telnyx): header gate before the body is read, limits, signature refusal without side
effects, forwarded-header trust, skip mode, replay protection in the database, per-turn tokens, logs.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
import uuid
from urllib.parse import unquote, urlencode

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from nacl.signing import SigningKey
from plivo.utils.signature_v3 import construct_post_url, get_signature_v3
from twilio.request_validator import RequestValidator

from calls import webhooks
from calls.models import Call, CallEvent, CallTurn, ProcessedWebhook, TranscriptEntry
from calls.runtime import reset_runtime
from calls.services import webhooks as webhook_processing
from calls.services.events import EventBatch
from providers.carriers.http import CarrierHttp
from tests.waiting import await_stays, await_until, forever

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC_URL = "https://gw.example.com/voice/webhook"
TWILIO_TOKEN = "secret-token"
PLIVO_TOKEN = "plivo-secret-token"
SIGNING_KEY = SigningKey(b"\x11" * 32)
TELNYX_PUBLIC = base64.b64encode(bytes(SIGNING_KEY.verify_key)).decode()
CALLER = "+15551230001"
OUR_NUMBER = "+15550000001"
UNSAFE_SKIP = {"VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION": "1"}

CONFIGS = {
    "twilio": {"twilio": {"accountSid": "AC" + "1" * 32, "authToken": TWILIO_TOKEN}},
    "plivo": {"plivo": {"authId": "MA" + "A" * 18, "authToken": PLIVO_TOKEN}},
    "telnyx": {"telnyx": {"apiKey": "KEY-telnyx", "connectionId": "conn-1", "publicKey": TELNYX_PUBLIC}},
}
CONTENT_TYPES = {"twilio": "application/xml", "plivo": "text/xml", "telnyx": "text/plain"}
CARRIERS = sorted(CONFIGS)


def carrier_config(provider: str, **extra) -> dict:
    data = {"enabled": True, "provider": provider, "fromNumber": OUR_NUMBER, "publicUrl": PUBLIC_URL,
            "inboundPolicy": "open", **CONFIGS[provider]}
    for key, value in extra.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.fixture(autouse=True)
def carrier_rest(monkeypatch):
    """No carrier REST request leaves the process: each is recorded and answered 200."""
    sent: list[tuple[str, str, str, dict]] = []

    def fake_request(self, method, path, **kwargs):
        sent.append((self.carrier, method, path, kwargs))
        return httpx.Response(200, json={"data": {"result": "ok"}}, request=httpx.Request(method, self.base_url + path))

    monkeypatch.setattr(CarrierHttp, "request", fake_request)
    return sent


@contextlib.asynccontextmanager
async def client_from(ip: str, port: int = 5555):
    from django.db import connections

    from voicecall_project.asgi import application

    transport = httpx.ASGITransport(app=application, client=(ip, port))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client
    await sync_to_async(connections.close_all)()


# --- signed requests, one builder per carrier ------------------------------------------------


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


def twilio_request(params: dict, *, query: str = "", signed_url: str | None = None, token: str = TWILIO_TOKEN,
                   headers: dict | None = None) -> dict:
    signature = RequestValidator(token).compute_signature(signed_url or with_query(PUBLIC_URL, query), params)
    return {
        "url": with_query("/voice/webhook", query),
        "content": urlencode(params),
        "headers": {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded",
                    **(headers or {})},
    }


def plivo_request(params: dict, *, query: str = "", nonce: str | None = None, token: str = PLIVO_TOKEN,
                  signed_url: str | None = None) -> dict:
    nonce = nonce or str(uuid.uuid4().int)[:20]
    base = construct_post_url(signed_url or with_query(PUBLIC_URL, query), dict(params)).decode()
    signature = get_signature_v3(token.encode(), base, nonce.encode()).decode()
    return {
        "url": with_query("/voice/webhook", query),
        "content": urlencode(params),
        "headers": {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce,
                    "Content-Type": "application/x-www-form-urlencoded"},
    }


def telnyx_body(event_type: str = "call.initiated", *, event_id: str | None = None, control_id: str = "v3:call-1",
                **payload) -> str:
    return json.dumps({
        "data": {"record_type": "event", "event_type": event_type, "id": event_id or str(uuid.uuid4()),
                 "occurred_at": "2025-01-01T00:00:00.000000Z",
                 "payload": {"call_control_id": control_id, "direction": "incoming", "from": CALLER, "to": OUR_NUMBER,
                             "state": "parked", **payload}},
        "meta": {"attempt": 1, "delivered_to": PUBLIC_URL},
    }, separators=(",", ":"))


def telnyx_request(body: str, *, ts: int | None = None, key: SigningKey = SIGNING_KEY) -> dict:
    ts = int(time.time()) if ts is None else ts
    signature = base64.b64encode(key.sign(f"{ts}|{body}".encode()).signature).decode()
    return {"url": "/voice/webhook", "content": body,
            "headers": {"telnyx-signature-ed25519": signature, "telnyx-timestamp": str(ts),
                        "Content-Type": "application/json"}}


def twilio_inbound(call_sid: str = "CA" + "a" * 32, **extra) -> dict:
    return {"CallSid": call_sid, "AccountSid": "AC" + "1" * 32, "From": CALLER, "To": OUR_NUMBER,
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", **extra}


def plivo_inbound(call_uuid: str = "4vbcpem8-0u46-x1ha-9af1-438vc92bf374", **extra) -> dict:
    return {"CallUUID": call_uuid, "From": CALLER, "To": OUR_NUMBER, "Direction": "inbound", "CallStatus": "ringing",
            "Event": "StartApp", **extra}


def inbound_request(provider: str, **kwargs) -> dict:
    """A valid signed request announcing a new inbound call."""
    if provider == "twilio":
        return twilio_request(twilio_inbound(), **kwargs)
    if provider == "plivo":
        return plivo_request(plivo_inbound(), **kwargs)
    return telnyx_request(telnyx_body(), **kwargs)


def badly_signed_request(provider: str) -> dict:
    if provider == "twilio":
        return twilio_request(twilio_inbound(), token=TWILIO_TOKEN + "x")
    if provider == "plivo":
        return plivo_request(plivo_inbound(), token=PLIVO_TOKEN + "x")
    return telnyx_request(telnyx_body(), key=SigningKey(b"\x22" * 32))


async def counts() -> dict[str, int]:
    def read():
        return {
            "calls": Call.objects.count(),
            "events": CallEvent.objects.count(),
            "transcript": TranscriptEntry.objects.count(),
            "processed": ProcessedWebhook.objects.count(),
        }

    return await sync_to_async(read)()


# --- the ASGI app driven by hand (to see whether the body was read) --------------------------


async def call_app(app, *, headers=(), body=b"{}", client=("10.0.0.1", 1), hang=False):
    received: list[bool] = []
    sent: list[dict] = []

    async def receive():
        received.append(True)
        if hang:
            await forever()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    scope = {"type": "http", "method": "POST", "path": "/voice/webhook", "query_string": b"", "headers": raw,
             "client": client, "scheme": "http"}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], received


PRESENT_HEADERS = {
    "twilio": [("X-Twilio-Signature", "bogus")],
    "telnyx": [("telnyx-signature-ed25519", "bogus"), ("telnyx-timestamp", "1")],
    "plivo": [("X-Plivo-Signature-V3", "bogus"), ("X-Plivo-Signature-V3-Nonce", "1")],
}


@pytest.mark.parametrize(
    "provider,headers",
    [
        ("twilio", []),
        ("twilio", [("X-Twilio-Signature", "")]),
        ("twilio", [("X-Plivo-Signature-V3", "x"), ("X-Plivo-Signature-V3-Nonce", "1")]),
        ("telnyx", []),
        ("telnyx", [("telnyx-signature-ed25519", "sig")]),
        ("telnyx", [("telnyx-timestamp", "1700000000")]),
        ("plivo", []),
        ("plivo", [("X-Plivo-Signature-V3", "sig")]),
        ("plivo", [("X-Plivo-Signature-V3-Nonce", "123")]),
        ("plivo", [("X-Plivo-Signature-V2", "sig")]),
        ("plivo", [("X-Plivo-Signature-V3", "sig"), ("X-Plivo-Signature-V2-Nonce", "123")]),
        ("plivo", [("X-Plivo-Signature-Ma-V3", "sig"), ("X-Plivo-Signature-V3-Nonce", "123")]),
    ],
    ids=["twilio-none", "twilio-empty", "twilio-plivo-headers", "telnyx-none", "telnyx-signature-only",
         "telnyx-timestamp-only", "plivo-none", "plivo-v3-without-nonce", "plivo-nonce-only", "plivo-v2-without-nonce",
         "plivo-v3-with-v2-nonce", "plivo-ma-v3-only"],
)
async def test_missing_signature_headers_are_401_before_the_body_is_read(configure, provider, headers):
    configure(carrier_config(provider))
    status, body, received = await call_app(webhooks.WebhookApp(), headers=headers)
    assert (status, body, received) == (401, b"Unauthorized", [])


@pytest.mark.parametrize("provider", CARRIERS)
async def test_present_but_invalid_signature_is_read_then_refused(configure, provider):
    configure(carrier_config(provider))
    status, body, received = await call_app(webhooks.WebhookApp(), headers=PRESENT_HEADERS[provider])
    assert (status, body) == (401, b"Unauthorized")
    assert received  # the gate passed; verification refused it


@pytest.mark.parametrize("provider", CARRIERS)
async def test_bad_signature_is_401_and_stores_nothing(asgi, configure, provider, carrier_rest):
    configure(carrier_config(provider))
    response = await asgi.post(**badly_signed_request(provider))
    assert (response.status_code, response.text) == (401, "Unauthorized")
    assert await counts() == {"calls": 0, "events": 0, "transcript": 0, "processed": 0}
    assert carrier_rest == []


@pytest.mark.parametrize("provider", CARRIERS)
async def test_valid_signature_is_200_with_the_carriers_content_type(asgi, configure, provider):
    configure(carrier_config(provider))
    response = await asgi.post(**inbound_request(provider))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == CONTENT_TYPES[provider]
    if provider == "telnyx":
        assert response.text == "OK"
    else:
        assert response.text.lstrip().startswith(("<?xml", "<Response"))
    state = await counts()
    assert state["calls"] == 1 and state["events"] >= 1 and state["processed"] == 1
    call = await sync_to_async(Call.objects.get)()
    assert (call.direction, call.from_number, call.provider) == ("inbound", CALLER, provider)


async def test_telnyx_inbound_call_is_answered_through_rest(asgi, configure, carrier_rest):
    configure(carrier_config("telnyx"))
    response = await asgi.post(**inbound_request("telnyx"))
    assert response.status_code == 200
    assert [(c, m, unquote(p)) for c, m, p, _ in carrier_rest] == [("telnyx", "POST", "/calls/v3:call-1/actions/answer")]


@pytest.mark.parametrize("provider", CARRIERS)
async def test_body_over_64kb_is_413(asgi, configure, provider):
    configure(carrier_config(provider))
    request = inbound_request(provider)
    request["content"] = "x" * (64 * 1024 + 1)
    response = await asgi.post(**request)
    assert response.status_code == 413
    assert await counts() == {"calls": 0, "events": 0, "transcript": 0, "processed": 0}


@pytest.mark.parametrize("provider", CARRIERS)
async def test_nine_in_flight_requests_from_one_ip_over_a_cap_of_eight_get_one_429(configure, settings, provider):
    configure({**carrier_config(provider), "serve": {"maxInFlightPerIp": 8}})
    settings.VOICECALL_WEBHOOK_BODY_TIMEOUT = 0.3
    app = webhooks.WebhookApp()
    headers = PRESENT_HEADERS[provider]
    results = await asyncio.gather(
        *(call_app(app, headers=headers, hang=True, client=("10.0.0.9", 1000 + i)) for i in range(9))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [408] * 8 + [429]
    refused = [received for status, _, received in results if status == 429]
    assert refused == [[]]  # the refused one never had its body read
    assert app.in_flight == {}


@pytest.mark.parametrize("provider", CARRIERS)
async def test_slow_body_is_408(configure, settings, provider):
    configure(carrier_config(provider))
    settings.VOICECALL_WEBHOOK_BODY_TIMEOUT = 0.1
    status, body, received = await call_app(webhooks.WebhookApp(), headers=PRESENT_HEADERS[provider], hang=True)
    assert (status, body) == (408, b"Request Timeout")
    assert received


# --- forwarded headers and proxies (no publicUrl) --------------------------------------------

FORWARDED = "https://public.example.com/voice/webhook"


def forwarding_config(**security) -> dict:
    return carrier_config("twilio", publicUrl=None, webhookSecurity=security)


async def post_twilio(ip: str, *, signed_url: str, headers: dict | None = None) -> int:
    async with client_from(ip) as client:
        response = await client.post(**twilio_request(twilio_inbound(), signed_url=signed_url, headers=headers))
    return response.status_code


FORWARD_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example.com"}


@pytest.mark.parametrize(
    "security,ip,expected",
    [
        ({"trustedProxyIPs": ["10.0.0.7"], "trustForwardingHeaders": True}, "10.0.0.7", 200),
        ({"trustedProxyIPs": ["10.0.0.0/24"], "trustForwardingHeaders": True}, "10.0.0.7", 200),
        ({"trustedProxyIPs": ["10.0.0.7"], "allowedHosts": ["public.example.com"]}, "10.0.0.7", 200),
        ({"trustedProxyIPs": ["10.0.0.7"]}, "10.0.0.7", 401),  # neither allowedHosts nor the flag
        ({"trustForwardingHeaders": True}, "10.0.0.7", 401),  # no trusted proxy configured
        ({"allowedHosts": ["public.example.com"]}, "10.0.0.7", 401),
        ({"trustedProxyIPs": ["10.0.0.7"], "trustForwardingHeaders": True}, "10.0.0.8", 401),  # untrusted remote
        ({"trustedProxyIPs": ["10.0.0.7"], "trustForwardingHeaders": True}, "::ffff:10.0.0.7", 200),
        ({"trustedProxyIPs": ["::ffff:10.0.0.7"], "trustForwardingHeaders": True}, "10.0.0.7", 200),
        ({"trustedProxyIPs": ["::ffff:10.0.0.7"], "trustForwardingHeaders": True}, "::ffff:10.0.0.8", 401),
    ],
    ids=["trusted-ip", "trusted-cidr", "trusted-ip-allowed-hosts", "trusted-ip-no-opt-in", "no-trusted-proxy",
         "allowed-hosts-no-proxy", "untrusted-ip", "ipv4-mapped-remote", "ipv4-mapped-entry", "ipv4-mapped-other"],
)
async def test_forwarded_headers_are_honoured_only_from_trusted_proxies(configure, security, ip, expected):
    configure(forwarding_config(**security))
    assert await post_twilio(ip, signed_url=FORWARDED, headers=FORWARD_HEADERS) == expected


async def test_untrusted_remote_gets_the_host_header_url(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    # From an untrusted address the forwarded host is ignored: the Host header names the URL.
    assert await post_twilio("10.0.0.8", signed_url="https://localhost/voice/webhook", headers=FORWARD_HEADERS) == 200
    assert await post_twilio("10.0.0.8", signed_url=FORWARDED, headers=FORWARD_HEADERS) == 401
    # ... and so is its X-Forwarded-Proto (the scheme stays https).
    http = {**FORWARD_HEADERS, "X-Forwarded-Proto": "http"}
    assert await post_twilio("10.0.0.8", signed_url="http://localhost/voice/webhook", headers=http) == 401


async def test_trusted_proxies_configured_but_no_remote_address_is_not_trusted(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    params = twilio_inbound()
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(FORWARDED, params)
    headers = [("Host", "localhost"), ("X-Twilio-Signature", signature), *FORWARD_HEADERS.items()]
    body = urlencode(params).encode()
    status, _, _ = await call_app(webhooks.WebhookApp(), headers=headers, body=body, client=None)
    assert status == 401
    status, _, _ = await call_app(webhooks.WebhookApp(), headers=headers, body=body, client=("10.0.0.7", 1))
    assert status == 200


async def test_ipv4_mapped_cidr_entry_matches_a_mapped_remote(configure):
    configure(forwarding_config(trustedProxyIPs=["::ffff:10.0.0.0/120"], trustForwardingHeaders=True))
    assert await post_twilio("::ffff:10.0.0.7", signed_url=FORWARDED, headers=FORWARD_HEADERS) == 200


async def test_forwarded_proto_http_is_honoured_from_a_trusted_proxy(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {**FORWARD_HEADERS, "X-Forwarded-Proto": "http"}
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED.replace("https:", "http:"), headers=headers) == 200
    # Anything but http/https falls back to the https default.
    headers = {**FORWARD_HEADERS, "X-Forwarded-Proto": "gopher"}
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED.replace("https:", "gopher:"), headers=headers) == 401
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=headers) == 200


async def test_allowed_hosts_refuse_other_hosts_even_when_signed(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], allowedHosts=["public.example.com"]))
    other = {**FORWARD_HEADERS, "X-Forwarded-Host": "other.example.com"}
    assert await post_twilio("10.0.0.7", signed_url="https://other.example.com/voice/webhook", headers=other) == 401
    # From an untrusted address the Host header must be allowed too.
    assert await post_twilio("10.0.0.8", signed_url="https://localhost/voice/webhook") == 401
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=FORWARD_HEADERS) == 200


@pytest.mark.parametrize(
    "value",
    ["evil.example.com@public.example.com", "public.example.com/evil", "pub lic.example.com", "-bad-.example.com",
     "public.example.com:99999", "[not-ipv6]", "exa_mple.com", "public.example.com\\x"],
)
async def test_malformed_forwarded_hosts_are_refused_even_when_signed(configure, caplog, value):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {**FORWARD_HEADERS, "X-Forwarded-Host": value}
    caplog.set_level(logging.WARNING, logger="calls.webhooks")
    assert await post_twilio("10.0.0.7", signed_url=f"https://{value}/voice/webhook", headers=headers) == 401
    assert "x-forwarded-host is not a valid host name" in caplog.text
    assert await counts() == {"calls": 0, "events": 0, "transcript": 0, "processed": 0}


async def test_bracketed_ipv6_forwarded_host_with_port_is_accepted(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {**FORWARD_HEADERS, "X-Forwarded-Host": "[2001:db8::1]:8443"}
    assert await post_twilio("10.0.0.7", signed_url="https://[2001:db8::1]:8443/voice/webhook", headers=headers) == 200


@pytest.mark.parametrize("header", ["X-Original-Host", "Ngrok-Forwarded-Host"])
async def test_other_forwarded_host_headers(configure, header):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {"X-Forwarded-Proto": "https", header: "public.example.com"}
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=headers) == 200
    assert await post_twilio("10.0.0.8", signed_url=FORWARDED, headers=headers) == 401


async def test_x_forwarded_host_wins_over_the_others(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {"X-Forwarded-Host": "public.example.com", "X-Original-Host": "other.example.com"}
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=headers) == 200
    assert await post_twilio("10.0.0.7", signed_url="https://other.example.com/voice/webhook", headers=headers) == 401


async def test_only_the_first_comma_value_counts(configure):
    configure(forwarding_config(trustedProxyIPs=["10.0.0.7"], trustForwardingHeaders=True))
    headers = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "public.example.com, evil.example.com"}
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=headers) == 200
    assert await post_twilio("10.0.0.7", signed_url="https://evil.example.com/voice/webhook", headers=headers) == 401
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED.replace("https:", "http:"), headers=headers) == 401


NGROK = "https://abc123.ngrok-free.app/voice/webhook"
NGROK_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc123.ngrok-free.app"}


def ngrok_config(flag=True, bind="127.0.0.1") -> dict:
    return carrier_config("twilio", publicUrl=None, serve={"bind": bind},
                          tunnel={"provider": "ngrok", "allowNgrokFreeTierLoopbackBypass": flag})


async def test_ngrok_loopback_rule_rebuilds_the_url_but_still_needs_a_valid_signature(configure):
    configure(ngrok_config())
    assert await post_twilio("127.0.0.1", signed_url=NGROK, headers=NGROK_HEADERS) == 200
    async with client_from("127.0.0.1") as client:
        request = twilio_request(twilio_inbound("CA" + "b" * 32), signed_url=NGROK, token="wrong", headers=NGROK_HEADERS)
        assert (await client.post(**request)).status_code == 401
        unsigned = twilio_request(twilio_inbound("CA" + "c" * 32), signed_url=NGROK, headers=NGROK_HEADERS)
        unsigned["headers"]["X-Twilio-Signature"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
        assert (await client.post(**unsigned)).status_code == 401
    assert await sync_to_async(Call.objects.count)() == 1


@pytest.mark.parametrize(
    "flag,bind,ip",
    [(True, "127.0.0.1", "10.0.0.7"), (False, "127.0.0.1", "127.0.0.1"), (True, "0.0.0.0", "127.0.0.1")],
    ids=["remote-not-loopback", "flag-off", "bind-not-loopback"],
)
async def test_ngrok_rule_needs_all_its_conditions(configure, flag, bind, ip):
    configure(ngrok_config(flag=flag, bind=bind))
    assert await post_twilio(ip, signed_url=NGROK, headers=NGROK_HEADERS) == 401


async def test_ngrok_rule_accepts_ipv6_and_mapped_loopback(configure):
    configure(ngrok_config(bind="::1"))
    assert await post_twilio("::1", signed_url=NGROK, headers=NGROK_HEADERS) == 200
    configure(ngrok_config(bind="localhost"))
    async with client_from("::ffff:127.0.0.1") as client:
        request = twilio_request(twilio_inbound("CA" + "d" * 32), signed_url=NGROK, headers=NGROK_HEADERS)
        assert (await client.post(**request)).status_code == 200


async def test_public_url_path_is_kept_when_a_proxy_rewrites_the_path(configure):
    configure(carrier_config("twilio", publicUrl="https://gw.example.com/carrier/hook"))
    query = "callId=abc"
    async with client_from("10.0.0.7") as client:
        good = twilio_request(twilio_inbound(), query=query, signed_url="https://gw.example.com/carrier/hook?callId=abc")
        assert (await client.post(**good)).status_code == 200
        # The request's own path is not what the carrier signed.
        wrong = twilio_request(twilio_inbound("CA" + "e" * 32), query=query,
                               signed_url="https://gw.example.com/voice/webhook?callId=abc")
        assert (await client.post(**wrong)).status_code == 401
        # The request's query is applied, so a different query is a different URL.
        other_query = twilio_request(twilio_inbound("CA" + "f" * 32), query=query,
                                     signed_url="https://gw.example.com/carrier/hook?callId=abd")
        assert (await client.post(**other_query)).status_code == 401


async def test_public_url_ignores_forwarded_headers(configure):
    configure(carrier_config("twilio", webhookSecurity={"trustedProxyIPs": ["10.0.0.7"], "trustForwardingHeaders": True}))
    assert await post_twilio("10.0.0.7", signed_url=FORWARDED, headers=FORWARD_HEADERS) == 401
    assert await post_twilio("10.0.0.7", signed_url=PUBLIC_URL, headers=FORWARD_HEADERS) == 200


async def test_plivo_follows_the_same_forwarding_rules(configure):
    configure(carrier_config("plivo", publicUrl=None,
                             webhookSecurity={"trustedProxyIPs": ["10.0.0.7"], "trustForwardingHeaders": True}))
    for ip, expected in (("10.0.0.8", 401), ("10.0.0.7", 200)):
        request = plivo_request(plivo_inbound(), signed_url=FORWARDED)
        request["headers"].update(FORWARD_HEADERS)
        async with client_from(ip) as client:
            assert (await client.post(**request)).status_code == expected


# --- skipSignatureVerification ---------------------------------------------------------------


@pytest.mark.parametrize("provider", CARRIERS)
async def test_skip_signature_verification_accepts_unsigned_requests_with_a_warning(asgi, configure, provider):
    loaded = configure(carrier_config(provider, skipSignatureVerification=True), env=UNSAFE_SKIP)
    assert loaded.errors == []
    assert any(w.startswith("SECURITY WARNING") and "skipSignatureVerification" in w for w in loaded.warnings)
    request = inbound_request(provider)
    request["headers"] = {"Content-Type": request["headers"]["Content-Type"]}
    response = await asgi.post(**request)
    assert response.status_code == 200, response.text
    assert await sync_to_async(Call.objects.count)() == 1
    stored = await sync_to_async(ProcessedWebhook.objects.get)()
    assert stored.key.startswith(f"{provider}:skip:")


async def test_skip_signature_verification_is_refused_with_a_public_url_unless_forced(asgi, configure):
    loaded = configure(carrier_config("twilio", skipSignatureVerification=True))
    assert any(e.startswith("skipSignatureVerification: only allowed") for e in loaded.errors)
    response = await asgi.post("/voice/webhook", content=urlencode(twilio_inbound()))
    assert response.status_code == 503
    # A loopback bind and no publicUrl is local testing: allowed without the override, still warned.
    loaded = configure(carrier_config("twilio", skipSignatureVerification=True, publicUrl=None))
    assert loaded.errors == [] and any("SECURITY WARNING" in w for w in loaded.warnings)


async def test_without_skip_there_is_no_security_warning(configure):
    loaded = configure(carrier_config("twilio"))
    assert not any("SECURITY WARNING" in w for w in loaded.warnings)


# --- replays -----------------------------------------------------------------------------------


@pytest.fixture
def processed_events(monkeypatch):
    """Every event the pipeline applied and committed (still processed for real).

    An attempt rolled back (a replay found at its first insert) applied nothing, so it is not seen.
    """
    seen = []
    real = EventBatch.apply

    def record(batch, event):
        outcome = real(batch, event)
        transaction.on_commit(lambda: seen.append(event))
        return outcome

    monkeypatch.setattr(EventBatch, "apply", record)
    return seen


@pytest.mark.parametrize("provider", CARRIERS)
async def test_replayed_request_gets_the_first_answer_and_has_no_side_effects(asgi, configure, provider,
                                                                               processed_events, carrier_rest):
    configure(carrier_config(provider))
    request = inbound_request(provider)
    first = await asgi.post(**request)
    assert first.status_code == 200
    before, events_seen, rest_seen = await counts(), len(processed_events), len(carrier_rest)
    assert events_seen >= 1

    replay = await asgi.post(**request)
    assert (replay.status_code, replay.text, replay.headers["content-type"]) == (
        first.status_code, first.text, first.headers["content-type"])
    assert await counts() == before
    assert len(processed_events) == events_seen  # nothing was processed again
    assert len(carrier_rest) == rest_seen


async def test_twilio_replay_answer_differs_from_a_fresh_answer(asgi, configure):
    """The replayed answer is the stored first one: a new request for the same call gets another."""
    configure(carrier_config("twilio"))
    first = await asgi.post(**twilio_request(twilio_inbound()))
    assert "<Say" in first.text  # the greeting travels in the first answer
    fresh = await asgi.post(**twilio_request(twilio_inbound(), query="flow=relisten"))
    assert fresh.status_code == 200 and fresh.text != first.text
    transcript = await sync_to_async(lambda: list(TranscriptEntry.objects.values_list("speaker", flat=True)))()
    assert transcript == ["bot"]


async def test_telnyx_redelivery_with_a_new_signature_adds_no_second_event(asgi, configure, carrier_rest):
    configure(carrier_config("telnyx"))
    body = telnyx_body(event_id="evt-1")
    first = await asgi.post(**telnyx_request(body, ts=int(time.time()) - 5))
    again = await asgi.post(**telnyx_request(body, ts=int(time.time())))
    assert (first.status_code, again.status_code) == (200, 200)
    state = await counts()
    assert (state["calls"], state["events"], state["processed"]) == (1, 1, 2)
    assert len([p for _, _, p, _ in carrier_rest if p.endswith("/answer")]) == 1
    # A different event id for the same call is a new event.
    await asgi.post(**telnyx_request(telnyx_body("call.answered", event_id="evt-2")))
    assert (await counts())["events"] == 2


async def test_replay_protection_survives_a_restart(asgi, configure, processed_events):
    configure(carrier_config("twilio"))
    request = twilio_request(twilio_inbound())
    first = await asgi.post(**request)
    before, seen = await counts(), len(processed_events)
    reset_runtime()  # a new process would start with an empty memory; the key is in the database
    replay = await asgi.post(**request)
    assert (replay.status_code, replay.text) == (first.status_code, first.text)
    assert await counts() == before and len(processed_events) == seen


async def test_plivo_replay_with_the_same_nonce_only(asgi, configure, processed_events):
    configure(carrier_config("plivo"))
    request = plivo_request(plivo_inbound(), nonce="11111")
    first = await asgi.post(**request)
    seen = len(processed_events)
    replay = await asgi.post(**request)
    assert (first.status_code, replay.text) == (200, first.text)
    assert len(processed_events) == seen
    assert await sync_to_async(ProcessedWebhook.objects.count)() == 1
    # A redelivery with a new nonce is a new request (verified and parsed) but no new event.
    events = await sync_to_async(CallEvent.objects.count)()
    assert (await asgi.post(**plivo_request(plivo_inbound(), nonce="22222"))).status_code == 200
    assert len(processed_events) > seen
    assert await sync_to_async(CallEvent.objects.count)() == events
    assert await sync_to_async(ProcessedWebhook.objects.count)() == 2


async def stored_keys() -> set[str]:
    return set(await sync_to_async(lambda: list(ProcessedWebhook.objects.values_list("key", flat=True)))())


async def test_per_call_cap_keeps_the_newest_keys(asgi, configure, monkeypatch):
    configure(carrier_config("twilio"))
    monkeypatch.setattr(webhook_processing, "MAX_KEYS_PER_CALL", 3)
    order = []
    requests = [twilio_request(twilio_inbound())] + [
        twilio_request(twilio_inbound(CallStatus="in-progress", Digits=str(d))) for d in range(1, 5)
    ]
    for request in requests:
        before = await stored_keys()
        assert (await asgi.post(**request)).status_code == 200
        new = (await stored_keys()) - before
        assert len(new) == 1
        order.append(new.pop())
    call = await sync_to_async(Call.objects.get)()
    kept = set(await sync_to_async(lambda: list(ProcessedWebhook.objects.filter(call=call).values_list("key", flat=True)))())
    assert kept == set(order[-3:])
    assert await stored_keys() == set(order[-3:])


async def test_global_cap_keeps_the_newest_keys(asgi, configure, monkeypatch):
    configure(carrier_config("twilio"))
    monkeypatch.setattr(webhook_processing, "MAX_KEYS", 4)
    monkeypatch.setattr(webhook_processing, "GLOBAL_CAP_EVERY", 1)
    order = []
    for index in range(6):
        before = await stored_keys()
        response = await asgi.post(**twilio_request(twilio_inbound("CA" + f"{index:032x}")))
        assert response.status_code == 200
        order.append(((await stored_keys()) - before).pop())
    assert await stored_keys() == set(order[-4:])
    assert await sync_to_async(Call.objects.count)() == 6  # trimming the keys touches no call


# --- per-turn Gather tokens (Twilio) ---------------------------------------------------------


class Background:
    """Run a blocking service call in a thread; join() returns its result or raises its error."""

    def __init__(self, func):
        self.result = self.error = None

        def run():
            from django.db import connection

            try:
                self.result = func()
            except Exception as exc:  # noqa: BLE001 - handed to join()
                self.error = exc
            finally:
                connection.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=8):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the turn did not finish"
        if self.error:
            raise self.error
        return self.result


async def test_stale_or_missing_turn_token_does_not_complete_the_turn(asgi, configure, monkeypatch):
    from calls.services import call_continue
    from providers.carriers.twilio.rest import TwilioRest

    configure(carrier_config("twilio", transcriptTimeoutMs=6000))
    documents: list[str] = []
    monkeypatch.setattr(TwilioRest, "update_twiml", lambda self, sid, twiml: documents.append(twiml))
    call_sid = "CA" + "7" * 32
    assert (await asgi.post(**twilio_request(twilio_inbound(call_sid)))).status_code == 200
    call = await sync_to_async(Call.objects.get)()
    cid = str(call.pk)

    turn = Background(lambda: call_continue(call_id=cid, prompt="Which day suits you?"))
    await await_until(sync_to_async(lambda: CallTurn.objects.filter(call_id=cid, listen_started_at__isnull=False).exists()),
                      "the turn to listen")
    token = await sync_to_async(lambda: CallTurn.objects.get(call_id=cid).token)()
    assert token and len(documents) == 1 and f"turnToken={token}" in documents[0]

    async def gather(query: str, speech: str) -> None:
        params = twilio_inbound(call_sid, CallStatus="in-progress", SpeechResult=speech, Confidence="0.9")
        response = await asgi.post(**twilio_request(params, query=query))
        assert response.status_code == 200, response.text

    await gather(f"callId={cid}&turnToken={uuid.uuid4().hex}", "Monday")  # a stale turn's result
    await gather(f"callId={cid}", "Tuesday")  # no token at all
    still_waiting = sync_to_async(lambda: CallTurn.objects.get(call_id=cid).status == "pending" and turn.thread.is_alive())
    await await_stays(still_waiting, "the turn still waiting for its own token", seconds=0.3)
    await gather(f"callId={cid}&turnToken={token}", "Wednesday")
    assert await sync_to_async(turn.join)() == "Wednesday"
    said = await sync_to_async(lambda: list(TranscriptEntry.objects.filter(speaker="user").values_list("text", flat=True)))()
    assert said == ["Wednesday"]


# --- logs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", CARRIERS)
async def test_refusal_is_logged_at_warning_without_secrets(asgi, configure, caplog, provider):
    configure(carrier_config(provider))
    request = badly_signed_request(provider)
    caplog.set_level(logging.DEBUG)
    response = await asgi.post(**request)
    assert response.status_code == 401
    refusals = [r for r in caplog.records if r.name == "calls.webhooks" and "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    message = refusals[0].getMessage()
    assert provider in message and "does not match" in message and "10.0.0.7" in message
    secrets = [TWILIO_TOKEN, PLIVO_TOKEN, "KEY-telnyx"]
    secrets += [v for k, v in request["headers"].items() if "signature" in k.lower()]
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in secrets:
        assert secret not in text


# --- malformed signature material: refused with 401, never a 500 -----------------------------


async def test_telnyx_non_ascii_digit_timestamp_is_401(asgi, configure):
    configure(carrier_config("telnyx"))
    request = telnyx_request(telnyx_body())
    request["headers"]["telnyx-timestamp"] = b"\xb2"
    response = await asgi.post(**request)
    assert response.status_code == 401


async def test_twilio_non_ascii_body_hash_is_401(asgi, configure):
    configure(carrier_config("twilio"))
    response = await asgi.post("/voice/webhook?bodySHA256=%C3%A9", content=b"{}",
                               headers={"X-Twilio-Signature": "AAAA", "Content-Type": "application/json"})
    assert response.status_code == 401


async def test_telnyx_replay_with_a_re_encoded_signature_has_no_side_effects(asgi, configure):
    configure(carrier_config("telnyx"))
    assert (await asgi.post(**telnyx_request(telnyx_body(event_id="evt-1")))).status_code == 200
    body = json.loads(telnyx_body("call.dtmf.received", digit="5"))
    del body["data"]["id"]  # without an event id only the request key stops a replay
    request = telnyx_request(json.dumps(body))
    assert (await asgi.post(**request)).status_code == 200
    assert (await asgi.post(**request)).status_code == 200  # a verbatim replay: recognised
    assert await sync_to_async(CallEvent.objects.filter(type="call.dtmf").count)() == 1
    request["headers"]["telnyx-signature-ed25519"] = request["headers"]["telnyx-signature-ed25519"].rstrip("=")
    assert (await asgi.post(**request)).status_code == 200  # same bytes, padding dropped
    assert await sync_to_async(CallEvent.objects.filter(type="call.dtmf").count)() == 1
