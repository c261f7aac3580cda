"""How Telnyx and Plivo calls are handed to the media stream: dial/answer requests, answer XML, and the greeting.

Telnyx asks for the stream in its dial and answer commands (checked against the fake Telnyx);
Plivo answers the call with a <Stream> element. With streaming off, or for notify calls, every
request and answer is what it was before streaming existed.
"""
from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from urllib.parse import urlencode

import pytest

from core.config import load_config_data
from providers.carriers.base import WebhookRequest
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.plivo.media import PlivoMediaCodec
from providers.carriers.telnyx import TelnyxCarrier
from tests.paths import FIXTURES
from providers.carriers.telnyx.rest import TelnyxRest
from providers.carriers.twilio import TwilioCarrier
from tests.fakes import FakeTelnyx
from tests.providers.carriers.test_carrier_answers import CALL_ID, NASTY, config, config_data, parsed_fixture, tags, view, xml
from tests.providers.carriers.test_carrier_rest import dial, fresh, serve, transport

STREAMING = {"enabled": True, "provider": "openai"}
STREAM_URL = "wss://gw.example.com/voice/stream"
OTHER_CALL_ID = "0b7c9d2e-1f3a-4b5c-8d6e-7f8091a2b3c4"
UNSAFE_SKIP = {"VOICECALL_UNSAFE_ALLOW_SKIP_SIGNATURE_VERIFICATION": "1"}


def token_of(call_id: str) -> str:
    from calls.documents import stream_token

    return stream_token(call_id)


def expected_stream_fields(call_id: str, url: str = STREAM_URL) -> dict:
    return {
        "stream_url": url,
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
        "stream_auth_token": token_of(call_id),
    }


# ============================================================================ Telnyx REST


@pytest.fixture(scope="module")
def telnyx_server():
    yield from serve(FakeTelnyx)


@pytest.fixture
def fake_telnyx(telnyx_server):
    yield from fresh(telnyx_server)


@pytest.fixture
def make_telnyx(fake_telnyx):
    """A Telnyx backend against the fake, built from a config with `extra` on top."""
    built: list[TelnyxCarrier] = []

    def make(**extra) -> TelnyxCarrier:
        data = config_data("telnyx", **extra)
        data["telnyx"] = {**data["telnyx"], "apiKey": fake_telnyx.api_key, "baseUrl": fake_telnyx.api_url}
        loaded = load_config_data(data, environ={})
        assert not loaded.errors, loaded.errors
        backend = TelnyxCarrier(loaded.config, stream_token=token_of, transport=transport())
        built.append(backend)
        return backend

    yield make
    for backend in built:
        backend.close()


def dial_body(fake: FakeTelnyx) -> dict:
    (request,) = fake.requests_to("POST", r"^/v2/calls$")
    return request.json


PLAIN_DIAL = {
    "connection_id": "1684641123236054244", "to": "+15550001111", "from": "+15550000001",
    "webhook_url": "https://gw.example.com/voice/webhook", "webhook_url_method": "POST",
    "client_state": base64.b64encode(CALL_ID.encode()).decode(), "timeout_secs": 30,
}


def test_telnyx_conversation_dial_asks_for_a_two_way_pcmu_stream_with_the_call_token(fake_telnyx, make_telnyx):
    make_telnyx(streaming=STREAMING).initiate_call(dial())
    assert dial_body(fake_telnyx) == {**PLAIN_DIAL, **expected_stream_fields(CALL_ID)}


def test_telnyx_stream_token_is_the_calls_own(fake_telnyx, make_telnyx):
    from calls.documents import stream_token_valid

    make_telnyx(streaming=STREAMING).initiate_call(dial())
    token = dial_body(fake_telnyx)["stream_auth_token"]
    assert stream_token_valid(CALL_ID, token)
    assert not stream_token_valid(OTHER_CALL_ID, token)


def test_telnyx_notify_dial_has_no_stream(fake_telnyx, make_telnyx):
    make_telnyx(streaming=STREAMING).initiate_call(dial(mode="notify", message="Your order is ready."))
    assert dial_body(fake_telnyx) == PLAIN_DIAL


def test_telnyx_dial_without_streaming_is_unchanged(fake_telnyx, make_telnyx):
    make_telnyx().initiate_call(dial())
    assert dial_body(fake_telnyx) == PLAIN_DIAL


def test_telnyx_streaming_without_a_public_url_dials_without_a_stream(fake_telnyx, make_telnyx):
    backend = make_telnyx(streaming=STREAMING, publicUrl=None)
    backend.initiate_call(dial())
    assert not {key for key in dial_body(fake_telnyx) if key.startswith("stream_")}


def test_telnyx_stream_url_follows_the_public_url_scheme_and_stream_path(fake_telnyx, make_telnyx):
    backend = make_telnyx(publicUrl="http://gw.example.com:8080/hooks/voice", streaming={**STREAMING, "streamPath": "media/"})
    backend.initiate_call(dial())
    assert dial_body(fake_telnyx)["stream_url"] == "ws://gw.example.com:8080/media"


def answer_commands(fake: FakeTelnyx):
    return fake.requests_to("POST", r"/actions/answer$")


def test_telnyx_inbound_answer_opens_the_stream(fake_telnyx, make_telnyx):
    control_id = fake_telnyx.ring_inbound("+15557654321", "+15550000001").call_control_id
    make_telnyx(streaming=STREAMING).answer_call(call_id=CALL_ID, provider_call_id=control_id)
    (request,) = answer_commands(fake_telnyx)
    assert request.json == {
        "command_id": f"voicecall-answer-{CALL_ID}",
        "client_state": base64.b64encode(CALL_ID.encode()).decode(),
        **expected_stream_fields(CALL_ID),
    }
    (stream,) = fake_telnyx.call(control_id).streams  # the fake started it, as Telnyx would
    assert stream["stream_url"] == STREAM_URL


def test_telnyx_inbound_answer_without_streaming_is_unchanged(fake_telnyx, make_telnyx):
    control_id = fake_telnyx.ring_inbound("+15557654321", "+15550000001").call_control_id
    make_telnyx().answer_call(call_id=CALL_ID, provider_call_id=control_id)
    (request,) = answer_commands(fake_telnyx)
    assert request.json == {"command_id": f"voicecall-answer-{CALL_ID}",
                            "client_state": base64.b64encode(CALL_ID.encode()).decode()}
    assert fake_telnyx.call(control_id).streams == []


def test_telnyx_answers_its_webhooks_with_a_plain_200_when_streaming():
    backend = TelnyxCarrier(config("telnyx", streaming=STREAMING))
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "call_initiated_incoming"),
                                        call=view(direction="inbound", stream_token="tok", initial_message="Hi"))
    finally:
        backend.close()
    assert (answer.status_code, answer.body, answer.greeting_delivered) == (200, "OK", False)


# ============================================================================ Plivo answers


@pytest.fixture
def streaming_plivo():
    backend = PlivoCarrier(config("plivo", streaming=STREAMING, outbound={"notifyHangupDelaySec": 5}))
    yield backend
    backend.close()


@pytest.fixture
def plain_plivo():
    backend = PlivoCarrier(config("plivo", outbound={"notifyHangupDelaySec": 5}))
    yield backend
    backend.close()


def stream_token_in(extra_headers: str) -> str | None:
    """The token the stream will present: what Plivo echoes from extraHeaders, read by the codec."""
    start = {"event": "start", "start": {"callId": "c", "streamId": "s", "mediaFormat": {"encoding": "audio/x-mulaw"}},
             "extra_headers": extra_headers}
    return PlivoMediaCodec().parse(start).token


@pytest.mark.parametrize("name,direction", [("answer_outbound", "outbound"), ("answer_inbound", "inbound")])
def test_plivo_streaming_answer_hands_the_call_to_the_stream(streaming_plivo, name, direction):
    token = token_of(CALL_ID)
    answer = streaming_plivo.answer_webhook(
        parsed_fixture(streaming_plivo, name),
        call=view(direction=direction, stream_token=token, initial_message=NASTY, pending_turn_token="turn-1"),
    )
    root = xml(answer)
    assert tags(root) == ["Stream"]
    stream = root[0]
    assert stream.text == STREAM_URL
    assert set(stream.attrib) == {"bidirectional", "keepCallAlive", "contentType", "extraHeaders"}
    assert stream.get("bidirectional") == "true"
    assert stream.get("keepCallAlive") == "true"  # the call lasts as long as the stream
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"  # Plivo's default is L16
    headers = stream.get("extraHeaders")
    assert re.fullmatch(r"token=[A-Za-z0-9]+", headers), headers  # Plivo allows only letters and digits
    assert stream_token_in(headers) == token
    # The stream speaks the greeting once its transcription listens: not this answer.
    assert answer.greeting_delivered is False
    assert answer.content_type == "text/xml"


def test_plivo_streaming_answer_carries_a_token_with_any_characters(streaming_plivo):
    answer = streaming_plivo.answer_webhook(parsed_fixture(streaming_plivo, "answer_outbound"),
                                            call=view(stream_token='t-_/+=&<"x>'))
    assert stream_token_in(xml(answer)[0].get("extraHeaders")) == 't-_/+=&<"x>'


@pytest.mark.parametrize("call", [
    view(mode="notify", initial_message=NASTY, voice="Polly.Joanna", stream_token="tok"),
    view(direction="inbound", state="hangup-bot", ended=True, rejected=True, stream_token="tok"),
    view(state="completed", ended=True, stream_token="tok"),
    view(initial_message="Hi", stream_token=None),
], ids=["notify", "rejected", "ended", "no-token"])
@pytest.mark.parametrize("name", ["answer_outbound", "answer_inbound"])
def test_plivo_answers_without_a_stream_are_unchanged_by_streaming(streaming_plivo, plain_plivo, call, name):
    streamed = streaming_plivo.answer_webhook(parsed_fixture(streaming_plivo, name), call=call)
    plain = plain_plivo.answer_webhook(parsed_fixture(plain_plivo, name), call=call)
    assert "<Stream" not in streamed.body
    assert streamed.body == plain.body
    assert (streamed.greeting_delivered, streamed.rejects_call) == (plain.greeting_delivered, plain.rejects_call)


@pytest.mark.parametrize("name,call", [
    ("keepalive_fetch", view(state="active", stream_token="tok")),
    ("keepalive_fetch", view(state="listening", pending_turn_token="turn-2", stream_token="tok")),
    ("getinput_speech", view(state="listening", stream_token="tok", initial_message="Hi")),
    ("xml_speak_fetch", view(state="speaking", stream_token="tok", document="<Response><Speak>x</Speak></Response>")),
    ("ring_url", view(state="ringing", stream_token="tok", initial_message="Hi")),
    ("hangup_completed", view(state="completed", ended=True, stream_token="tok")),
])
def test_plivo_only_the_answering_request_gets_the_stream(streaming_plivo, plain_plivo, name, call):
    streamed = streaming_plivo.answer_webhook(parsed_fixture(streaming_plivo, name), call=call)
    plain = plain_plivo.answer_webhook(parsed_fixture(plain_plivo, name), call=call)
    assert "<Stream" not in streamed.body
    assert (streamed.body, streamed.greeting_delivered) == (plain.body, plain.greeting_delivered)


@pytest.mark.parametrize("name", ["answer_outbound", "answer_inbound"])
def test_plivo_without_streaming_greets_inside_getinput_as_before(plain_plivo, name):
    answer = plain_plivo.answer_webhook(parsed_fixture(plain_plivo, name), call=view(initial_message="Hi", stream_token="tok"))
    assert tags(xml(answer)) == ["GetInput", "Redirect"]
    assert answer.greeting_delivered is True


def test_plivo_streaming_needs_a_public_url():
    backend = PlivoCarrier(config("plivo", publicUrl=None, streaming=STREAMING))
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "answer_outbound"),
                                        call=view(initial_message="Hi", stream_token="tok"))
    finally:
        backend.close()
    assert tags(xml(answer)) == ["GetInput", "Redirect"]


def test_plivo_stream_url_follows_the_public_url_scheme_and_stream_path():
    backend = PlivoCarrier(config("plivo", publicUrl="http://gw.example.com:8080/hooks/voice",
                                  streaming={**STREAMING, "streamPath": "/media/in"}))
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "answer_inbound"), call=view(stream_token="tok"))
    finally:
        backend.close()
    assert xml(answer)[0].text == "ws://gw.example.com:8080/media/in"


def test_twilio_stream_url_is_the_shared_one():
    from core.urls import media_stream_url

    cfg = config("twilio", streaming=STREAMING)
    backend = TwilioCarrier(cfg)
    try:
        assert backend.stream_url() == media_stream_url(cfg) == STREAM_URL
    finally:
        backend.close()


# ============================================================================ through the webhook handler


def telnyx_request(event_type: str, **payload) -> WebhookRequest:
    body = {"data": {"event_type": event_type, "id": f"evt-{event_type}", "occurred_at": "2025-11-22T18:00:06.076316Z",
                     "record_type": "event", "payload": payload}, "meta": {"attempt": 1}}
    return WebhookRequest(method="POST", path="/voice/webhook", query_string="", headers={"content-type": "application/json"},
                          body=json.dumps(body).encode(), remote_addr="203.0.113.9", scheme="https")


def plivo_answer_request() -> WebhookRequest:
    case = json.loads((FIXTURES / "plivo" / "answer_inbound.json").read_text())
    spec = case["request"]
    return WebhookRequest(method="POST", path="/voice/webhook", query_string=spec["query"],
                          headers={"content-type": spec["content_type"]},
                          body=urlencode([tuple(p) for p in spec["body"]]).encode(), remote_addr="203.0.113.9", scheme="https")


@pytest.fixture
def carrier_rest(monkeypatch):
    """What the background jobs ask the carrier to do, recorded instead of sent."""
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(TelnyxRest, "command", lambda self, control_id, action, body=None, **kw: sent.append((action, body or {})))
    for cls in (PlivoCarrier, TelnyxCarrier):
        for method in ("play_tts", "start_listening", "hangup_call"):
            monkeypatch.setattr(cls, method, lambda self, *a, _m=method, **kw: sent.append((_m, kw)))
    return sent


@pytest.fixture
def stream_speaks(monkeypatch):
    """Speech sent to the call's media stream (as the stream consumer would play it)."""
    spoken: list[dict] = []

    def speak(call_id, text, voice, *, interruptible=True, timeout):
        spoken.append({"call_id": call_id, "text": text, "interruptible": interruptible})
        return {"outcome": "played", "heard": text}

    monkeypatch.setattr("calls.streams.commands.stream_speak", speak)
    return spoken


def open_stream(call) -> None:
    from calls.models import MediaStream

    MediaStream.objects.create(call=call, stream_id="stream-1", carrier=call.provider)


@pytest.mark.django_db(transaction=True)
def test_telnyx_inbound_call_is_answered_into_the_stream_and_greeted_only_through_it(configure, carrier_rest, stream_speaks):
    from calls.models import Call, TranscriptEntry
    from calls.services import stream_ready
    from calls.services import webhook_process

    configure(config_data("telnyx", inboundPolicy="open", inboundGreeting="Welcome to Telnyx.", skipSignatureVerification=True,
                          streaming=STREAMING), env=UNSAFE_SKIP)
    control_id = "v3:inbound-stream-test"
    initiated = telnyx_request("call.initiated", call_control_id=control_id, direction="incoming", state="parked",
                               **{"from": "+14155550123", "to": "+15105550100"})
    assert webhook_process(request=initiated).status == 200
    call = Call.objects.get()
    assert carrier_rest == [("answer", {"command_id": f"voicecall-answer-{call.pk}",
                                        "client_state": base64.b64encode(str(call.pk).encode()).decode(),
                                        **expected_stream_fields(str(call.pk))})]

    answered = telnyx_request("call.answered", call_control_id=control_id, direction="incoming", state="answered",
                              client_state=base64.b64encode(str(call.pk).encode()).decode())
    assert webhook_process(request=answered).status == 200
    call.refresh_from_db()
    # Nothing spoken or listened to by command: the greeting waits for the stream's transcription.
    assert [action for action, _ in carrier_rest] == ["answer"]
    assert call.state == "answered" and call.initial_message == "Welcome to Telnyx."
    assert stream_speaks == []

    open_stream(call)
    stream_ready(call_id=str(call.pk))
    assert stream_speaks == [{"call_id": str(call.pk), "text": "Welcome to Telnyx.", "interruptible": True}]
    assert [action for action, _ in carrier_rest] == ["answer"]  # no speak, no transcription_start
    call.refresh_from_db()
    assert call.state == "listening" and not call.initial_message
    assert list(TranscriptEntry.objects.values_list("speaker", "text")) == [("bot", "Welcome to Telnyx.")]


@pytest.mark.django_db(transaction=True)
def test_plivo_inbound_call_is_answered_into_the_stream_and_the_greeting_waits_for_it(configure, carrier_rest, stream_speaks):
    from calls.models import Call, TranscriptEntry
    from calls.services import stream_ready
    from calls.services import webhook_process

    configure(config_data("plivo", inboundPolicy="open", inboundGreeting="Welcome to Plivo.", skipSignatureVerification=True,
                          streaming=STREAMING), env=UNSAFE_SKIP)
    answer = webhook_process(request=plivo_answer_request())
    assert answer.status == 200 and answer.content_type == "text/xml"
    root = ET.fromstring(answer.body)
    assert tags(root) == ["Stream"] and root[0].text == STREAM_URL
    call = Call.objects.get()
    assert stream_token_in(root[0].get("extraHeaders")) == token_of(str(call.pk))
    assert call.initial_message == "Welcome to Plivo."
    assert TranscriptEntry.objects.count() == 0
    assert carrier_rest == [] and stream_speaks == []

    open_stream(call)
    stream_ready(call_id=str(call.pk))
    assert [s["text"] for s in stream_speaks] == ["Welcome to Plivo."]
    assert carrier_rest == []  # neither a transfer to <Speak> nor to <GetInput>, which would end the stream
    assert list(TranscriptEntry.objects.values_list("speaker", "text")) == [("bot", "Welcome to Plivo.")]


@pytest.mark.django_db(transaction=True)
def test_plivo_notify_call_is_answered_as_before_when_streaming(configure, carrier_rest):
    from calls.models import Call
    from calls.clock import now
    from calls.services import webhook_process

    configure(config_data("plivo", skipSignatureVerification=True, streaming=STREAMING, outbound={"notifyHangupDelaySec": 0}),
              env=UNSAFE_SKIP)
    Call.objects.create(id=CALL_ID, provider="plivo", provider_call_id="req-1", direction="outbound", state="initiated",
                        from_number="+15105550100", to_number="+14155550123", started_at=now() - timedelta(seconds=5),
                        mode="notify", initial_message="Your table is ready.")
    request = plivo_answer_request()
    request = WebhookRequest(method="POST", path=request.path, query_string=f"provider=plivo&callId={CALL_ID}&flow=answer",
                             headers=request.headers, body=request.body.replace(b"Direction=inbound", b"Direction=outbound"),
                             remote_addr=request.remote_addr, scheme="https")
    answer = webhook_process(request=request)
    root = ET.fromstring(answer.body)
    assert tags(root) == ["Speak", "Hangup"]
    assert root[0].text == "Your table is ready."


# ============================================================================ streams and the call services


@pytest.mark.django_db(transaction=True)
def test_twilio_inbound_call_while_another_call_streams_is_put_on_hold(configure, carrier_rest):
    from calls.models import Call
    from calls.clock import now
    from calls.services import webhook_process
    from tests.providers.carriers.test_carrier_answers import _fixture_request

    configure(config_data("twilio", inboundPolicy="open", streaming=STREAMING))
    busy = Call.objects.create(id=OTHER_CALL_ID, provider="twilio", provider_call_id="CA" + "1" * 32, direction="inbound",
                               state="listening", from_number="+14155550199", to_number="+15105550100",
                               started_at=now() - timedelta(seconds=30), mode="conversation")
    open_stream(busy)
    answer = webhook_process(request=_fixture_request("twilio", "inbound_voice_request", sign_with="twilio-token"))
    assert tags(ET.fromstring(answer.body)) == ["Say", "Enqueue"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("carrier", ["telnyx", "plivo"])
def test_continue_on_a_streaming_call_listens_through_the_stream(configure, carrier_rest, stream_speaks, carrier):
    from core.errors import TranscriptTimeout
    from calls.models import Call
    from calls.clock import now
    from calls.services import call_continue

    configure(config_data(carrier, skipSignatureVerification=True, streaming=STREAMING, transcriptTimeoutMs=50), env=UNSAFE_SKIP)
    call = Call.objects.create(id=CALL_ID, provider=carrier, provider_call_id="carrier-call-1", direction="outbound",
                               state="listening", from_number="+15105550100", to_number="+14155550123",
                               started_at=now() - timedelta(seconds=30), answered_at=now() - timedelta(seconds=25),
                               mode="conversation")
    open_stream(call)
    with pytest.raises(TranscriptTimeout):
        call_continue(call_id=CALL_ID, prompt="Anything else?")
    assert [s["text"] for s in stream_speaks] == ["Anything else?"]
    assert [action for action, _ in carrier_rest if action != "transcription_stop"] == []
