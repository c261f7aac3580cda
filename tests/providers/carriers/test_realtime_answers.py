"""How carriers are pointed at the realtime stream: Twilio and Plivo answers, Telnyx dial/answer fields, each with a one-time token."""
from __future__ import annotations

from itertools import count

import pytest

from core.config import load_config_data
from core.urls import realtime_stream_url
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.twilio import TwilioCarrier
from tests.providers.carriers.test_carrier_answers import CALL_ID, config_data, parsed_fixture, tags, view, xml
from tests.providers.carriers.test_carrier_rest import dial
from tests.providers.carriers.test_stream_answers import dial_body, fake_telnyx, make_telnyx, telnyx_server  # noqa: F401

REALTIME = {"enabled": True, "provider": "openai"}
STREAM_PREFIX = "wss://gw.example.com/voice/stream/realtime/"


def carrier(cls, provider: str, **extra):
    loaded = load_config_data(config_data(provider, realtime=REALTIME, inboundPolicy="open", **extra), environ={})
    assert loaded.errors == [], loaded.errors
    backend = cls(loaded.config)
    tokens = count(1)
    issued: list[tuple[str, str]] = []

    def issue(call_id: str) -> str:
        token = f"00000000-0000-4000-8000-{next(tokens):012d}"
        issued.append((call_id, token))
        return token

    backend.realtime_token = issue
    backend.issued = issued
    return backend


def test_the_realtime_url_is_the_public_host_the_stream_path_and_the_token():
    loaded = load_config_data(config_data("twilio", realtime=REALTIME), environ={})
    assert realtime_stream_url(loaded.config, "tok") == STREAM_PREFIX + "tok"
    derived = load_config_data(config_data("twilio", realtime=REALTIME, serve={"path": "/hooks/webhook"}), environ={})
    assert realtime_stream_url(derived.config, "t").endswith("/hooks/stream/realtime/t")
    off = load_config_data(config_data("twilio"), environ={})
    assert realtime_stream_url(off.config, "t") is None


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_twilio_connects_a_conversation_to_the_realtime_stream_with_a_new_token(direction):
    backend = carrier(TwilioCarrier, "twilio")
    try:
        name = "inbound_voice_request" if direction == "inbound" else "outbound_url_fetch"
        answer = backend.answer_webhook(parsed_fixture(backend, name),
                                        call=view(direction=direction, initial_message="Hi", stream_token="classic"))
    finally:
        backend.close()
    root = xml(answer)
    assert tags(root) == ["Connect"]
    stream = root[0][0]
    (call_id, token), = backend.issued
    assert call_id == CALL_ID and stream.get("url") == STREAM_PREFIX + token
    assert answer.greeting_delivered is False  # the model speaks it


def test_twilio_notify_calls_keep_the_classic_answer():
    backend = carrier(TwilioCarrier, "twilio")
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "outbound_url_fetch"),
                                        call=view(mode="notify", initial_message="Your order is ready"))
    finally:
        backend.close()
    assert "<Stream" not in answer.body and not backend.issued


@pytest.mark.parametrize("name,direction", [("answer_outbound", "outbound"), ("answer_inbound", "inbound")])
def test_plivo_answers_a_conversation_with_the_realtime_stream(name, direction):
    backend = carrier(PlivoCarrier, "plivo")
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, name), call=view(direction=direction, initial_message="Hi"))
    finally:
        backend.close()
    root = xml(answer)
    assert tags(root) == ["Stream"]
    (_, token), = backend.issued
    assert root[0].text == STREAM_PREFIX + token
    assert root[0].get("bidirectional") == "true" and root[0].get("contentType") == "audio/x-mulaw;rate=8000"


def test_telnyx_conversation_dial_streams_to_the_realtime_path(fake_telnyx, make_telnyx):  # noqa: F811
    backend = make_telnyx(realtime=REALTIME, inboundPolicy="open")
    backend.realtime_token = lambda call_id: "11111111-1111-4111-8111-111111111111"
    backend.initiate_call(dial())
    body = dial_body(fake_telnyx)
    assert body["stream_url"] == STREAM_PREFIX + "11111111-1111-4111-8111-111111111111"
    assert body["stream_auth_token"] == "11111111-1111-4111-8111-111111111111"
    assert (body["stream_bidirectional_mode"], body["stream_bidirectional_codec"], body["stream_codec"]) == ("rtp", "PCMU", "PCMU")


def test_telnyx_notify_dial_has_no_realtime_stream(fake_telnyx, make_telnyx):  # noqa: F811
    backend = make_telnyx(realtime=REALTIME, inboundPolicy="open")
    backend.realtime_token = lambda call_id: pytest.fail("no token for a notify call")
    backend.initiate_call(dial(mode="notify", message="Your order is ready."))
    assert not {key for key in dial_body(fake_telnyx) if key.startswith("stream_")}


def test_twilio_resume_after_dtmf_connects_the_realtime_stream_with_a_new_token():
    # The digits' update ended the realtime stream; the stream's tokens are used once, so a new one.
    backend = carrier(TwilioCarrier, "twilio")
    try:
        answer = backend.answer_webhook(parsed_fixture(backend, "resume_fetch"),
                                        call=view(state="listening", stream_token="classic"))
    finally:
        backend.close()
    root = xml(answer)
    assert tags(root) == ["Connect"]
    (call_id, token), = backend.issued
    assert call_id == CALL_ID and root[0][0].get("url") == STREAM_PREFIX + token
