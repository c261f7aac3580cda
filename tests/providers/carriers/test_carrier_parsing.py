"""Golden tests of the carrier webhook parsers: one fixture file per request, as the carrier sends it.

Each file under tests/fixtures/<carrier>/ holds the request (query string as the gateway's URLs put
it, body as form pairs for Twilio/Plivo or the JSON envelope for Telnyx), the normalized events it
must give (`NormalizedEvent.to_dict()` shape) and, optionally, facts the answer is built from.

What is compared, per event: every field of `to_dict()` except
  * `id`: random per parse; checked to be a UUID, distinct per event;
  * `timestamp`: compared when the fixture states it (Telnyx: `data.occurred_at`), otherwise it
    must be the time of parsing;
  * `dedupeKey`: compared when the fixture states it (Telnyx: `telnyx:event:<data.id>`),
    otherwise it must be present and distinct per event (it derives from the request key or
    the request content).
A field the parser adds or drops fails the comparison. `facts` are compared key by key (the
keys the fixture lists); `call_ref` and `document_token` always.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from core.events import EVENT_TYPES, NormalizedEvent
from core.states import END_REASONS
from providers.carriers.base import WebhookParseError, WebhookRequest
from providers.carriers.plivo import webhook as plivo_webhook
from providers.carriers.telnyx import webhook as telnyx_webhook
from providers.carriers.twilio import webhook as twilio_webhook

from tests.paths import FIXTURES
CARRIERS = ("twilio", "telnyx", "plivo")
PARSERS = {"twilio": twilio_webhook.parse, "telnyx": telnyx_webhook.parse, "plivo": plivo_webhook.parse}
FILES = sorted(path for carrier in CARRIERS for path in (FIXTURES / carrier).glob("*.json"))
CALL_ID = "7f3e2a1c-5b9d-4e8f-a2c4-6d1b3e5f7a90"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def fixture(carrier: str, name: str) -> dict:
    return load(FIXTURES / carrier / f"{name}.json")


def encode_body(carrier: str, body) -> bytes:
    if carrier == "telnyx":
        return json.dumps(body).encode("utf-8")
    return urlencode([tuple(pair) for pair in body]).encode("utf-8")


def build_request(carrier: str, spec: dict, *, body: bytes | None = None) -> WebhookRequest:
    """The WebhookRequest the endpoint would build for this fixture's request."""
    return WebhookRequest(
        method=spec["method"],
        path="/voice/webhook",
        query_string=spec["query"],
        headers={"content-type": spec["content_type"], "user-agent": f"{carrier}-fixture"},
        body=encode_body(carrier, spec["body"]) if body is None else body,
        remote_addr="203.0.113.9",
        scheme="https",
    )


def parse_fixture(carrier: str, case: dict, *, request_key: str = "fixture:key"):
    return PARSERS[carrier](build_request(carrier, case["request"]), request_key=request_key)


def now_ms() -> int:
    return int(time.time() * 1000)


def comparable(actual: dict, expected: dict) -> dict:
    """`actual` without the fields the fixture does not pin (see the module docstring)."""
    out = {k: v for k, v in actual.items() if k != "id"}
    for volatile in ("timestamp", "dedupeKey"):
        if volatile not in expected:
            out.pop(volatile, None)
    return out


def test_there_are_fixtures_for_every_carrier():
    for carrier in CARRIERS:
        assert len(list((FIXTURES / carrier).glob("*.json"))) >= 10, carrier


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_is_well_formed(path):
    case = load(path)
    carrier = path.parent.name
    assert set(case) <= {"description", "request", "events", "facts", "call_ref", "document_token"}
    assert case["description"].strip()
    request = case["request"]
    assert request["method"] == "POST"
    assert isinstance(request["query"], str)
    if carrier == "telnyx":
        assert request["content_type"] == "application/json"
        assert isinstance(request["body"], dict)
    else:
        assert request["content_type"] == "application/x-www-form-urlencoded"
        assert all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in request["body"])
    for event in case["events"]:
        assert event["type"] in EVENT_TYPES
        assert "id" not in event


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_fixture(path):
    case = load(path)
    carrier = path.parent.name
    before = now_ms()
    parsed = parse_fixture(carrier, case, request_key=f"fixture:{carrier}:{path.stem}")
    after = now_ms()

    actual = [event.to_dict() for event in parsed.events]
    expected = case["events"]
    assert len(actual) == len(expected), (actual, expected)
    assert [comparable(a, e) for a, e in zip(actual, expected)] == expected

    for event, data, wanted in zip(parsed.events, actual, expected):
        assert isinstance(event, NormalizedEvent)
        assert EVENT_TYPES[data["type"]] is type(event)
        uuid.UUID(data["id"])
        assert data["dedupeKey"]
        if "timestamp" not in wanted:
            assert before <= data["timestamp"] <= after
    assert len({d["id"] for d in actual}) == len(actual)
    assert len({d["dedupeKey"] for d in actual}) == len(actual)

    for name, value in case.get("facts", {}).items():
        assert name in parsed.facts, f"fact {name!r} missing from {parsed.facts}"
        assert parsed.facts[name] == value, f"fact {name!r}: {parsed.facts[name]!r} != {value!r}"
    assert parsed.call_ref == case.get("call_ref")
    assert parsed.document_token == case.get("document_token")


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_backend_parse_webhook_agrees_with_the_module(path):
    """What the runtime calls (`carrier.parse_webhook`) gives the fixture's events too."""
    from core.config import load_config_data
    from providers.registry import carrier_class

    case = load(path)
    carrier = path.parent.name
    config = load_config_data({"provider": carrier}, environ={}).config
    backend = carrier_class(carrier)(config)
    try:
        parsed = backend.parse_webhook(build_request(carrier, case["request"]), request_key="k")
    finally:
        backend.close()
    assert [comparable(e.to_dict(), x) for e, x in zip(parsed.events, case["events"])] == case["events"]


# --- the fixtures cover what the brief and the parsers' tables promise -------------------------


def _events_of(carrier: str) -> list[tuple[dict, list[dict]]]:
    return [(load(p), load(p)["events"]) for p in FILES if p.parent.name == carrier]


def test_every_telnyx_hangup_cause_has_a_fixture_with_the_tables_reason():
    seen = {}
    for case, events in _events_of("telnyx"):
        payload = case["request"]["body"].get("data", {}).get("payload", {})
        if case["request"]["body"]["data"].get("event_type") == "call.hangup" and events[0]["type"] == "call.ended":
            seen[payload["hangup_cause"]] = events[0]["reason"]  # (a transfer leg's hang-up is a call.transfer)
    for cause, reason in telnyx_webhook.HANGUP_CAUSES.items():
        assert seen.get(cause) == reason, cause
    unknown = [c for c in seen if c.lower() not in telnyx_webhook.HANGUP_CAUSES]
    assert unknown and all(seen[c] == "completed" for c in unknown)


def test_every_twilio_status_has_a_fixture():
    statuses = set()
    for case, _ in _events_of("twilio"):
        statuses.update(v for k, v in case["request"]["body"] if k == "CallStatus")
    expected = {"initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled", "queued"}
    assert expected <= statuses


def test_every_plivo_status_and_transcript_field_has_a_fixture():
    statuses, fields = set(), set()
    for case, events in _events_of("plivo"):
        body = dict(case["request"]["body"])
        if body.get("Event") == "Hangup":
            statuses.add(body["CallStatus"])
        if any(e["type"] == "call.speech" for e in events):
            fields.update(name for name in plivo_webhook.TRANSCRIPT_FIELDS if body.get(name, "").strip())
    assert set(plivo_webhook.END_REASONS) <= statuses
    assert set(plivo_webhook.TRANSCRIPT_FIELDS) <= fields


def test_fixture_end_reasons_are_valid():
    for path in FILES:
        for event in load(path)["events"]:
            if event["type"] == "call.ended":
                assert event["reason"] in END_REASONS, path


# --- redelivery: which requests share dedupe keys ----------------------------------------------


def test_telnyx_redelivery_dedupes_on_the_event_id():
    case = fixture("telnyx", "call_answered")
    first = parse_fixture("telnyx", case, request_key="telnyx:sig-1")
    again = parse_fixture("telnyx", case, request_key="telnyx:sig-2")
    assert [e.key for e in first.events] == [e.key for e in again.events] == [f"telnyx:event:{case['request']['body']['data']['id']}"]


def test_telnyx_event_without_id_dedupes_on_the_request_key():
    case = fixture("telnyx", "call_answered")
    del case["request"]["body"]["data"]["id"]
    parsed = parse_fixture("telnyx", case, request_key="telnyx:abc")
    assert [e.key for e in parsed.events] == ["telnyx:abc:0"]


def test_plivo_redelivery_with_a_new_nonce_shares_dedupe_keys():
    case = fixture("plivo", "answer_inbound")
    first = parse_fixture("plivo", case, request_key="plivo:v3:nonce-1")
    again = parse_fixture("plivo", case, request_key="plivo:v3:nonce-2")
    assert [e.key for e in first.events] == [e.key for e in again.events]
    assert len({e.key for e in first.events}) == 2


def test_plivo_different_requests_have_different_dedupe_keys():
    a = parse_fixture("plivo", fixture("plivo", "hangup_busy"))
    b = parse_fixture("plivo", fixture("plivo", "hangup_completed"))
    assert a.events[0].key != b.events[0].key


def test_twilio_dedupe_keys_derive_from_the_verified_request_key():
    case = fixture("twilio", "inbound_voice_request")
    parsed = parse_fixture("twilio", case, request_key="twilio:req:abc")
    assert [e.key for e in parsed.events] == ["twilio:req:abc:0", "twilio:req:abc:1"]


# --- variants of fixtures -------------------------------------------------------------------------


def test_plivo_get_request_reads_parameters_from_the_query():
    """Plivo's answer_method may be GET: the parameters then arrive in the query string."""
    case = fixture("plivo", "answer_outbound")
    spec = case["request"]
    query = spec["query"] + "&" + urlencode([tuple(p) for p in spec["body"]])
    request = WebhookRequest(method="GET", path="/voice/webhook", query_string=query, headers={}, body=b"")
    parsed = plivo_webhook.parse(request, request_key="k")
    assert [comparable(e.to_dict(), x) for e, x in zip(parsed.events, case["events"])] == case["events"]


def test_twilio_turn_token_comes_only_from_the_query():
    case = fixture("twilio", "gather_speech")
    case["request"]["query"] = f"callId={CALL_ID}"
    case["request"]["body"].append(["turnToken", "forged-in-body"])
    parsed = parse_fixture("twilio", case)
    assert parsed.events[0].turn_token is None


def test_twilio_speech_wins_over_digits_and_status():
    case = fixture("twilio", "gather_speech")
    case["request"]["body"] += [["Digits", "9"]]
    parsed = parse_fixture("twilio", case)
    assert [e.type for e in parsed.events] == ["call.speech"]


def test_plivo_digits_win_over_speech():
    case = fixture("plivo", "getinput_speech")
    case["request"]["body"] = [[k, "5" if k == "Digits" else v] for k, v in case["request"]["body"]]
    parsed = parse_fixture("plivo", case)
    assert [(e.type, getattr(e, "digits", None)) for e in parsed.events] == [("call.dtmf", "5")]


@pytest.mark.parametrize("raw,expected", [("0", 0.0), ("1", 1.0), (".5", 0.5), ("1.0", 1.0), (" 0.25 ", 0.25),
                                          ("1.01", 0.9), ("-0.5", 0.9), ("1e-3", 0.9), ("inf", 0.9), ("", 0.9)])
def test_twilio_confidence_parsing(raw, expected):
    case = fixture("twilio", "gather_speech")
    case["request"]["body"] = [[k, raw if k == "Confidence" else v] for k, v in case["request"]["body"]]
    assert parse_fixture("twilio", case).events[0].confidence == expected


# --- malformed but verified requests: WebhookParseError naming the field ---------------------------


def _request(body: bytes, query: str = "", *, method: str = "POST", content_type: str = "application/x-www-form-urlencoded"):
    return WebhookRequest(method=method, path="/voice/webhook", query_string=query, headers={"content-type": content_type}, body=body)


def test_twilio_without_callsid_or_callid_names_callsid():
    body = [p for p in fixture("twilio", "outbound_url_fetch")["request"]["body"] if p[0] != "CallSid"]
    with pytest.raises(WebhookParseError, match="CallSid"):
        twilio_webhook.parse(_request(urlencode([tuple(p) for p in body]).encode()), request_key="k")


def test_twilio_blank_callsid_and_callid_names_callsid():
    with pytest.raises(WebhookParseError, match="CallSid"):
        twilio_webhook.parse(_request(b"CallSid=+++&CallStatus=ringing", "callId=%20"), request_key="k")


def test_twilio_callid_without_callsid_is_enough():
    body = [p for p in fixture("twilio", "status_completed")["request"]["body"] if p[0] != "CallSid"]
    parsed = twilio_webhook.parse(_request(urlencode([tuple(p) for p in body]).encode(), f"callId={CALL_ID}&type=status"), request_key="k")
    assert [(e.type, e.call_id, e.provider_call_id) for e in parsed.events] == [("call.ended", CALL_ID, None)]


def test_twilio_json_body_webhook_is_refused_naming_the_body():
    with pytest.raises(WebhookParseError, match="^body"):
        twilio_webhook.parse(_request(b'{"CallSid": "CA1"}', "bodySHA256=abc", content_type="application/json"), request_key="k")


def test_plivo_without_any_call_identifier_names_calluuid():
    body = [p for p in fixture("plivo", "hangup_completed")["request"]["body"] if p[0] not in ("CallUUID", "RequestUUID")]
    with pytest.raises(WebhookParseError, match="CallUUID"):
        plivo_webhook.parse(_request(urlencode([tuple(p) for p in body]).encode(), "provider=plivo&flow=hangup"), request_key="k")


def test_plivo_callid_alone_is_enough():
    body = [p for p in fixture("plivo", "hangup_busy")["request"]["body"] if p[0] not in ("CallUUID", "RequestUUID", "ALegUUID")]
    parsed = plivo_webhook.parse(_request(urlencode([tuple(p) for p in body]).encode(), f"callId={CALL_ID}&flow=hangup"), request_key="k")
    assert [(e.type, e.call_id, e.provider_call_id) for e in parsed.events] == [("call.ended", CALL_ID, None)]


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"data": ', b"\xef\xbb\xbf{}x"])
def test_telnyx_bad_json_names_the_body(body):
    with pytest.raises(WebhookParseError, match="^body: not valid JSON"):
        telnyx_webhook.parse(_request(body, content_type="application/json"), request_key="k")


@pytest.mark.parametrize("body", [b"[]", b'"call.hangup"', b"null", b"42", b'{"data": []}', b'{"data": {"event_type": 7}}',
                                  b'{"event_type": "call.hangup"}'])
def test_telnyx_json_without_an_event_is_acknowledged_without_events(body):
    parsed = telnyx_webhook.parse(_request(body, content_type="application/json"), request_key="k")
    assert parsed.events == [] and parsed.call_ref is None


def test_telnyx_event_without_any_call_identifier_has_no_events():
    body = json.dumps({"data": {"event_type": "call.hangup", "id": "e1", "payload": {"hangup_cause": "user_busy"}}}).encode()
    parsed = telnyx_webhook.parse(_request(body, content_type="application/json"), request_key="k")
    assert parsed.events == [] and parsed.call_ref is None


def test_telnyx_deeply_nested_json_is_a_parse_error():
    body = b"[" * 60_000  # under the endpoint's 64 kB body limit
    with pytest.raises(WebhookParseError, match="^body"):
        telnyx_webhook.parse(_request(body, content_type="application/json"), request_key="k")


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize("body", [b"\xff\xfe\x00CallSid=CA1", b"CallSid=CA1&From=\xe9t\xe9", b"\xc3"])
def test_non_utf8_bodies_are_parse_errors_naming_the_body(carrier, body):
    with pytest.raises(WebhookParseError, match="^body: not"):
        PARSERS[carrier](_request(body, f"callId={CALL_ID}"), request_key="k")


def test_percent_encoded_non_utf8_is_not_an_error():
    """%E9 in a form body decodes with replacement characters; it is not a reason to refuse."""
    parsed = twilio_webhook.parse(_request(b"CallSid=CA1&CallStatus=ringing&Direction=inbound&From=%E9"), request_key="k")
    assert parsed.events[0].from_number == "\ufffd"


def test_an_end_detail_is_one_bounded_printable_line_without_empty_notes():
    from providers.carriers.base import END_DETAIL_CHARS, end_detail

    assert end_detail("USER_BUSY", ("code", "3010"), ("hung up by", "Callee")) == "USER_BUSY (code 3010, hung up by Callee)"
    assert end_detail(None, ("SIP response", "404")) == "SIP response 404"
    assert end_detail("not_found", ("SIP", "unspecified"), ("hung up by", "")) == "not_found"
    assert end_detail("busy\r\nSet-Cookie: x\x00", ("SIP", 486)) == "busy Set-Cookie: x (SIP 486)"
    assert end_detail({"a": 1}, ("SIP", ["486"]), ("by", True)) == ""  # nothing of a shape a carrier sends
    assert len(end_detail("x" * 1000)) == END_DETAIL_CHARS
