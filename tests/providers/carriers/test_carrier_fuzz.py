"""Property-based fuzzing of the carrier webhook parsers and of the webhook handler behind them.

1. `parse` of each carrier, fed arbitrary bodies and query strings, either returns a ParsedWebhook
   whose events are valid normalized events or raises WebhookParseError, never anything else.
2. `calls.services.webhook_process`, with the carrier configured and signature checks skipped, answers
   every request 200 or 400 (never raises, i.e. never a 500), keeps the database consistent after
   every request, and changes nothing when it answers 400.

Requests are drawn four ways: mutations of the golden fixtures (realistic, reach deep paths), requests
of the carrier's own shapes with realistic-or-random field values, random form pairs / JSON envelopes
mixing the carriers' real field names with random values and wrong types at every level, and random
bytes. Edge cases the fuzzing found are also pinned by plain tests at the end.
"""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.events import EVENT_TYPES, CallAmd, CallDtmf, CallEnded, CallSpeaking, CallSpeech, NormalizedEvent
from core.states import END_REASONS, TERMINAL_STATES, CallState
from providers.carriers.base import ParsedWebhook, WebhookParseError, WebhookRequest
from providers.carriers.plivo import webhook as plivo_webhook
from providers.carriers.telnyx import webhook as telnyx_webhook
from providers.carriers.twilio import webhook as twilio_webhook

from tests.paths import FIXTURES
PARSERS = {"twilio": twilio_webhook.parse, "telnyx": telnyx_webhook.parse, "plivo": plivo_webhook.parse}
PUBLIC_URL = "https://gw.example.com/voice/webhook"
UNSAFE_SKIP = {"VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION": "1"}
PARSE_SETTINGS = settings(max_examples=500, deadline=None, database=None)
HANDLER_SETTINGS = settings(
    max_examples=35, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Calls seeded before every handler example (ids fixed so requests can name them).
OUT_ID = "7f3e2a1c-5b9d-4e8f-a2c4-6d1b3e5f7a90"  # the fixtures' callId: outbound, initiated
LISTEN_ID = "0b6f1d2e-3c4a-4b5c-8d6e-7f8091a2b3c4"  # outbound, listening, a turn waiting
IN_ID = "c5d4e3f2-a1b0-4c9d-8e7f-6a5b4c3d2e1f"  # inbound, ringing, greeting not yet spoken
TURN = "5c0e8a44-1f2b-4d6e-9a7b-3c2d1e0f9a8b"  # the fixtures' turnToken: the waiting turn's token
PROVIDER_IDS = {
    "twilio": ("CAf1e2d3c4b5a69788796a5b4c3d2e1f00", "CA00000000000000000000000000000042", "CA99999999999999999999999999999999"),
    "telnyx": ("v3:u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO0vl1VQw9U6ApQm4_BE2_g", "v3:listening-leg", "v3:inbound-leg"),
    "plivo": ("3a2e4c5d-7b8f-4e1a-9c0d-2b3f4e5a6b7c", "11111111-2222-4333-8444-555555555555", "99999999-8888-4777-8666-555555555555"),
}
SEED_IDS = (OUT_ID, LISTEN_ID, IN_ID)


def fixtures_of(carrier: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((FIXTURES / carrier).glob("*.json"))]


FIXTURE_CASES = {carrier: fixtures_of(carrier) for carrier in PARSERS}


def _grouped(cases: list[dict]) -> list[list[dict]]:
    """Fixtures grouped by the event types they give, so 20 hangup causes do not crowd out one DTMF."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for case in cases:
        groups.setdefault(tuple(e["type"] for e in case["events"]), []).append(case)
    return [groups[key] for key in sorted(groups)]


FIXTURE_GROUPS = {carrier: _grouped(cases) for carrier, cases in FIXTURE_CASES.items()}


def fixture_case(carrier: str):
    return st.sampled_from(FIXTURE_GROUPS[carrier]).flatmap(st.sampled_from)

# --- value strategies -----------------------------------------------------------------------------

short_text = st.text(max_size=12)
any_text = st.text(max_size=40)
numbers = st.sampled_from(["+14155550123", "+15105550100", "14155550123", "client:alice", "sip:bob@example.com",
                           "anonymous", "", "+1", "+" + "9" * 30])
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | short_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
                           max_leaves=6)


def mostly(realistic, junk=json_values):
    """`realistic` four times in five, else `junk` (wrong types at this level)."""
    return st.integers(0, 4).flatmap(lambda i: junk if i == 0 else realistic)


decimals = (
    st.sampled_from(["0.9216", "1", "0", ".5", "1.0", "1.5", "-0.2", "9.2e-1", "NaN", "inf", "high", "", " 0.3 "])
    | st.floats().map(repr)
    | st.from_regex(r"\A[0-9.eE+\- ]{1,8}\Z")
)


def ids_for(carrier: str):
    return st.sampled_from(SEED_IDS + PROVIDER_IDS[carrier] + (str(uuid.UUID(int=7)), "unknown-call"))


@st.composite
def queries(draw, carrier: str):
    """Query strings as the gateway's URLs put them, plus random names and values."""
    pairs = []
    if draw(st.booleans()):
        pairs.append(("callId", draw(ids_for(carrier) | short_text)))
    if draw(st.booleans()):
        pairs.append(("type", draw(st.sampled_from(["status", "amd", "", "other"]) | short_text)))
    if draw(st.booleans()):
        pairs.append(("flow", draw(st.sampled_from(["answer", "hangup", "getinput", "xml-speak", "xml-listen", "relisten",
                                                    "keepalive", "ring", "amd", ""]) | short_text)))
    if draw(st.booleans()):
        pairs.append(("turnToken", draw(st.sampled_from([TURN, "", "stale-token"]) | short_text)))
    if carrier == "plivo" and draw(st.booleans()):
        pairs.append(("provider", "plivo"))
    if draw(st.integers(0, 4)) == 0:
        pairs.append(("doc", draw(short_text)))
    pairs += draw(st.lists(st.tuples(short_text, short_text), max_size=2))
    pairs = draw(st.permutations(pairs))
    text = urlencode(pairs)
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.text(max_size=30))  # not even name=value pairs
    return text


TWILIO_VALUES = {
    "CallSid": lambda: ids_for("twilio") | short_text,
    "AccountSid": lambda: st.just("AC0123456789abcdef0123456789abcdef") | short_text,
    "CallStatus": lambda: st.sampled_from(["queued", "initiated", "ringing", "in-progress", "answered", "completed", "busy",
                                           "no-answer", "failed", "canceled", " In-Progress ", "COMPLETED", ""]) | short_text,
    "Direction": lambda: st.sampled_from(["inbound", "outbound-api", "outbound-dial", "Inbound", ""]) | short_text,
    "From": lambda: numbers | short_text,
    "To": lambda: numbers | short_text,
    "Caller": lambda: numbers,
    "Called": lambda: numbers,
    "SpeechResult": lambda: st.sampled_from(["Yes please.", "", "   "]) | any_text,
    "Confidence": lambda: decimals | short_text,
    "Digits": lambda: st.sampled_from(["1", "1234", "#", "", "w"]) | short_text,
    "AnsweredBy": lambda: st.sampled_from(["human", "machine_start", "machine_end_beep", "fax", "unknown", ""]) | short_text,
    "StreamEvent": lambda: st.sampled_from(["stream-started", "stream-stopped", "stream-error"]),
    "ApiVersion": lambda: st.just("2010-04-01"),
    "SequenceNumber": lambda: st.integers(0, 9).map(str),
    "CallbackSource": lambda: st.just("call-progress-events"),
    "FinishedOnKey": lambda: st.sampled_from(["#", "*", ""]),
}
PLIVO_VALUES = {
    "CallUUID": lambda: ids_for("plivo") | short_text,
    "RequestUUID": lambda: ids_for("plivo") | short_text,
    "ALegUUID": lambda: ids_for("plivo"),
    "CallStatus": lambda: st.sampled_from(["ringing", "in-progress", "completed", "busy", "no-answer", "timeout", "failed",
                                           "cancel", "machine", " Completed ", ""]) | short_text,
    "Direction": lambda: st.sampled_from(["inbound", "outbound", "OUTBOUND", ""]) | short_text,
    "Event": lambda: st.sampled_from(["StartApp", "Hangup", "Ring", "MachineDetection", "Redirect", "Transfer", ""]) | short_text,
    "From": lambda: numbers | short_text,
    "To": lambda: numbers | short_text,
    "Digits": lambda: st.sampled_from(["1", "42", "", "#"]) | short_text,
    "Speech": lambda: st.sampled_from(["Call me back.", "", " "]) | any_text,
    "SpeechConfidenceScore": lambda: decimals,
    "Machine": lambda: st.sampled_from(["true", "false", "TRUE", ""]) | short_text,
    "InputType": lambda: st.sampled_from(["speech", "dtmf"]),
    "HangupCause": lambda: st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "NO_ANSWER"]),
    **{name: (lambda: any_text) for name in ("Transcription", "TranscriptionText", "SpeechResult", "RecognizedSpeech", "Text")},
}


@st.composite
def form_pairs(draw, values: dict):
    """Form fields: real names with realistic or random values, random names, repeats."""
    names = draw(st.lists(st.sampled_from(sorted(values)), max_size=8))
    pairs = [(name, draw(values[name]())) for name in names]
    pairs += draw(st.lists(st.tuples(short_text, short_text), max_size=2))
    return draw(st.permutations(pairs))


@st.composite
def mutated_fixture_pairs(draw, carrier: str, values: dict):
    """A golden fixture's form body with fields dropped, changed, added or repeated."""
    case = draw(fixture_case(carrier))
    pairs = [tuple(p) for p in case["request"]["body"]]
    out = []
    for name, value in pairs:
        action = draw(st.integers(0, 9))
        if action == 0:
            continue  # dropped
        if action == 1:
            value = draw(values[name]() if name in values else short_text)
        if action == 2:
            out.append((name, draw(short_text)))  # repeated with another value
        out.append((name, value))
    if draw(st.integers(0, 2)) == 0:
        out += draw(form_pairs(values).map(lambda p: p[:2]))
    query = case["request"]["query"] if draw(st.booleans()) else draw(queries(carrier))
    return query, out


def maybe(draw, pairs: list, name: str, strategy, p: int = 4) -> None:
    """Add `name` with a drawn value, (p-1) times in p."""
    if draw(st.integers(1, p)) != 1:
        pairs.append((name, draw(strategy)))


@st.composite
def twilio_shaped(draw):
    """A request of one of the shapes Twilio sends, every field realistic or random."""
    shape = draw(st.sampled_from(["voice", "status", "speech", "digits", "amd", "fetch", "stream"]))
    v = {name: make() for name, make in TWILIO_VALUES.items()}
    pairs: list[tuple[str, str]] = []
    maybe(draw, pairs, "CallSid", v["CallSid"], 8)
    maybe(draw, pairs, "AccountSid", v["AccountSid"])
    if shape != "amd":
        for name in ("From", "To", "Direction", "CallStatus", "ApiVersion"):
            maybe(draw, pairs, name, v[name])
    if shape == "speech":
        pairs.append(("SpeechResult", draw(v["SpeechResult"])))
        maybe(draw, pairs, "Confidence", v["Confidence"])
    elif shape == "digits":
        pairs.append(("Digits", draw(v["Digits"])))
        maybe(draw, pairs, "FinishedOnKey", v["FinishedOnKey"])
    elif shape == "amd":
        maybe(draw, pairs, "AnsweredBy", v["AnsweredBy"], 8)
    elif shape == "stream":
        pairs.append(("StreamEvent", draw(v["StreamEvent"])))
    elif shape == "status":
        maybe(draw, pairs, "CallbackSource", v["CallbackSource"])
        maybe(draw, pairs, "SequenceNumber", v["SequenceNumber"])
    query = [("callId", draw(ids_for("twilio")))] if draw(st.integers(0, 3)) else []
    query += {"status": [("type", "status")], "amd": [("type", "amd")], "stream": [("type", "status")],
              "fetch": [("flow", draw(st.sampled_from(["keepalive", "relisten"])))],
              "speech": [("turnToken", draw(st.sampled_from([TURN, "stale-token"])))]}.get(shape, [])
    text = urlencode(query) if draw(st.integers(0, 4)) else draw(queries("twilio"))
    return text, draw(st.permutations(pairs))


@st.composite
def plivo_shaped(draw):
    """A request of one of the shapes Plivo sends, every field realistic or random."""
    shape = draw(st.sampled_from(["answer", "hangup", "speech", "dtmf", "transcript", "amd", "ring", "fetch"]))
    v = {name: make() for name, make in PLIVO_VALUES.items()}
    pairs: list[tuple[str, str]] = []
    maybe(draw, pairs, "CallUUID", v["CallUUID"], 6)
    maybe(draw, pairs, "RequestUUID", v["RequestUUID"], 2)
    for name in ("From", "To", "Direction", "CallStatus"):
        maybe(draw, pairs, name, v[name])
    event = {"answer": "StartApp", "hangup": "Hangup", "amd": "MachineDetection", "ring": "Ring"}.get(shape)
    if event:
        maybe(draw, pairs, "Event", st.just(event) | v["Event"], 8)
    if shape == "speech":
        pairs += [("InputType", "speech"), ("Speech", draw(v["Speech"]))]
        maybe(draw, pairs, "SpeechConfidenceScore", v["SpeechConfidenceScore"])
        maybe(draw, pairs, "Digits", st.just(""))
    elif shape == "dtmf":
        pairs += [("InputType", "dtmf"), ("Digits", draw(v["Digits"]))]
    elif shape == "transcript":
        name = draw(st.sampled_from(plivo_webhook.TRANSCRIPT_FIELDS))
        pairs.append((name, draw(v[name])))
    elif shape == "amd":
        maybe(draw, pairs, "Machine", v["Machine"], 8)
    elif shape == "hangup":
        maybe(draw, pairs, "HangupCause", v["HangupCause"])
    flow = {"answer": "answer", "hangup": "hangup", "speech": "getinput", "dtmf": "getinput", "transcript": "getinput",
            "amd": "amd", "ring": "ring", "fetch": draw(st.sampled_from(["keepalive", "relisten", "xml-speak"]))}[shape]
    query = [("provider", "plivo")]
    if draw(st.integers(0, 3)):
        query += [("callId", draw(ids_for("plivo"))), ("flow", flow)]
    if flow == "getinput" and draw(st.booleans()):
        query.append(("turnToken", draw(st.sampled_from([TURN, "stale-token"]))))
    text = urlencode(query) if draw(st.integers(0, 4)) else draw(queries("plivo"))
    return text, draw(st.permutations(pairs))


SHAPED = {"twilio": twilio_shaped, "plivo": plivo_shaped}


# --- Telnyx JSON envelopes ---------------------------------------------------------------------------

TELNYX_EVENT_TYPES = ["call.initiated", "call.ringing", "call.answered", "call.bridged", "call.speak.started",
                      "call.speak.ended", "call.transcription", "call.hangup", "call.dtmf.received",
                      "call.machine.detection.ended", "call.machine.premium.detection.ended", "streaming.started",
                      "streaming.stopped", "streaming.failed", "call.recording.saved", "call.unknown.thing"]
client_states = st.sampled_from([base64.b64encode(i.encode()).decode() for i in SEED_IDS]
                                + ["not base64!!", "//4A", "", base64.b64encode(b"unknown-call").decode()])
# occurred_at: realistic timestamps, the calendar's edges, odd ISO forms and junk.
occurred = (
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=14))]))
    .map(lambda d: d.isoformat().replace("+00:00", "Z"))
    | st.sampled_from(["2025-11-22T18:00:00.076316Z", "2025-11-22", "yesterday", ""])
    | json_values
)
transcription_data = st.fixed_dictionaries({}, optional={
    "transcript": mostly(st.sampled_from(["Hello", "", "  "]) | any_text),
    "is_final": mostly(st.booleans()),
    "confidence": mostly(st.floats(-1, 2)),
    "transcription_track": st.just("inbound"),
})
telnyx_payload = st.fixed_dictionaries({}, optional={
    "call_control_id": mostly(ids_for("telnyx")),
    "call_leg_id": st.just("2dc6fc34-f9e0-11ea-b68e-02420a0f7768"),
    "client_state": mostly(client_states),
    "direction": mostly(st.sampled_from(["incoming", "outgoing", "inbound", "outbound", "sideways"])),
    "from": mostly(numbers),
    "to": mostly(numbers),
    "state": st.sampled_from(["parked", "bridging", "answered", "hangup"]),
    "hangup_cause": mostly(st.sampled_from(sorted(telnyx_webhook.HANGUP_CAUSES) + ["unspecified", "USER_BUSY"])),
    "digit": mostly(st.sampled_from(["1", "#", ""])),
    "result": mostly(st.sampled_from(["human", "machine", "not_sure", ""])),
    "text": mostly(any_text),
    "transcription_data": mostly(transcription_data),
    "transcription": mostly(any_text),
    "failure_reason": mostly(st.sampled_from(["connection_failed", ""]) | any_text),
})
telnyx_data = st.fixed_dictionaries({}, optional={
    "event_type": mostly(st.sampled_from(TELNYX_EVENT_TYPES)),
    "id": mostly(st.uuids().map(str)),
    "occurred_at": occurred,
    "payload": mostly(telnyx_payload),
    "record_type": mostly(st.just("event")),
})
telnyx_envelopes = (
    mostly(st.fixed_dictionaries({"data": mostly(telnyx_data)},
                                 optional={"meta": mostly(st.fixed_dictionaries({"attempt": st.integers(1, 3)}))}))
)


@st.composite
def mutated_telnyx_fixture(draw):
    case = draw(fixture_case("telnyx"))
    envelope = json.loads(json.dumps(case["request"]["body"]))
    data = envelope.get("data", {})
    payload = data.get("payload", {})
    for target in (payload, data, envelope):
        for key in list(target):
            action = draw(st.integers(0, 15))
            if action == 0:
                del target[key]
            elif action == 1:
                target[key] = draw(json_values)
    return envelope


def json_body(draw_value) -> bytes:
    return json.dumps(draw_value).encode()


# --- requests ------------------------------------------------------------------------------------------


def make_request(query: str, body: bytes, *, method: str = "POST", content_type: str = "application/x-www-form-urlencoded") -> WebhookRequest:
    """Built as calls/webhooks.py builds it (lower-cased header names, latin-1 query)."""
    return WebhookRequest(method=method, path="/voice/webhook", query_string=query,
                          headers={"content-type": content_type, "host": "gw.example.com"}, body=body,
                          remote_addr="10.0.0.7", scheme="http")


@st.composite
def form_requests(draw, carrier: str, values: dict, *, methods=("POST",)):
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        query, pairs = draw(mutated_fixture_pairs(carrier, values))
        body = urlencode(pairs).encode()
    elif kind <= 7:
        query, pairs = draw(SHAPED[carrier]())
        body = urlencode(pairs).encode()
    elif kind <= 8:
        query, body = draw(queries(carrier)), urlencode(draw(form_pairs(values))).encode()
    else:
        query, body = draw(queries(carrier)), draw(st.binary(max_size=80))
    method = draw(st.sampled_from(methods))
    if method == "GET":
        query, body = "&".join(filter(None, [query, body.decode("utf-8", "replace")])), b""
    return make_request(query, body, method=method)


@st.composite
def telnyx_requests(draw):
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        body = json_body(draw(mutated_telnyx_fixture()))
    elif kind <= 8:
        body = json_body(draw(telnyx_envelopes))
    else:
        body = draw(st.binary(max_size=80))
    return make_request(draw(queries("telnyx")) if draw(st.booleans()) else "", body, content_type="application/json")


REQUESTS = {
    "twilio": lambda methods=("POST",): form_requests("twilio", TWILIO_VALUES, methods=methods),
    "plivo": lambda methods=("POST",): form_requests("plivo", PLIVO_VALUES, methods=methods),
    "telnyx": lambda methods=("POST",): telnyx_requests(),
}


# --- properties of a parse -----------------------------------------------------------------------------


def assert_valid_event(event: NormalizedEvent) -> None:
    from calls.clock import from_ms

    assert isinstance(event, NormalizedEvent)
    assert event.type in EVENT_TYPES and EVENT_TYPES[event.type] is type(event)
    assert isinstance(event.call_id, str) and event.call_id.strip(), event
    for name in ("provider_call_id", "turn_token", "from_number", "to_number"):
        value = getattr(event, name)
        assert value is None or (isinstance(value, str) and value), (name, event)
    assert event.direction in (None, "inbound", "outbound")
    assert isinstance(event.dedupe_key, str) and event.dedupe_key
    assert isinstance(event.timestamp, int) and not isinstance(event.timestamp, bool)
    from_ms(event.timestamp)  # the service turns it into a datetime
    if isinstance(event, CallEnded):
        assert event.reason in END_REASONS
    if isinstance(event, CallSpeech):
        assert isinstance(event.transcript, str) and event.transcript.strip()
        assert isinstance(event.is_final, bool)
        assert event.confidence is None or (isinstance(event.confidence, float) and 0 <= event.confidence <= 1), event
    if isinstance(event, CallDtmf):
        assert isinstance(event.digits, str) and event.digits
    if isinstance(event, CallAmd):
        assert isinstance(event.answered_by, str) and event.answered_by
    if isinstance(event, CallSpeaking):
        assert isinstance(event.text, str)
    data = event.to_dict()
    json.dumps(data, allow_nan=False)  # stored as JSON
    assert data["type"] == event.type and data["callId"] == event.call_id


def assert_parse_outcome(carrier: str, request: WebhookRequest) -> ParsedWebhook | None:
    try:
        parsed = PARSERS[carrier](request, request_key=f"{carrier}:fuzz:key")
    except WebhookParseError as exc:
        assert str(exc).strip()
        return None
    assert isinstance(parsed, ParsedWebhook)
    for event in parsed.events:
        assert_valid_event(event)
    assert len({e.key for e in parsed.events}) == len(parsed.events)
    assert parsed.call_ref is None or (isinstance(parsed.call_ref, str) and parsed.call_ref)
    if parsed.events:
        assert parsed.call_ref is not None
    assert isinstance(parsed.facts, dict)
    return parsed


@pytest.mark.parametrize("carrier", ["twilio", "plivo"])
@PARSE_SETTINGS
@given(data=st.data())
def test_form_parsers_return_valid_events_or_a_parse_error(carrier, data):
    request = data.draw(REQUESTS[carrier](methods=("POST", "GET") if carrier == "plivo" else ("POST",)))
    assert_parse_outcome(carrier, request)


def test_twilio_answered_by_blank_once_trimmed_is_no_amd_event():
    """Found by the fuzzer: AnsweredBy holding only a carriage return once made an empty answer."""
    parsed = assert_parse_outcome("twilio", make_request(f"callId={OUT_ID}&type=amd", b"AnsweredBy=%0D"))
    assert parsed is not None and not any(isinstance(event, CallAmd) for event in parsed.events)


@PARSE_SETTINGS
@given(request=telnyx_requests())
def test_telnyx_parser_returns_valid_events_or_a_parse_error(request):
    assert_parse_outcome("telnyx", request)


@pytest.mark.parametrize("carrier", sorted(PARSERS))
@PARSE_SETTINGS
@given(query=st.text(max_size=60), body=st.binary(max_size=200))
def test_parsers_survive_arbitrary_bytes(carrier, query, body):
    assert_parse_outcome(carrier, make_request(query, body))


class _Covered(Exception):
    """Raised to stop generating once every outcome was seen."""


# The generators must reach the interesting outcomes, or the properties above prove little.
@pytest.mark.parametrize("carrier", sorted(PARSERS))
def test_generators_reach_events_and_parse_errors(carrier):
    expected = {"call.ended", "call.answered", "call.speech", "call.dtmf", "call.amd"}
    if carrier != "telnyx":
        expected.add("parse-error")  # Telnyx refuses only bodies that are not JSON text
    seen: set[str] = set()

    @settings(max_examples=3000, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(request=REQUESTS[carrier]())
    def collect(request):
        parsed = assert_parse_outcome(carrier, request)
        seen.update(["parse-error"] if parsed is None else [event.type for event in parsed.events])
        if expected <= seen:
            raise _Covered

    with pytest.raises(_Covered):
        collect()
    assert expected <= seen, seen


# --- through the handler, with the database ----------------------------------------------------------


def carrier_config(carrier: str, policy: str) -> dict:
    return {
        "provider": carrier,
        "fromNumber": "+15105550100",
        "publicUrl": PUBLIC_URL,
        "skipSignatureVerification": True,
        "inboundPolicy": policy,
        "inboundGreeting": 'Hello & welcome, "caller" <1>',
        "twilio": {"accountSid": "AC0123456789abcdef0123456789abcdef", "authToken": "twilio-token", "baseUrl": "http://127.0.0.1:9"},
        "plivo": {"authId": "MAXXXXXXXXXXXXXXXXXX", "authToken": "plivo-token", "baseUrl": "http://127.0.0.1:9"},
        # Carrier REST calls made by background jobs (answer, speak, hang up) fail fast on a closed port.
        "telnyx": {"apiKey": "KEY-test", "connectionId": "1684641123236054244", "baseUrl": "http://127.0.0.1:9"},
    }


def seed_calls(carrier: str) -> None:
    """Start each example from the same three calls (and nothing else)."""
    from calls.models import Call, CallTurn, CarrierDocument, ProcessedWebhook
    from calls.clock import now

    ProcessedWebhook.objects.all().delete()
    CarrierDocument.objects.all().delete()
    Call.objects.all().delete()
    out_pid, listen_pid, in_pid = PROVIDER_IDS[carrier]
    started = now() - timedelta(seconds=30)
    Call.objects.create(id=OUT_ID, provider=carrier, provider_call_id=out_pid, direction="outbound", state="initiated",
                        from_number="+15105550100", to_number="+14155550123", started_at=started,
                        mode="conversation")
    listening = Call.objects.create(
        id=LISTEN_ID, provider=carrier, provider_call_id=listen_pid, direction="outbound", state="listening",
        from_number="+15105550100", to_number="+14155550124", started_at=started, answered_at=started,
        max_duration_deadline=started + timedelta(minutes=5), mode="conversation",
    )
    CallTurn.objects.create(call=listening, token=TURN, prompt="When suits you?", started_at=started)
    Call.objects.create(id=IN_ID, provider=carrier, provider_call_id=in_pid, direction="inbound", state="ringing",
                        from_number="+14155550123", to_number="+15105550100", started_at=started,
                        mode="conversation", initial_message="Hello there.")
    CarrierDocument.objects.create(token="kq3B0x4vTzvC5bL9h2mS1w", call_id=OUT_ID,
                                   body="<Response><Speak>stored</Speak></Response>")


def row_counts() -> dict[str, int]:
    from calls.models import Call, CallEvent, CallTurn, ProcessedWebhook, TranscriptEntry

    return {model.__name__: model.objects.count() for model in (Call, CallEvent, TranscriptEntry, CallTurn, ProcessedWebhook)}


def assert_database_invariants() -> None:
    from calls.models import Call, CallEvent, CallTurn, TranscriptEntry, TurnStatus

    terminal = [s.value for s in TERMINAL_STATES]
    for call in Call.objects.all():
        CallState(call.state)  # a valid state
        if call.state in terminal:
            assert call.ended_at is not None, call
            assert call.end_reason in END_REASONS and call.end_reason == call.state, call
            assert call.max_duration_deadline is None and call.notify_hangup_at is None, call
        else:
            assert call.ended_at is None and call.end_reason == "", call
        assert call.direction in ("inbound", "outbound")
    calls = Call.objects.all()
    assert not CallEvent.objects.exclude(call__in=calls).exists()
    assert not TranscriptEntry.objects.exclude(call__in=calls).exists()
    assert not CallTurn.objects.filter(status=TurnStatus.PENDING, call__state__in=terminal).exists()
    for event in CallEvent.objects.all():
        assert event.type in EVENT_TYPES
        assert event.payload.get("type") == event.type
        if event.type == "call.ended":
            assert event.payload.get("reason") in END_REASONS


def assert_answer_is_well_formed(answer) -> None:
    assert answer.status in (200, 400), answer
    assert isinstance(answer.body, str)
    if answer.status == 200 and "xml" in answer.content_type:
        root = ET.fromstring(answer.body)
        assert root.tag == "Response"


def run_requests(requests: list[WebhookRequest]) -> None:
    from calls.services import webhook_process

    for request in requests:
        before = row_counts()
        answer = webhook_process(request=request)  # an exception here is a 500 at the endpoint
        assert_answer_is_well_formed(answer)
        if answer.status == 400:
            assert row_counts() == before, answer.body
        assert_database_invariants()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("policy", ["open", "disabled"])
@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo"])
@HANDLER_SETTINGS
@given(data=st.data())
def test_handler_answers_200_or_400_and_keeps_the_database_consistent(configure, carrier, policy, data):
    loaded = configure(carrier_config(carrier, policy), env=UNSAFE_SKIP)
    assert not loaded.errors, loaded.errors
    requests = data.draw(st.lists(REQUESTS[carrier](), min_size=1, max_size=4))
    seed_calls(carrier)
    run_requests(requests)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo"])
def test_every_fixture_through_the_handler_keeps_the_database_consistent(configure, carrier):
    """Deterministic companion of the property: each golden fixture, then each again (a replay)."""
    configure(carrier_config(carrier, "open"), env=UNSAFE_SKIP)
    for case in FIXTURE_CASES[carrier]:
        seed_calls(carrier)
        spec = case["request"]
        body = json.dumps(spec["body"]).encode() if carrier == "telnyx" else urlencode([tuple(p) for p in spec["body"]]).encode()
        request = make_request(spec["query"], body, content_type=spec["content_type"])
        run_requests([request, request])


@pytest.mark.django_db(transaction=True)
def test_a_400_changes_nothing(configure):
    """The property's 400 branch is reached: a Twilio request without any call id."""
    from calls.services import webhook_process

    configure(carrier_config("twilio", "open"), env=UNSAFE_SKIP)
    seed_calls("twilio")
    before = row_counts()
    answer = webhook_process(request=make_request("type=status", b"CallStatus=completed&Direction=inbound"))
    assert (answer.status, answer.body) == (400, "CallSid: required")
    assert row_counts() == before


def _fixture_request(carrier: str, name: str, *, query: str | None = None) -> WebhookRequest:
    spec = json.loads((FIXTURES / carrier / f"{name}.json").read_text())["request"]
    body = json.dumps(spec["body"]).encode() if carrier == "telnyx" else urlencode([tuple(p) for p in spec["body"]]).encode()
    return make_request(spec["query"] if query is None else query, body, content_type=spec["content_type"])


@pytest.mark.django_db(transaction=True)
def test_plivo_answer_rekeys_the_call_from_request_uuid_to_call_uuid(configure):
    """docs/compatibility.md, Event processing step 5: the dial returned the request UUID; the answer names the CallUUID."""
    from calls.models import Call
    from calls.services import webhook_process

    configure(carrier_config("plivo", "disabled"), env=UNSAFE_SKIP)
    Call.objects.create(id=OUT_ID, provider="plivo", provider_call_id="9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
                        direction="outbound", state="initiated", from_number="+15105550100", to_number="+14155550123",
                        mode="conversation")
    assert webhook_process(request=_fixture_request("plivo", "answer_outbound")).status == 200
    call = Call.objects.get()
    assert (call.provider_call_id, call.state) == ("3a2e4c5d-7b8f-4e1a-9c0d-2b3f4e5a6b7c", "answered")
    assert call.answered_at is not None and call.max_duration_deadline is not None
    # the hangup callback, named by the CallUUID only, finds the re-keyed call
    assert webhook_process(request=_fixture_request("plivo", "hangup_busy", query="provider=plivo&flow=hangup")).status == 200
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("busy", "busy")
    assert_database_invariants()


@pytest.mark.django_db(transaction=True)
def test_twilio_stale_turn_token_does_not_complete_the_waiting_turn(configure):
    from calls.models import CallTurn, TranscriptEntry
    from calls.services import webhook_process

    configure(carrier_config("twilio", "disabled"), env=UNSAFE_SKIP)
    seed_calls("twilio")
    stale = _fixture_request("twilio", "gather_speech", query=f"callId={LISTEN_ID}&turnToken=stale-token")
    assert webhook_process(request=stale).status == 200
    assert CallTurn.objects.get(call_id=LISTEN_ID).status == "pending"
    assert not TranscriptEntry.objects.exists()
    fresh = _fixture_request("twilio", "gather_speech", query=f"callId={LISTEN_ID}&turnToken={TURN}")
    assert webhook_process(request=fresh).status == 200
    turn = CallTurn.objects.get(call_id=LISTEN_ID)
    assert (turn.status, turn.transcript) == ("completed", "I'd like to move my appointment to Thursday.")
    assert_database_invariants()


# --- edge cases fuzzing found, pinned ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_telnyx_deeply_nested_json_is_answered_400(configure):
    from calls.services import webhook_process

    configure(carrier_config("telnyx", "open"), env=UNSAFE_SKIP)
    answer = webhook_process(request=make_request("", b'{"data": ' + b"[" * 30_000, content_type="application/json"))
    assert answer.status == 400


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59Z"])
def test_telnyx_occurred_at_outside_the_datetime_range_is_not_a_500(configure, occurred_at):
    from calls.services import webhook_process

    configure(carrier_config("telnyx", "open"), env=UNSAFE_SKIP)
    seed_calls("telnyx")
    envelope = {"data": {"event_type": "call.answered", "id": str(uuid.uuid4()), "occurred_at": occurred_at,
                         "payload": {"call_control_id": PROVIDER_IDS["telnyx"][0]}, "record_type": "event"}}
    answer = webhook_process(request=make_request("", json.dumps(envelope).encode(), content_type="application/json"))
    assert answer.status in (200, 400)
    assert_database_invariants()


@pytest.mark.django_db(transaction=True)
def test_twilio_inbound_call_greeted_by_the_answer_is_answered(configure):
    from calls.models import Call
    from calls.services import webhook_process

    configure(carrier_config("twilio", "open"), env=UNSAFE_SKIP)
    answer = webhook_process(request=_fixture_request("twilio", "inbound_voice_request_without_status"))
    assert answer.status == 200 and "<Gather" in answer.body  # the answer itself greets the caller
    call = Call.objects.get()
    assert call.state == "listening"
    assert call.answered_at is not None and call.max_duration_deadline is not None


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("carrier, body", [
    ("twilio", b"CallSid=%00&CallStatus=ringing&Direction=inbound"),
    ("twilio", b"CallSid=CA1&CallStatus=in-progress&SpeechResult=hi%00there"),
    ("plivo", b"CallUUID=abc&Speech=hi%00&Direction=inbound"),
    ("telnyx", b'{"data": {"event_type": "call.transcription", "id": "e1", "payload": {"call_control_id": "v3:x",'
               b' "transcription_data": {"transcript": "hi\\u0000"}}}}'),
])
def test_nul_characters_are_refused_with_400_and_store_nothing(configure, carrier, body):
    """PostgreSQL cannot store NUL in text or JSON: such a request is malformed, not a 500."""
    from calls.models import Call, CallEvent
    from calls.services import webhook_process

    configure(carrier_config(carrier, "open"), env=UNSAFE_SKIP)
    content_type = "application/json" if carrier == "telnyx" else "application/x-www-form-urlencoded"
    answer = webhook_process(request=make_request("", body, content_type=content_type))
    assert answer.status == 400 and "NUL" in answer.body
    assert not Call.objects.exists() and not CallEvent.objects.exists()
