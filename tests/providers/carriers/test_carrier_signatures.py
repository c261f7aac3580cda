"""The three carriers' webhook signature verifiers, checked against the carriers' OFFICIAL SDKs.

The SDKs are independent oracles: Twilio's RequestValidator and Plivo's
signature_v3 helpers sign requests our verifiers must accept; a throw-away Ed25519 key signs
Telnyx requests and telnyx.lib.webhook_verification must agree with our verdicts.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import types
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from plivo.exceptions import ValidationError as PlivoValidationError
from plivo.utils import validate_signature as plivo_validate_v2
from plivo.utils import validate_v3_signature
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature
from twilio.request_validator import RequestValidator

from calls.http_limits import scope_headers as asgi_headers
from core.config import load_config_data
from core.config.keys import PublicKeyError, load_public_key
from core.urls import webhook_url
from providers.carriers.base import WebhookRequest
from providers.carriers.plivo import webhook as plivo_webhook
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.telnyx import webhook as telnyx_webhook
from providers.carriers.twilio import webhook as twilio_webhook

PUBLIC_URL = "https://gw.example.com/voice/webhook"
PATH = "/voice/webhook"
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config_for(provider: str, **extra):
    blocks = {
        "twilio": {"twilio": {"accountSid": "AC" + "1" * 32, "authToken": "secret-token"}},
        "plivo": {"plivo": {"authId": "MA" + "A" * 18, "authToken": "plivo-token"}},
    }
    data = {"enabled": True, "provider": provider, "fromNumber": "+15550000001", "publicUrl": PUBLIC_URL,
            "inboundPolicy": "open", **blocks.get(provider, {}), **extra}
    loaded = load_config_data(data, environ={})
    assert loaded.errors == []
    return loaded.config


def make_request(*, method="POST", query="", body=b"", headers=None, path=PATH, remote="10.0.0.7") -> WebhookRequest:
    """A WebhookRequest built the way calls/webhooks.py builds it (header names lower-cased)."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    raw.append((b"host", b"gw.example.com"))
    return WebhookRequest(method=method, path=path, query_string=query, headers=asgi_headers({"headers": raw}),
                          body=body, remote_addr=remote, scheme="http")


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


class MultiDict:
    """Repeated form fields for the Twilio SDK (it reads them via .getall, as with Flask)."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __iter__(self):
        return iter(name for name, _ in self.pairs)

    def __bool__(self):
        return bool(self.pairs)

    def getall(self, name):
        return [value for key, value in self.pairs if key == name]


# --- Twilio ----------------------------------------------------------------------------------

TWILIO_TOKEN = "secret-token"
TWILIO_PARAMS = {
    "CallSid": "CA" + "0" * 32, "AccountSid": "AC" + "1" * 32, "From": "+15551230001", "To": "+15551230002",
    "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01",
}
TWILIO_QUERY = "callId=abc-123&type=status"


def twilio_request(params, signature, *, query=TWILIO_QUERY, body=None):
    body = urlencode(list(params.items()) if isinstance(params, dict) else params).encode() if body is None else body
    return make_request(query=query, body=body, headers={"X-Twilio-Signature": signature})


def twilio_verify(request, *, token=TWILIO_TOKEN, config=None):
    return twilio_webhook.verify(config or config_for("twilio"), request, token)


def test_twilio_request_signed_by_the_sdk_is_accepted():
    url = with_query(PUBLIC_URL, TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_PARAMS)
    result = twilio_verify(twilio_request(TWILIO_PARAMS, signature))
    assert result.ok, result.reason
    assert result.request_key.startswith("twilio:req:")


@pytest.mark.parametrize(
    "signed_url",
    [
        "https://gw.example.com/voice/webhooK?callId=abc-123&type=status",  # path
        "https://gw.example.con/voice/webhook?callId=abc-123&type=status",  # host
        "https://gw.example.com/voice/webhook?callId=abc-124&type=status",  # query
        "http://gw.example.com/voice/webhook?callId=abc-123&type=status",  # scheme
        "https://gw.example.com/voice/webhook?callId=abc-123&type=statu",  # one character less
    ],
)
def test_twilio_one_character_change_of_the_url_is_refused(signed_url):
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(signed_url, TWILIO_PARAMS)
    result = twilio_verify(twilio_request(TWILIO_PARAMS, signature))
    assert not result.ok and result.reason == "X-Twilio-Signature does not match"


@pytest.mark.parametrize("name", sorted(TWILIO_PARAMS))
def test_twilio_one_character_change_of_any_param_is_refused(name):
    url = with_query(PUBLIC_URL, TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_PARAMS)
    value = TWILIO_PARAMS[name]
    tampered = {**TWILIO_PARAMS, name: value[:-1] + ("1" if value[-1] != "1" else "2")}
    assert not twilio_verify(twilio_request(tampered, signature)).ok
    renamed = {(k + "x" if k == name else k): v for k, v in TWILIO_PARAMS.items()}
    assert not twilio_verify(twilio_request(renamed, signature)).ok
    assert not twilio_verify(twilio_request({**TWILIO_PARAMS, "Extra": "1"}, signature)).ok
    dropped = {k: v for k, v in TWILIO_PARAMS.items() if k != name}
    assert not twilio_verify(twilio_request(dropped, signature)).ok


def test_twilio_one_character_change_of_the_token_is_refused():
    url = with_query(PUBLIC_URL, TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN + "x").compute_signature(url, TWILIO_PARAMS)
    assert not twilio_verify(twilio_request(TWILIO_PARAMS, signature)).ok
    good = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_PARAMS)
    assert not twilio_verify(twilio_request(TWILIO_PARAMS, good), token="secret-tokeN").ok
    assert twilio_verify(twilio_request(TWILIO_PARAMS, good)).ok


def test_twilio_signature_over_default_port_is_accepted_when_public_url_has_none():
    signed = with_query("https://gw.example.com:443/voice/webhook", TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(signed, TWILIO_PARAMS)
    assert RequestValidator(TWILIO_TOKEN).validate(with_query(PUBLIC_URL, TWILIO_QUERY), TWILIO_PARAMS, signature)
    assert twilio_verify(twilio_request(TWILIO_PARAMS, signature)).ok


def test_twilio_signature_without_port_is_accepted_when_public_url_names_443():
    config = config_for("twilio", publicUrl="https://gw.example.com:443/voice/webhook")
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(with_query(PUBLIC_URL, TWILIO_QUERY), TWILIO_PARAMS)
    assert twilio_verify(twilio_request(TWILIO_PARAMS, signature), config=config).ok


def test_twilio_explicit_port_is_tried_as_is_and_stripped():
    config = config_for("twilio", publicUrl="https://gw.example.com:8443/voice/webhook")
    v = RequestValidator(TWILIO_TOKEN)
    for signed in ("https://gw.example.com:8443/voice/webhook", PUBLIC_URL):
        signature = v.compute_signature(with_query(signed, TWILIO_QUERY), TWILIO_PARAMS)
        assert v.validate(with_query("https://gw.example.com:8443/voice/webhook", TWILIO_QUERY), TWILIO_PARAMS, signature)
        assert twilio_verify(twilio_request(TWILIO_PARAMS, signature), config=config).ok
    other = v.compute_signature(with_query("https://gw.example.com:9443/voice/webhook", TWILIO_QUERY), TWILIO_PARAMS)
    assert not twilio_verify(twilio_request(TWILIO_PARAMS, other), config=config).ok


def test_twilio_json_body_with_body_sha256():
    v = RequestValidator(TWILIO_TOKEN)
    body = '{"property": "value", "boolean": true}'
    query = "callId=abc&bodySHA256=" + v.compute_hash(body)
    url = with_query(PUBLIC_URL, query)
    signature = v.compute_signature(url, {})
    assert v.validate(url, body, signature)
    request = twilio_request({}, signature, query=query, body=body.encode())
    assert twilio_verify(request).ok

    tampered_body = body.replace("true", "false")
    assert not v.validate(url, tampered_body, signature)
    result = twilio_verify(twilio_request({}, signature, query=query, body=tampered_body.encode()))
    assert not result.ok and result.reason == "bodySHA256 does not match the body"

    # The hash is signed: a new body with its own (unsigned) hash is refused too.
    forged_query = "callId=abc&bodySHA256=" + v.compute_hash(tampered_body)
    assert not twilio_verify(twilio_request({}, signature, query=forged_query, body=tampered_body.encode())).ok


def test_twilio_repeated_params_are_signed_with_sorted_distinct_values():
    pairs = [("CallSid", "CA1"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234"), ("From", "+1555")]
    url = with_query(PUBLIC_URL, TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, MultiDict(pairs))
    assert twilio_verify(twilio_request(pairs, signature)).ok
    assert not twilio_verify(twilio_request(pairs[:2] + pairs[4:], signature)).ok  # a value missing
    assert twilio_webhook.signature(TWILIO_TOKEN, url, pairs) == signature


def test_twilio_public_test_vectors():
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
              "Caller": "+14158675309"}
    assert twilio_webhook.signature("12345", url, list(params.items())) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    json_url = url + "&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    assert twilio_webhook.signature("12345", json_url, []) == "a9nBmqA0ju/hNViExpshrM61xv4="


def test_twilio_missing_signature_header_is_refused():
    result = twilio_verify(make_request(query=TWILIO_QUERY, body=urlencode(TWILIO_PARAMS).encode()))
    assert not result.ok and result.reason == "missing X-Twilio-Signature"


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
ascii_texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10)
param_pairs = st.lists(st.tuples(texts, texts), max_size=8)
query_pairs = st.lists(st.tuples(ascii_texts.filter(lambda k: k != "bodySHA256"), ascii_texts), max_size=4)


@HYPOTHESIS
@given(pairs=param_pairs, query=query_pairs, path=st.text(alphabet="abcxyz/-_.", max_size=10))
def test_twilio_signature_equals_the_sdk(pairs, query, path):
    url = with_query(f"https://gw.example.com/{path}", urlencode(query))
    sdk = RequestValidator(TWILIO_TOKEN).compute_signature(url, MultiDict(pairs))
    assert twilio_webhook.signature(TWILIO_TOKEN, url, pairs) == sdk


TWILIO_CONFIG_CACHE: dict = {}


@HYPOTHESIS
@given(
    pairs=st.lists(st.tuples(texts.filter(lambda k: k != "bodySHA256"), texts), max_size=6),
    query=query_pairs,
    signed_url=st.sampled_from(["same", "port", "other-path", "other-host", "http"]),
    signed_params=st.sampled_from(["same", "changed", "extra", "dropped"]),
    signed_token=st.sampled_from([TWILIO_TOKEN, TWILIO_TOKEN + "1", "12345"]),
)
def test_twilio_verify_agrees_with_the_sdk_validate(pairs, query, signed_url, signed_params, signed_token):
    config = TWILIO_CONFIG_CACHE.setdefault("c", config_for("twilio"))
    query_string = urlencode(query)
    url = with_query(PUBLIC_URL, query_string)
    sign_url = {
        "same": url, "port": url.replace("gw.example.com", "gw.example.com:443"),
        "other-path": url.replace("/webhook", "/webhookx"), "other-host": url.replace("gw.", "gx."),
        "http": url.replace("https:", "http:"),
    }[signed_url]
    sign_pairs = {
        "same": pairs, "changed": [(k, v + "!") for k, v in pairs], "extra": pairs + [("Zz", "1")], "dropped": pairs[1:],
    }[signed_params]
    signature = RequestValidator(signed_token).compute_signature(sign_url, MultiDict(sign_pairs))
    request = make_request(query=query_string, body=urlencode(pairs).encode(), headers={"X-Twilio-Signature": signature})
    ours = twilio_webhook.verify(config, request, TWILIO_TOKEN).ok
    assert ours == RequestValidator(TWILIO_TOKEN).validate(url, MultiDict(pairs), signature)
    if signed_url in ("same", "port") and signed_params == "same" and signed_token == TWILIO_TOKEN:
        assert ours


# --- Plivo -----------------------------------------------------------------------------------

PLIVO_TOKEN = "plivo-token"
NONCE = "05429567804466091622"
PLIVO_PARAMS = {"CallUUID": "4vbcpem8-0u46-x1ha-9af1-438vc92bf374", "Digits": "1234", "From": "+15551111111",
                "To": "+15555555555", "Event": "StartApp"}
PLIVO_QUERY = "provider=plivo&flow=answer&callId=abc"


def plivo_sdk_sign(method, uri, params, nonce=NONCE, token=PLIVO_TOKEN) -> str:
    base = (construct_get_url(uri, dict(params)) if method == "GET" else construct_post_url(uri, dict(params))).decode()
    return get_signature_v3(token.encode(), base, nonce.encode()).decode()


def plivo_request(params, signature, *, nonce=NONCE, query=PLIVO_QUERY, method="POST", extra_headers=None):
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce, **(extra_headers or {})}
    body = urlencode(list(params.items()) if isinstance(params, dict) else params, doseq=True).encode()
    return make_request(method=method, query=query, body=body if method == "POST" else b"", headers=headers)


def plivo_verify(request, *, token=PLIVO_TOKEN, config=None):
    return plivo_webhook.verify(config or config_for("plivo"), request, token)


@pytest.mark.parametrize("query", [PLIVO_QUERY, ""], ids=["with-query", "without-query"])
def test_plivo_request_signed_by_the_sdk_is_accepted(query):
    url = with_query(PUBLIC_URL, query)
    signature = plivo_sdk_sign("POST", url, PLIVO_PARAMS)
    assert validate_v3_signature("POST", url, NONCE, PLIVO_TOKEN, signature, dict(PLIVO_PARAMS))
    result = plivo_verify(plivo_request(PLIVO_PARAMS, signature, query=query))
    assert result.ok, result.reason
    assert result.request_key.startswith("plivo:v3:")


def test_plivo_tampered_params_nonce_or_token_are_refused():
    url = with_query(PUBLIC_URL, PLIVO_QUERY)
    signature = plivo_sdk_sign("POST", url, PLIVO_PARAMS)
    assert plivo_verify(plivo_request(PLIVO_PARAMS, signature)).ok
    for name in PLIVO_PARAMS:
        tampered = {**PLIVO_PARAMS, name: PLIVO_PARAMS[name] + "0"}
        assert not plivo_verify(plivo_request(tampered, signature)).ok, name
    assert not plivo_verify(plivo_request({**PLIVO_PARAMS, "Extra": "1"}, signature)).ok
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, signature, nonce=NONCE[:-1] + "3")).ok
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, signature, query=PLIVO_QUERY + "x")).ok
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, signature), token=PLIVO_TOKEN + "x").ok
    other_token = plivo_sdk_sign("POST", url, PLIVO_PARAMS, token="plivo-tokeN")
    result = plivo_verify(plivo_request(PLIVO_PARAMS, other_token))
    assert not result.ok and result.reason == "X-Plivo-Signature does not match"


def test_plivo_multi_signature_header_passes_when_one_matches():
    url = with_query(PUBLIC_URL, PLIVO_QUERY)
    good = plivo_sdk_sign("POST", url, PLIVO_PARAMS)
    other = plivo_sdk_sign("POST", url, PLIVO_PARAMS, token="old-token")
    for header in (f"{other},{good}", f"{good},{other}", f"bogus=,{good}", f"not base64!,{good}"):
        assert plivo_verify(plivo_request(PLIVO_PARAMS, header)).ok, header
    assert validate_v3_signature("POST", url, NONCE, PLIVO_TOKEN, f"{other},{good}", dict(PLIVO_PARAMS))
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, f"{other},bogus=")).ok


def test_plivo_get_request():
    query = "To=%2B15555555555&CallUUID=abc&From=%2B15551111111&callId=c1"
    url = with_query(PUBLIC_URL, query)
    signature = plivo_sdk_sign("GET", url, {})
    assert validate_v3_signature("GET", url, NONCE, PLIVO_TOKEN, signature)
    assert plivo_verify(plivo_request({}, signature, query=query, method="GET")).ok
    assert not plivo_verify(plivo_request({}, signature, query=query.replace("abc", "abd"), method="GET")).ok
    # Other methods are never signed by Plivo.
    result = plivo_verify(plivo_request({}, signature, query=query, method="PUT"))
    assert not result.ok and "GET and POST" in result.reason


def test_plivo_v2_headers_with_the_sdk_as_oracle():
    nonce = "12345678901234567890"
    url = with_query(PUBLIC_URL, PLIVO_QUERY)
    signature = base64.b64encode(
        hmac.new(PLIVO_TOKEN.encode(), (PUBLIC_URL + nonce).encode(), hashlib.sha256).digest()).decode()
    assert plivo_validate_v2(url, nonce, signature, PLIVO_TOKEN)

    def v2(sig, n=nonce, params=PLIVO_PARAMS):
        body = urlencode(params).encode()
        return make_request(query=PLIVO_QUERY, body=body,
                            headers={"X-Plivo-Signature-V2": sig, "X-Plivo-Signature-V2-Nonce": n})

    result = plivo_verify(v2(signature))
    assert result.ok and result.request_key.startswith("plivo:v2:")
    # V2 covers neither params nor query: only the URL without its query, and the nonce.
    assert plivo_verify(v2(signature, params={"Other": "1"})).ok
    assert not plivo_validate_v2(url, nonce[:-1] + "1", signature, PLIVO_TOKEN)
    assert not plivo_verify(v2(signature, n=nonce[:-1] + "1")).ok
    assert not plivo_verify(v2(signature), token="other").ok


def test_plivo_prefers_v3_when_both_are_present():
    url = with_query(PUBLIC_URL, PLIVO_QUERY)
    nonce2 = "999"
    v2_good = base64.b64encode(hmac.new(PLIVO_TOKEN.encode(), (PUBLIC_URL + nonce2).encode(), hashlib.sha256).digest()).decode()
    v3_good = plivo_sdk_sign("POST", url, PLIVO_PARAMS)
    both = {"X-Plivo-Signature-V2": v2_good, "X-Plivo-Signature-V2-Nonce": nonce2}
    assert plivo_verify(plivo_request(PLIVO_PARAMS, v3_good, extra_headers=both)).request_key.startswith("plivo:v3:")
    # A bad V3 is not rescued by a good V2 (no downgrade).
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, "AAAA" + v3_good[4:], extra_headers=both)).ok


def test_plivo_signature_without_nonce_is_refused():
    signature = plivo_sdk_sign("POST", with_query(PUBLIC_URL, PLIVO_QUERY), PLIVO_PARAMS)
    request = make_request(query=PLIVO_QUERY, body=urlencode(PLIVO_PARAMS).encode(),
                           headers={"X-Plivo-Signature-V3": signature})
    result = plivo_verify(request)
    assert not result.ok and "nonce" in result.reason


hosts = st.sampled_from(["gw.example.com", "example.com", "a-b.example.org:8443", "127.0.0.1:3334", "[::1]:8080"])
paths = st.lists(st.text(alphabet="abcXYZ019-_.~", min_size=1, max_size=6), max_size=3).map(lambda p: "/" + "/".join(p))
plivo_params = st.dictionaries(texts, st.lists(texts, min_size=1, max_size=3), max_size=5)
url_queries = st.lists(st.tuples(ascii_texts, ascii_texts), max_size=4).map(urlencode)


@HYPOTHESIS
@given(scheme=st.sampled_from(["http", "https"]), host=hosts, path=paths, query=url_queries, params=plivo_params,
       method=st.sampled_from(["GET", "POST"]))
def test_plivo_v3_base_equals_the_sdk_construction(scheme, host, path, query, params, method):
    url = with_query(f"{scheme}://{host}{path}", query)
    if method == "GET":  # Plivo's GET parameters are in the query string
        assert plivo_webhook.v3_base("GET", url, {}) == construct_get_url(url, {}).decode()
    else:
        expected = construct_post_url(url, {k: list(v) for k, v in params.items()}).decode()
        assert plivo_webhook.v3_base("POST", url, params) == expected


PLIVO_CONFIGS: dict = {}


def sdk_validate_v3(method, url, nonce, token, signature, params) -> bool:
    try:
        return validate_v3_signature(method, url, nonce, token, signature, params)
    except PlivoValidationError:
        return False


@HYPOTHESIS
@given(
    public=st.sampled_from([PUBLIC_URL, "http://gw.example.com:8080/hooks/plivo", "https://example.org/"]),
    query=url_queries,
    params=plivo_params,
    method=st.sampled_from(["GET", "POST"]),
    signed=st.sampled_from(["same", "param", "query", "nonce", "token", "multi"]),
    nonce=st.text(alphabet="0123456789", min_size=1, max_size=20),
)
def test_plivo_verify_agrees_with_the_sdk(public, query, params, method, signed, nonce):
    config = PLIVO_CONFIGS.get(public) or PLIVO_CONFIGS.setdefault(public, config_for("plivo", publicUrl=public))
    path = "/voice/webhook"
    if method == "GET":
        params = {}
    base = webhook_url(config)  # a publicUrl without a path gets serve.path
    url = with_query(base, query)
    sign_url, sign_params, sign_nonce, sign_token = url, {k: list(v) for k, v in params.items()}, nonce, PLIVO_TOKEN
    if signed == "param":
        sign_params = {**sign_params, "Tampered": ["1"]}
    elif signed == "query":
        sign_url = with_query(base, query + "&x=1" if query else "x=1")
    elif signed == "nonce":
        sign_nonce = nonce + "1"
    elif signed == "token":
        sign_token = PLIVO_TOKEN + "1"
    signature = plivo_sdk_sign(method, sign_url, sign_params, sign_nonce, sign_token)
    if signed == "multi":
        signature = plivo_sdk_sign(method, url, sign_params, nonce, "old-token") + "," + signature
    pairs = [(k, v) for k, values in params.items() for v in values]
    request = make_request(method=method, path=path, query=query, body=urlencode(pairs).encode(),
                           headers={"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce})
    ours = plivo_webhook.verify(config, request, PLIVO_TOKEN).ok
    sdk = sdk_validate_v3(method, url, nonce, PLIVO_TOKEN, signature, {k: list(v) for k, v in params.items()})
    assert ours == sdk
    if signed in ("same", "multi"):
        assert ours


# --- Telnyx ----------------------------------------------------------------------------------

SIGNING_KEY = SigningKey(b"\x07" * 32)
RAW_PUBLIC = bytes(SIGNING_KEY.verify_key)
PUBLIC_B64 = base64.b64encode(RAW_PUBLIC).decode()
TELNYX_BODY = json.dumps({
    "data": {"record_type": "event", "event_type": "call.initiated", "id": "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
             "occurred_at": "2024-01-01T00:00:00.000000Z",
             "payload": {"call_control_id": "v3:abc", "direction": "incoming", "from": "+15551230001",
                         "to": "+15551230002", "state": "parked"}},
    "meta": {"attempt": 1, "delivered_to": "https://gw.example.com/voice/webhook"},
}, separators=(",", ":"))


def telnyx_sign(body: str, ts, key: SigningKey = SIGNING_KEY) -> dict[str, str]:
    signature = key.sign(f"{ts}|{body}".encode()).signature
    return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": str(ts)}


def telnyx_request(body: str, headers: dict[str, str]) -> WebhookRequest:
    return make_request(body=body.encode(), headers=headers)


def pem_public() -> str:
    key = Ed25519PublicKey.from_public_bytes(RAW_PUBLIC)
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def der_public_b64() -> str:
    key = Ed25519PublicKey.from_public_bytes(RAW_PUBLIC)
    return base64.b64encode(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


@pytest.mark.parametrize(
    "text",
    [
        PUBLIC_B64,
        base64.urlsafe_b64encode(RAW_PUBLIC).decode().rstrip("="),
        pem_public(),
        der_public_b64(),
        f"  {PUBLIC_B64}\n",
    ],
    ids=["raw-base64", "base64url", "pem", "der-spki", "whitespace"],
)
def test_telnyx_public_key_forms_are_all_accepted(text):
    key = load_public_key(text)
    loaded = load_config_data({"enabled": True, "provider": "telnyx", "fromNumber": "+15550000001",
                               "telnyx": {"apiKey": "KEY", "connectionId": "conn", "publicKey": text}}, environ={})
    assert loaded.errors == []
    headers = telnyx_sign(TELNYX_BODY, int(time.time()))
    result = telnyx_webhook.verify(telnyx_request(TELNYX_BODY, headers), key)
    assert result.ok, result.reason
    assert result.request_key.startswith("telnyx:")
    other = SigningKey(b"\x08" * 32)
    assert not telnyx_webhook.verify(telnyx_request(TELNYX_BODY, telnyx_sign(TELNYX_BODY, int(time.time()), other)), key).ok


def sdk_accepts(body: str, headers: dict[str, str]) -> bool:
    try:
        verify_webhook_signature(body, headers, PUBLIC_B64)
    except WebhookVerificationError:
        return False
    return True


NOW = 1_800_000_000


def flip_bit(signature_b64: str) -> str:
    raw = bytearray(base64.b64decode(signature_b64))
    raw[10] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


TELNYX_CASES = {
    "valid": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW)), True),
    "stale-301s": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW - 301)), False),
    "stale-1h": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW - 3600)), False),
    "future-301s": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW + 301)), False),
    "at-limit-past": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW - 300)), True),
    "at-limit-future": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, NOW + 300)), True),
    "missing-signature": (lambda: (TELNYX_BODY, {"telnyx-timestamp": str(NOW)}), False),
    "missing-timestamp": (
        lambda: (TELNYX_BODY, {"telnyx-signature-ed25519": telnyx_sign(TELNYX_BODY, NOW)["telnyx-signature-ed25519"]}),
        False,
    ),
    "missing-both": (lambda: (TELNYX_BODY, {}), False),
    "upper-case-names": (
        lambda: (TELNYX_BODY, {k.upper(): v for k, v in telnyx_sign(TELNYX_BODY, NOW).items()}), True),
    "mixed-case-names": (
        lambda: (TELNYX_BODY, {"Telnyx-Signature-Ed25519": telnyx_sign(TELNYX_BODY, NOW)["telnyx-signature-ed25519"],
                               "Telnyx-Timestamp": str(NOW)}), True),
    "body-whitespace": (lambda: (TELNYX_BODY.replace(",", ", ", 1), telnyx_sign(TELNYX_BODY, NOW)), False),
    "body-trailing-newline": (lambda: (TELNYX_BODY + "\n", telnyx_sign(TELNYX_BODY, NOW)), False),
    "bit-flipped-signature": (
        lambda: (TELNYX_BODY, {**telnyx_sign(TELNYX_BODY, NOW),
                               "telnyx-signature-ed25519": flip_bit(telnyx_sign(TELNYX_BODY, NOW)["telnyx-signature-ed25519"])}),
        False,
    ),
    "timestamp-swapped-after-signing": (
        lambda: (TELNYX_BODY, {**telnyx_sign(TELNYX_BODY, NOW), "telnyx-timestamp": str(NOW - 1)}), False),
    "non-integer-timestamp": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, f"{NOW}.5")), False),
    "word-timestamp": (lambda: (TELNYX_BODY, telnyx_sign(TELNYX_BODY, "soon")), False),
    "truncated-signature": (
        lambda: (TELNYX_BODY, {**telnyx_sign(TELNYX_BODY, NOW),
                               "telnyx-signature-ed25519": telnyx_sign(TELNYX_BODY, NOW)["telnyx-signature-ed25519"][:40]}),
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(TELNYX_CASES))
def test_telnyx_verify_agrees_with_the_sdk(case, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: float(NOW))  # both verifiers read time.time()
    build, expected = TELNYX_CASES[case]
    body, headers = build()
    sdk = sdk_accepts(body, headers)
    ours = telnyx_webhook.verify(telnyx_request(body, headers), load_public_key(PUBLIC_B64))
    assert (sdk, ours.ok) == (expected, expected), ours.reason


def test_telnyx_stale_timestamp_reason():
    headers = telnyx_sign(TELNYX_BODY, int(time.time()) - 301)
    result = telnyx_webhook.verify(telnyx_request(TELNYX_BODY, headers), load_public_key(PUBLIC_B64))
    assert not result.ok and result.reason.startswith("Timestamp too old")


def test_telnyx_base64url_signature_is_accepted():
    headers = telnyx_sign(TELNYX_BODY, int(time.time()))
    raw = base64.b64decode(headers["telnyx-signature-ed25519"])
    headers["telnyx-signature-ed25519"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert telnyx_webhook.verify(telnyx_request(TELNYX_BODY, headers), load_public_key(PUBLIC_B64)).ok


def test_telnyx_missing_public_key_is_refused():
    headers = telnyx_sign(TELNYX_BODY, int(time.time()))
    result = telnyx_webhook.verify(telnyx_request(TELNYX_BODY, headers), None)
    assert not result.ok and result.reason == "Missing telnyx.publicKey"

    # The carrier as built from a config without a key (allowed only with skipSignatureVerification).
    loaded = load_config_data(
        {"enabled": True, "provider": "telnyx", "fromNumber": "+15550000001", "skipSignatureVerification": True,
         "telnyx": {"apiKey": "KEY", "connectionId": "conn"}},
        environ={"VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION": "1"},
    )
    assert loaded.errors == []
    carrier = TelnyxCarrier(loaded.config)
    try:
        result = carrier.verify_webhook(telnyx_request(TELNYX_BODY, headers))
    finally:
        carrier.close()
    assert not result.ok and result.reason == "Missing telnyx.publicKey"


def rsa_pem() -> str:
    key = generate_private_key(public_exponent=65537, key_size=1024).public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize(
    "bad", ["not a key!", base64.b64encode(b"\x01" * 31).decode(), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "rsa"],
    ids=["garbage", "31-bytes", "broken-pem", "rsa-pem"],
)
def test_bad_telnyx_public_key_is_reported_by_the_config_loader(bad):
    text = rsa_pem() if bad == "rsa" else bad
    with pytest.raises(PublicKeyError):
        load_public_key(text)
    loaded = load_config_data(
        {"enabled": True, "provider": "telnyx", "fromNumber": "+15550000001",
         "telnyx": {"apiKey": "KEY", "connectionId": "conn", "publicKey": text}},
        environ={},
    )
    problems = [e for e in loaded.errors if e.startswith("telnyx.publicKey: ")]
    assert len(problems) == 1, loaded.errors
    assert len(problems[0]) > len("telnyx.publicKey: ") + 5  # says what is wrong
    good = load_config_data(
        {"enabled": True, "provider": "telnyx", "fromNumber": "+15550000001",
         "telnyx": {"apiKey": "KEY", "connectionId": "conn", "publicKey": PUBLIC_B64}},
        environ={},
    )
    assert good.errors == []


# --- constant-time comparison ----------------------------------------------------------------


class RecordingHmac(types.SimpleNamespace):
    """Stands in for the `hmac` module inside one carrier module: records compare_digest calls."""

    def __init__(self, verdict=None):
        super().__init__(new=hmac.new, calls=[])
        self.verdict = verdict

    def compare_digest(self, a, b):
        self.calls.append((a, b))
        return hmac.compare_digest(a, b) if self.verdict is None else self.verdict


def test_twilio_compares_signatures_with_compare_digest(monkeypatch):
    recorder = RecordingHmac()
    monkeypatch.setattr(twilio_webhook, "hmac", recorder)
    url = with_query(PUBLIC_URL, TWILIO_QUERY)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, TWILIO_PARAMS)
    assert twilio_verify(twilio_request(TWILIO_PARAMS, signature)).ok
    assert any(signature.encode() in pair for pair in recorder.calls)
    # The verdict is the comparison's: forced False, the valid signature is refused.
    monkeypatch.setattr(twilio_webhook, "hmac", RecordingHmac(verdict=False))
    assert not twilio_verify(twilio_request(TWILIO_PARAMS, signature)).ok


def test_twilio_body_hash_is_compared_with_compare_digest(monkeypatch):
    recorder = RecordingHmac()
    monkeypatch.setattr(twilio_webhook, "hmac", recorder)
    body = '{"a": 1}'
    digest = hashlib.sha256(body.encode()).hexdigest()
    query = "bodySHA256=" + digest
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(with_query(PUBLIC_URL, query), {})
    assert twilio_verify(twilio_request({}, signature, query=query, body=body.encode())).ok
    assert (digest.encode(), digest.encode()) in recorder.calls


def test_plivo_compares_every_candidate_with_compare_digest(monkeypatch):
    recorder = RecordingHmac()
    monkeypatch.setattr(plivo_webhook, "hmac", recorder)
    url = with_query(PUBLIC_URL, PLIVO_QUERY)
    good = plivo_sdk_sign("POST", url, PLIVO_PARAMS)
    other = plivo_sdk_sign("POST", url, PLIVO_PARAMS, token="old")
    assert plivo_verify(plivo_request(PLIVO_PARAMS, f"{good},{other}")).ok
    provided = [a for a, _ in recorder.calls]
    # Both signatures were compared (no early exit after the first match), as raw bytes.
    assert provided == [base64.b64decode(good), base64.b64decode(other)]
    monkeypatch.setattr(plivo_webhook, "hmac", RecordingHmac(verdict=False))
    assert not plivo_verify(plivo_request(PLIVO_PARAMS, good)).ok


# --- malformed input must be refused, not crash the verifier ---------------------------------


def test_telnyx_superscript_digit_timestamp_is_refused():
    # Header values arrive latin-1 decoded (calls/webhooks.py), so the byte 0xB2 becomes '²'.
    headers = {**telnyx_sign(TELNYX_BODY, int(time.time())), "telnyx-timestamp": "\xb2"}
    assert not sdk_accepts(TELNYX_BODY, headers)
    result = telnyx_webhook.verify(telnyx_request(TELNYX_BODY, headers), load_public_key(PUBLIC_B64))
    assert not result.ok


def test_twilio_non_ascii_body_hash_is_refused():
    request = make_request(query="bodySHA256=%C3%A9", body=b"{}", headers={"X-Twilio-Signature": "x"})
    result = twilio_verify(request)
    assert not result.ok


def test_telnyx_re_encoded_signature_has_the_same_replay_key():
    """Two deliveries of the same signed request share the replay key (base.WebhookVerification)."""
    key = load_public_key(PUBLIC_B64)
    headers = telnyx_sign(TELNYX_BODY, int(time.time()))
    raw = base64.b64decode(headers["telnyx-signature-ed25519"])
    variants = [
        headers["telnyx-signature-ed25519"],
        headers["telnyx-signature-ed25519"].rstrip("="),  # padding is optional for our decoder
        base64.urlsafe_b64encode(raw).decode(),  # so is the alphabet
    ]
    keys = set()
    for text in variants:
        result = telnyx_webhook.verify(telnyx_request(TELNYX_BODY, {**headers, "telnyx-signature-ed25519": text}), key)
        assert result.ok
        keys.add(result.request_key)
    assert len(keys) == 1
