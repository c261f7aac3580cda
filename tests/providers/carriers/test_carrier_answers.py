"""What each carrier answers a webhook with (TwiML, Plivo XML, plain 200), read back with an XML parser.

The parsed requests come from the golden fixtures (tests/fixtures/<carrier>/), the calls are
hand-built CallViews, and the backends are built from a config whose publicUrl is
https://gw.example.com/voice/webhook, so every URL in an answer is predictable.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from core.config import load_config_data
from providers.carriers.base import CallView, ParsedWebhook, WebhookRequest
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.twilio import TwilioCarrier

from tests.paths import FIXTURES
PUBLIC_URL = "https://gw.example.com/voice/webhook"
CALL_ID = "7f3e2a1c-5b9d-4e8f-a2c4-6d1b3e5f7a90"
# The Ed25519 public key of private key bytes(range(32)) (raw, base64): the Telnyx config is complete.
TELNYX_PUBLIC_KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
NASTY = 'Tom & Jerry say "hi" <b>loudly</b> & it\'s > 3 o\'clock'


def config_data(provider: str, **extra) -> dict:
    return {
        "provider": provider,
        "fromNumber": "+15105550100",
        "publicUrl": PUBLIC_URL,
        "twilio": {"accountSid": "AC0123456789abcdef0123456789abcdef", "authToken": "twilio-token", "baseUrl": "http://127.0.0.1:9"},
        "plivo": {"authId": "MAXXXXXXXXXXXXXXXXXX", "authToken": "plivo-token", "baseUrl": "http://127.0.0.1:9"},
        "telnyx": {"apiKey": "KEY-test", "connectionId": "1684641123236054244",
                   "publicKey": TELNYX_PUBLIC_KEY, "baseUrl": "http://127.0.0.1:9"},
        **extra,
    }


def config(provider: str, **extra):
    loaded = load_config_data(config_data(provider, **extra), environ={})
    assert not loaded.errors, loaded.errors
    return loaded.config


@pytest.fixture
def twilio():
    backend = TwilioCarrier(config("twilio"))
    yield backend
    backend.close()


@pytest.fixture
def streaming_twilio():
    backend = TwilioCarrier(config("twilio", streaming={"enabled": True, "provider": "openai"}))
    yield backend
    backend.close()


@pytest.fixture
def plivo():
    backend = PlivoCarrier(config("plivo", outbound={"notifyHangupDelaySec": 5}))
    yield backend
    backend.close()


def parsed_fixture(backend, name: str) -> ParsedWebhook:
    case = json.loads((FIXTURES / backend.name / f"{name}.json").read_text())
    spec = case["request"]
    body = json.dumps(spec["body"]).encode() if backend.name == "telnyx" else urlencode([tuple(p) for p in spec["body"]]).encode()
    request = WebhookRequest(method=spec["method"], path="/voice/webhook", query_string=spec["query"],
                             headers={"content-type": spec["content_type"]}, body=body)
    return backend.parse_webhook(request, request_key="answer-test")


def view(**fields) -> CallView:
    defaults = dict(call_id=CALL_ID, provider_call_id="CAf1e2d3c4b5a69788796a5b4c3d2e1f00", direction="outbound",
                    state="answered", mode="conversation", ended=False)
    return CallView(**{**defaults, **fields})


def xml(answer) -> ET.Element:
    root = ET.fromstring(answer.body)
    assert root.tag == "Response"
    return root


def tags(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def query_of(url: str) -> dict[str, list[str]]:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == PUBLIC_URL
    return parse_qs(parts.query)


# --- Twilio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["status_completed", "status_in_progress", "status_ringing", "amd_machine", "amd_human",
                                  "stream_started_callback", "status_queued"])
def test_twilio_status_and_amd_callbacks_get_an_empty_response(twilio, name):
    answer = twilio.answer_webhook(parsed_fixture(twilio, name), call=view(initial_message="Hello", state="listening"))
    root = xml(answer)
    assert list(root) == [] and not (root.text or "").strip()
    assert answer.status_code == 200 and answer.content_type == "application/xml"
    assert not answer.greeting_delivered and not answer.rejects_call


@pytest.mark.parametrize("name", ["inbound_voice_request", "outbound_url_fetch", "gather_speech"])
def test_twilio_without_a_call_answers_empty(twilio, name):
    root = xml(twilio.answer_webhook(parsed_fixture(twilio, name), call=None))
    assert list(root) == []


def test_twilio_rejected_inbound_call_is_refused_in_the_answer(twilio):
    answer = twilio.answer_webhook(
        parsed_fixture(twilio, "inbound_voice_request"),
        call=view(direction="inbound", state="hangup-bot", ended=True, rejected=True, initial_message="Hi"),
    )
    root = xml(answer)
    assert tags(root) == ["Reject"]
    assert root[0].attrib == {"reason": "rejected"}
    assert answer.rejects_call is True and answer.greeting_delivered is False


@pytest.mark.parametrize("name", ["outbound_url_fetch", "gather_speech", "keepalive_fetch", "relisten_fetch"])
def test_twilio_ended_call_is_hung_up(twilio, name):
    answer = twilio.answer_webhook(parsed_fixture(twilio, name), call=view(state="completed", ended=True, initial_message="Hi"))
    root = xml(answer)
    assert tags(root) == ["Hangup"] and root[0].attrib == {}
    assert not answer.rejects_call and not answer.greeting_delivered


def _assert_greeting_gather(answer, text: str, voice: str, turn_token: str | None):
    root = xml(answer)
    assert tags(root) == ["Gather", "Redirect"]
    gather, redirect = root
    assert gather.get("input") == "speech dtmf"
    assert gather.get("method") == "POST"
    action = query_of(gather.get("action"))
    assert action["callId"] == [CALL_ID]
    assert action.get("turnToken") == ([turn_token] if turn_token else None)
    assert tags(gather) == ["Say"]
    assert gather[0].get("voice") == voice
    assert gather[0].text == text
    assert redirect.get("method") == "POST"
    assert query_of(redirect.text) == {"callId": [CALL_ID], "flow": ["relisten"]}
    assert answer.greeting_delivered is True and answer.rejects_call is False


@pytest.mark.parametrize(
    "voice,polly",
    [("alloy", "Polly.Joanna"), ("echo", "Polly.Matthew"), ("fable", "Polly.Amy"), ("onyx", "Polly.Brian"),
     ("nova", "Polly.Salli"), ("shimmer", "Polly.Kimberly"), ("ALLOY", "Polly.Joanna"), ("Polly.Ivy", "Polly.Ivy"),
     ("Google.en-US-Neural2-F", "Google.en-US-Neural2-F"), (None, "Polly.Joanna"), ("marin", "Polly.Joanna")],
)
def test_twilio_answering_conversation_greets_inside_a_gather(twilio, voice, polly):
    answer = twilio.answer_webhook(
        parsed_fixture(twilio, "outbound_url_fetch"),
        call=view(initial_message="Hello, this is the clinic.", voice=voice, pending_turn_token="turn-42"),
    )
    _assert_greeting_gather(answer, "Hello, this is the clinic.", polly, "turn-42")


def test_twilio_inbound_voice_request_greets_without_a_turn_token(twilio):
    answer = twilio.answer_webhook(
        parsed_fixture(twilio, "inbound_voice_request"),
        call=view(direction="inbound", state="answered", initial_message="Thanks for calling.", pending_turn_token=None),
    )
    _assert_greeting_gather(answer, "Thanks for calling.", "Polly.Joanna", None)


def test_twilio_empty_pending_token_is_left_out_of_the_action(twilio):
    answer = twilio.answer_webhook(parsed_fixture(twilio, "outbound_url_fetch"), call=view(initial_message="Hi", pending_turn_token=""))
    _assert_greeting_gather(answer, "Hi", "Polly.Joanna", None)


def test_twilio_xml_special_characters_round_trip(twilio):
    answer = twilio.answer_webhook(parsed_fixture(twilio, "outbound_url_fetch"),
                                   call=view(initial_message=NASTY, pending_turn_token='a&b"<c>'))
    _assert_greeting_gather(answer, NASTY, "Polly.Joanna", 'a&b"<c>')


def test_twilio_gather_result_is_not_the_answering_request(twilio):
    answer = twilio.answer_webhook(parsed_fixture(twilio, "gather_speech"), call=view(initial_message="Hi"))
    assert answer.greeting_delivered is False
    assert tags(xml(answer)) == ["Pause", "Redirect"]


def test_twilio_notify_message_not_sent_with_the_dial_is_said_in_the_answer(twilio):
    """With answering-machine detection a notify call's message stays off the dial: the answer says it, then hangs up."""
    answer = twilio.answer_webhook(parsed_fixture(twilio, "outbound_url_fetch"), call=view(mode="notify", initial_message="Hi"))
    assert answer.greeting_delivered is True
    assert tags(xml(answer))[0] == "Say" and tags(xml(answer))[-1] == "Hangup"


def test_twilio_held_call_only_keeps_the_line(twilio):
    """Detection still listens: no greeting, no stream, no listening in the answer."""
    answer = twilio.answer_webhook(parsed_fixture(twilio, "outbound_url_fetch"),
                                   call=view(mode="conversation", initial_message="Hi", held=True))
    assert answer.greeting_delivered is False
    assert tags(xml(answer)) == ["Pause", "Redirect"]


@pytest.mark.parametrize("name", ["gather_speech", "relisten_fetch", "keepalive_fetch", "outbound_url_fetch"])
def test_twilio_listening_call_gets_the_listen_document(twilio, name):
    answer = twilio.answer_webhook(parsed_fixture(twilio, name), call=view(state="listening", pending_turn_token="turn-7"))
    root = xml(answer)
    assert tags(root) == ["Gather", "Redirect"]
    gather, redirect = root
    assert list(gather) == []  # nothing said before listening
    assert gather.get("input") == "speech dtmf"
    assert query_of(gather.get("action")) == {"callId": [CALL_ID], "turnToken": ["turn-7"]}
    assert query_of(redirect.text) == {"callId": [CALL_ID], "flow": ["relisten"]}
    assert answer.greeting_delivered is False


@pytest.mark.parametrize("state", ["answered", "active", "speaking", "ringing"])
def test_twilio_otherwise_keeps_the_line_alive(twilio, state):
    answer = twilio.answer_webhook(parsed_fixture(twilio, "keepalive_fetch"), call=view(state=state))
    root = xml(answer)
    assert tags(root) == ["Pause", "Redirect"]
    assert root[0].attrib == {"length": "30"}
    assert root[1].get("method") == "POST"
    assert query_of(root[1].text) == {"callId": [CALL_ID], "flow": ["keepalive"]}


@pytest.mark.parametrize("name,direction", [("outbound_url_fetch", "outbound"), ("inbound_voice_request", "inbound")])
def test_twilio_streaming_connects_a_media_stream_with_its_token(streaming_twilio, name, direction):
    answer = streaming_twilio.answer_webhook(
        parsed_fixture(streaming_twilio, name),
        call=view(direction=direction, stream_token="tok/+=&<x>", initial_message="Hi"),
    )
    root = xml(answer)
    assert tags(root) == ["Connect"]
    assert tags(root[0]) == ["Stream"]
    stream = root[0][0]
    assert stream.get("url") == "wss://gw.example.com/voice/stream"
    assert "?" not in stream.get("url")  # Twilio drops query strings from stream URLs
    assert [(p.tag, p.attrib) for p in stream] == [("Parameter", {"name": "token", "value": "tok/+=&<x>"})]
    assert answer.greeting_delivered is False


def test_twilio_inbound_call_while_a_stream_is_active_is_put_on_hold(streaming_twilio):
    answer = streaming_twilio.answer_webhook(
        parsed_fixture(streaming_twilio, "inbound_voice_request"),
        call=view(direction="inbound", stream_token="tok", media_streams_active=1),
    )
    root = xml(answer)
    assert tags(root) == ["Say", "Enqueue"]
    assert root[0].attrib == {"voice": "alice"}
    assert root[0].text.startswith("Please hold")
    assert root[1].get("waitUrl") == "https://gw.example.com/voice/hold-music"
    assert root[1].text == "hold-queue"


def test_twilio_outbound_call_is_not_held_while_streams_are_active(streaming_twilio):
    answer = streaming_twilio.answer_webhook(
        parsed_fixture(streaming_twilio, "outbound_url_fetch"),
        call=view(direction="outbound", stream_token="tok", media_streams_active=3),
    )
    assert tags(xml(answer)) == ["Connect"]


@pytest.mark.parametrize("name", ["gather_speech", "keepalive_fetch"])
def test_twilio_streaming_is_only_answered_to_voice_requests(streaming_twilio, name):
    # Keep-alive and gather requests come from TwiML the gateway pushed to speak or listen without a
    # stream: they never start one. Only the answer and the resume after digits do (see below).
    answer = streaming_twilio.answer_webhook(parsed_fixture(streaming_twilio, name), call=view(stream_token="tok"))
    assert tags(xml(answer)) == ["Pause", "Redirect"]


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_twilio_resume_after_dtmf_connects_the_stream_again(streaming_twilio, direction):
    # Digits sent on a streamed call ended its stream; the redirect after them gets it back, and an
    # inbound call is not put on hold for streams of other calls: it had its place already.
    answer = streaming_twilio.answer_webhook(
        parsed_fixture(streaming_twilio, "resume_fetch"),
        call=view(direction=direction, state="listening", stream_token="tok", media_streams_active=99),
    )
    root = xml(answer)
    assert tags(root) == ["Connect"]
    stream = root[0][0]
    assert stream.get("url") == "wss://gw.example.com/voice/stream"
    assert [(p.tag, p.attrib) for p in stream] == [("Parameter", {"name": "token", "value": "tok"})]
    assert answer.greeting_delivered is False


@pytest.mark.parametrize("call", [view(state="active"), view(state="listening", pending_turn_token="turn-2")],
                         ids=["active", "listening"])
def test_twilio_resume_without_streaming_is_the_keepalive_answer(twilio, call):
    resumed = twilio.answer_webhook(parsed_fixture(twilio, "resume_fetch"), call=call)
    kept = twilio.answer_webhook(parsed_fixture(twilio, "keepalive_fetch"), call=call)
    assert resumed.body == kept.body


def test_twilio_resume_of_an_ended_call_hangs_up(streaming_twilio):
    answer = streaming_twilio.answer_webhook(parsed_fixture(streaming_twilio, "resume_fetch"),
                                             call=view(state="completed", ended=True, stream_token="tok"))
    assert tags(xml(answer)) == ["Hangup"]


def test_twilio_streaming_needs_a_public_url():
    backend = TwilioCarrier(config("twilio", publicUrl=None, streaming={"enabled": True, "provider": "openai"}))
    try:
        assert backend.stream_url() is None
        answer = backend.answer_webhook(parsed_fixture(backend, "outbound_url_fetch"), call=view(stream_token="tok"))
        assert tags(xml(answer)) == ["Pause", "Redirect"]
    finally:
        backend.close()


def test_twilio_stream_url_follows_the_public_url_scheme_and_stream_path():
    backend = TwilioCarrier(config("twilio", publicUrl="http://gw.example.com:8080/hooks/voice",
                                   streaming={"enabled": True, "provider": "openai", "streamPath": "media"}))
    try:
        assert backend.stream_url() == "ws://gw.example.com:8080/media"
    finally:
        backend.close()


# --- Plivo -------------------------------------------------------------------------------------


def test_plivo_hangup_callback_gets_an_empty_response(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "hangup_completed"), call=view(state="completed", ended=True))
    assert list(xml(answer)) == []
    assert answer.content_type == "text/xml"


def test_plivo_without_a_call_answers_empty(plivo):
    assert list(xml(plivo.answer_webhook(parsed_fixture(plivo, "answer_inbound"), call=None))) == []


def test_plivo_rejected_inbound_call_is_hung_up_in_the_answer(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "answer_inbound"),
                                  call=view(direction="inbound", state="hangup-bot", ended=True, rejected=True))
    root = xml(answer)
    assert tags(root) == ["Hangup"] and root[0].attrib == {"reason": "rejected"}
    assert answer.rejects_call is True


def test_plivo_ended_call_is_hung_up(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "getinput_speech"), call=view(state="busy", ended=True))
    root = xml(answer)
    assert tags(root) == ["Hangup"] and root[0].attrib == {}
    assert not answer.rejects_call


def test_plivo_notify_answer_speaks_waits_and_hangs_up(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "answer_outbound"),
                                  call=view(mode="notify", initial_message=NASTY, voice="Polly.Joanna"))
    root = xml(answer)
    assert tags(root) == ["Speak", "Wait", "Hangup"]
    assert root[0].text == NASTY
    assert root[0].get("voice") == "Polly.Joanna"
    assert root[1].attrib == {"length": "5"}
    assert answer.greeting_delivered is True


def test_plivo_notify_without_a_hangup_delay_hangs_up_at_once():
    backend = PlivoCarrier(config("plivo", outbound={"notifyHangupDelaySec": 0}))
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "answer_outbound"), call=view(mode="notify", initial_message="Bye"))
        assert tags(xml(answer)) == ["Speak", "Hangup"]
    finally:
        backend.close()


@pytest.mark.parametrize("name", ["answer_outbound", "answer_inbound"])
def test_plivo_answering_conversation_greets_inside_getinput(plivo, name):
    answer = plivo.answer_webhook(parsed_fixture(plivo, name), call=view(initial_message=NASTY, voice="alloy", pending_turn_token="turn-9"))
    root = xml(answer)
    assert tags(root) == ["GetInput", "Redirect"]
    get_input, redirect = root
    assert set(get_input.get("inputType").split()) == {"speech", "dtmf"}
    assert get_input.get("method") == "POST"
    assert query_of(get_input.get("action")) == {"provider": ["plivo"], "flow": ["getinput"], "callId": [CALL_ID], "turnToken": ["turn-9"]}
    assert tags(get_input) == ["Speak"]
    assert get_input[0].text == NASTY
    assert get_input[0].get("voice") is None  # an OpenAI voice name is not a Plivo voice
    assert query_of(redirect.text) == {"provider": ["plivo"], "flow": ["relisten"], "callId": [CALL_ID]}
    assert answer.greeting_delivered is True


def test_plivo_stored_document_is_served_verbatim(plivo):
    document = '<?xml version="1.0" encoding="UTF-8"?><Response><Speak language="en-GB">Stored &amp; served</Speak><Wait length="300"/></Response>'
    parsed = parsed_fixture(plivo, "xml_speak_fetch")
    assert parsed.document_token == "kq3B0x4vTzvC5bL9h2mS1w"
    answer = plivo.answer_webhook(parsed, call=view(state="speaking", document=document, initial_message="Hi"))
    assert answer.body == document
    assert answer.content_type == "text/xml"
    assert answer.greeting_delivered is False


def test_plivo_stored_document_flow_without_the_document_keeps_the_line(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "xml_speak_fetch"), call=view(state="speaking", document=None))
    assert tags(xml(answer)) == ["Wait", "Redirect"]


def test_plivo_listening_call_gets_getinput_without_a_prompt(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "keepalive_fetch"), call=view(state="listening", pending_turn_token=None))
    root = xml(answer)
    assert tags(root) == ["GetInput", "Redirect"]
    assert list(root[0]) == []
    assert query_of(root[0].get("action")) == {"provider": ["plivo"], "flow": ["getinput"], "callId": [CALL_ID]}


@pytest.mark.parametrize("name", ["keepalive_fetch", "getinput_dtmf", "ring_url"])
def test_plivo_otherwise_keeps_the_line_alive(plivo, name):
    answer = plivo.answer_webhook(parsed_fixture(plivo, name), call=view(state="active"))
    root = xml(answer)
    assert tags(root) == ["Wait", "Redirect"]
    assert root[0].attrib == {"length": "300"}
    assert query_of(root[1].text) == {"provider": ["plivo"], "flow": ["keepalive"], "callId": [CALL_ID]}
    assert answer.greeting_delivered is False


# --- Telnyx --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["call_initiated_incoming", "call_answered", "call_hangup_normal_clearing", "unknown_event_type"])
@pytest.mark.parametrize("call", [None, view(), view(state="completed", ended=True), view(rejected=True, ended=True, state="hangup-bot"),
                                  view(initial_message="Hi", mode="notify")])
def test_telnyx_answers_plain_200(name, call):
    backend = TelnyxCarrier(config("telnyx"))
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, name), call=call)
    finally:
        backend.close()
    assert (answer.status_code, answer.body) == (200, "OK")
    assert answer.content_type.startswith("text/plain")
    assert not answer.greeting_delivered and not answer.rejects_call


# --- the hold music, through the real ASGI application ---------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_hold_music_is_served_to_any_method(asgi, method):
    response = await asgi.request(method, "/voice/hold-music")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    assert tags(root) == ["Say", "Play"]
    assert root[0].attrib == {"voice": "alice"}
    assert root[0].text == "All agents are currently busy. Please hold."
    assert root[1].get("loop") == "0"
    assert root[1].text.startswith("https://") and root[1].text.endswith("/BusyStrings.mp3")


async def test_hold_music_path_ignores_a_trailing_slash(asgi):
    response = await asgi.get("/voice/hold-music/")
    assert response.status_code == 200 and "<Play" in response.text


def test_hold_answer_points_at_the_hold_music_path_the_gateway_serves(streaming_twilio):
    from calls.webhooks import HOLD_MUSIC_PATH

    assert urlsplit(streaming_twilio.hold_music_url()).path == HOLD_MUSIC_PATH


# --- through the webhook handler: the answer and what it records --------------------------------


def _fixture_request(carrier: str, name: str, *, sign_with: str | None = None) -> WebhookRequest:
    case = json.loads((FIXTURES / carrier / f"{name}.json").read_text())
    spec = case["request"]
    pairs = [tuple(p) for p in spec["body"]]
    headers = {"content-type": spec["content_type"]}
    if sign_with:
        from twilio.request_validator import RequestValidator  # the SDK as an independent signer

        url = PUBLIC_URL + (f"?{spec['query']}" if spec["query"] else "")
        headers["x-twilio-signature"] = RequestValidator(sign_with).compute_signature(url, dict(pairs))
    return WebhookRequest(method="POST", path="/voice/webhook", query_string=spec["query"], headers=headers,
                          body=urlencode(pairs).encode(), remote_addr="203.0.113.9", scheme="https")


@pytest.fixture
def carrier_requests(monkeypatch):
    """Carrier REST calls the handler's background jobs make, recorded instead of sent."""
    sent: list[tuple[str, str]] = []
    for cls in (TwilioCarrier, PlivoCarrier):
        for method in ("hangup_call", "play_tts", "start_listening", "send_dtmf"):
            monkeypatch.setattr(cls, method, lambda self, *a, _m=method, **kw: sent.append((self.name, _m)))
    return sent


@pytest.mark.django_db(transaction=True)
def test_twilio_inbound_call_refused_by_policy_is_rejected_by_the_answer_alone(configure, carrier_requests):
    from calls.models import Call
    from calls.services import webhook_process

    configure(config_data("twilio", inboundPolicy="disabled"))
    answer = webhook_process(request=_fixture_request("twilio", "inbound_voice_request", sign_with="twilio-token"))
    assert answer.status == 200
    root = ET.fromstring(answer.body)
    assert tags(root) == ["Reject"] and root[0].get("reason") == "rejected"
    call = Call.objects.get()
    assert (call.state, call.end_reason, call.rejection_reason) == ("hangup-bot", "hangup-bot", "inbound-disabled")
    assert carrier_requests == []  # <Reject> refuses the call: no separate hang-up request


@pytest.mark.django_db(transaction=True)
def test_twilio_inbound_greeting_is_spoken_by_the_answer_and_recorded(configure, carrier_requests):
    from calls.models import Call, TranscriptEntry
    from calls.services import webhook_process

    configure(config_data("twilio", inboundPolicy="open", inboundGreeting=NASTY))
    answer = webhook_process(request=_fixture_request("twilio", "inbound_voice_request", sign_with="twilio-token"))
    assert answer.status == 200 and answer.content_type == "application/xml"
    root = ET.fromstring(answer.body)
    assert tags(root) == ["Gather", "Redirect"]
    assert root[0][0].tag == "Say" and root[0][0].text == NASTY
    call = Call.objects.get()
    assert query_of(root[0].get("action"))["callId"] == [str(call.pk)]
    assert call.state == "listening" and not call.initial_message
    assert list(TranscriptEntry.objects.values_list("speaker", "text")) == [("bot", NASTY)]
    assert carrier_requests == []  # spoken by the answer, not by a REST request


@pytest.mark.django_db(transaction=True)
def test_plivo_inbound_greeting_is_spoken_by_the_answer_and_recorded(configure, carrier_requests):
    from calls.models import Call, TranscriptEntry
    from calls.services import webhook_process

    configure(config_data("plivo", inboundPolicy="open", inboundGreeting="Welcome to Plivo.", skipSignatureVerification=True),
              env={"VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION": "1"})
    answer = webhook_process(request=_fixture_request("plivo", "answer_inbound"))
    assert answer.status == 200 and answer.content_type == "text/xml"
    root = ET.fromstring(answer.body)
    assert tags(root) == ["GetInput", "Redirect"]
    assert root[0][0].tag == "Speak" and root[0][0].text == "Welcome to Plivo."
    call = Call.objects.get()
    assert (call.direction, call.provider_call_id, call.state) == ("inbound", "3a2e4c5d-7b8f-4e1a-9c0d-2b3f4e5a6b7c", "listening")
    assert list(TranscriptEntry.objects.values_list("speaker", "text")) == [("bot", "Welcome to Plivo.")]
    assert carrier_requests == []


@pytest.mark.parametrize("name", ["machine_detection_human", "machine_detection_machine"])
def test_plivo_machine_detection_callback_gets_an_empty_answer(plivo, name):
    """Plivo runs nothing from the detection callback's answer: the verdict's effect comes by REST."""
    answer = plivo.answer_webhook(parsed_fixture(plivo, name), call=view(state="active"))
    assert tags(xml(answer)) == []


def test_plivo_held_call_only_keeps_the_line(plivo):
    answer = plivo.answer_webhook(parsed_fixture(plivo, "answer_outbound"),
                                  call=view(mode="conversation", initial_message="Hi", held=True))
    assert tags(xml(answer)) == ["Wait", "Redirect"]
    assert answer.greeting_delivered is False
# --- transfers ---------------------------------------------------------------------------------


def test_twilio_transfer_news_is_answered_empty_or_with_the_failure_said(twilio):
    assert tags(xml(twilio.answer_webhook(parsed_fixture(twilio, "transfer_number_answered"), call=view(ended=True)))) == []
    failed = xml(twilio.answer_webhook(parsed_fixture(twilio, "transfer_dial_busy"), call=view(ended=True)))
    assert tags(failed) == ["Say", "Hangup"]
    assert failed[0].text == "Sorry, the call could not be transferred. Goodbye."


def test_twilio_dial_twiml_escapes_the_target_and_names_sip():
    from providers.carriers.twilio import twiml

    root = ET.fromstring(twiml.dial("sip:a&b@pbx.example.com;transport=tls", action="https://x/?a=1&b=2", status_callback="https://x/cb"))
    (dial,) = root
    assert dial.tag == "Dial" and dial.get("action") == "https://x/?a=1&b=2" and dial.get("timeout") == "30"
    (sip,) = dial
    assert (sip.tag, sip.text, sip.get("statusCallbackEvent")) == ("Sip", "sip:a&b@pbx.example.com;transport=tls", "answered")
    (number,) = ET.fromstring(twiml.dial("+15550002222", action="https://x/", status_callback="https://x/"))[0]
    assert (number.tag, number.text) == ("Number", "+15550002222")
    waiting = ET.fromstring(twiml.conference_wait("voicecall-transfer-1", wait_url="https://x/voice/hold-music"))
    assert [child.tag for child in waiting] == ["Say", "Dial"]
    room = waiting[1][0]
    assert (room.tag, room.text, room.get("startConferenceOnEnter"), room.get("endConferenceOnExit")) == (
        "Conference", "voicecall-transfer-1", "false", "true")
    brief = ET.fromstring(twiml.conference_brief("voicecall-transfer-1", summary=NASTY, voice=None))
    assert brief[0].text == NASTY and brief[1][0].get("startConferenceOnEnter") == "true"


def test_plivo_serves_the_transfer_document_to_an_ended_call(plivo):
    parsed = parsed_fixture(plivo, "transfer_document_fetch")
    document = '<?xml version="1.0" encoding="UTF-8"?><Response><Dial><Number>15550002222</Number></Dial></Response>'
    answer = plivo.answer_webhook(parsed, call=view(ended=True, document=document))
    assert answer.body == document
    # Without its document (another call's token, or none stored) the ended call is hung up.
    assert tags(xml(plivo.answer_webhook(parsed, call=view(ended=True)))) == ["Hangup"]


def test_plivo_transfer_news_is_answered_empty_or_with_the_failure_said(plivo):
    assert tags(xml(plivo.answer_webhook(parsed_fixture(plivo, "transfer_dial_answered"), call=view(ended=True)))) == []
    failed = xml(plivo.answer_webhook(parsed_fixture(plivo, "transfer_dial_timeout"), call=view(ended=True)))
    assert tags(failed) == ["Speak", "Hangup"]


def test_plivo_dial_xml_users_for_sip_and_digits_for_numbers():
    from providers.carriers.plivo import xml as plivo_xml

    (dial,) = ET.fromstring(plivo_xml.dial("sip:desk@pbx.example.com", action="https://x/a", callback_url="https://x/c",
                                           caller_id="+15105550100"))
    assert (dial[0].tag, dial[0].text) == ("User", "sip:desk@pbx.example.com")
    assert (dial.get("callbackUrl"), dial.get("callerId"), dial.get("redirect")) == ("https://x/c", "+15105550100", "true")
    (dial,) = ET.fromstring(plivo_xml.dial("+15550002222", action="https://x/a", callback_url="https://x/c", caller_id=None))
    assert (dial[0].tag, dial[0].text, dial.get("callerId")) == ("Number", "15550002222", None)
