"""A streamed conversation under answering-machine detection: no stream before the verdict, the stream after it.

Telnyx: the dial carries detection instead of the stream, and start_held_call asks for the stream
(checked against the fake Telnyx). Twilio and Plivo: the answer only holds the line; the answer
fetched after the verdict (flow=start) hands the call to the stream.
"""
from __future__ import annotations

import dataclasses

import pytest

from core.config import load_config_data
from providers.carriers.base import ParsedWebhook
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.twilio import TwilioCarrier
from tests.fakes import FakeTelnyx
from tests.providers.carriers.test_carrier_answers import CALL_ID, config, config_data, tags, view, xml
from tests.providers.carriers.test_carrier_rest import dial, fresh, serve, transport
from tests.providers.carriers.test_stream_answers import STREAMING, dial_body, expected_stream_fields, token_of


@pytest.fixture(scope="module")
def telnyx_server():
    yield from serve(FakeTelnyx)


@pytest.fixture
def fake_telnyx(telnyx_server):
    yield from fresh(telnyx_server)


@pytest.fixture
def make_telnyx(fake_telnyx):
    """A streaming Telnyx backend against the fake."""
    built: list[TelnyxCarrier] = []

    def make() -> TelnyxCarrier:
        data = config_data("telnyx", streaming=STREAMING)
        data["telnyx"] = {**data["telnyx"], "apiKey": fake_telnyx.api_key, "baseUrl": fake_telnyx.api_url}
        loaded = load_config_data(data, environ={})
        assert not loaded.errors, loaded.errors
        built.append(TelnyxCarrier(loaded.config, stream_token=token_of, transport=transport()))
        return built[-1]

    yield make
    for backend in built:
        backend.close()


def test_telnyx_dial_with_detection_has_no_stream_and_the_verdict_starts_it(fake_telnyx, make_telnyx):
    backend = make_telnyx()
    backend.initiate_call(dataclasses.replace(dial(), amd="detect", amd_timeout_ms=9000))
    body = dial_body(fake_telnyx)
    assert not {key for key in body if key.startswith("stream_")}
    assert body["answering_machine_detection"] == "detect"
    assert body["answering_machine_detection_config"] == {
        "total_analysis_time_millis": 9000, "greeting_total_analysis_time_millis": 9000}

    control_id = fake_telnyx.last_call.call_control_id
    fake_telnyx.answer(control_id)
    backend.start_held_call(call_id=CALL_ID, provider_call_id=control_id, mode="conversation")
    (command,) = [c for c in fake_telnyx.call(control_id).commands if c["action"] == "streaming_start"]
    assert {k: v for k, v in command["body"].items() if k != "command_id"} == expected_stream_fields(CALL_ID)


def test_telnyx_notify_call_starts_no_stream_after_the_verdict(fake_telnyx, make_telnyx):
    backend = make_telnyx()
    backend.initiate_call(dataclasses.replace(dial(mode="notify", message="Hi"), amd="voicemail"))
    assert dial_body(fake_telnyx)["answering_machine_detection"] == "detect_beep"
    control_id = fake_telnyx.last_call.call_control_id
    backend.start_held_call(call_id=CALL_ID, provider_call_id=control_id, mode="notify")
    assert fake_telnyx.call(control_id).commands == []


def start_fetch(kind_key: str) -> ParsedWebhook:
    """The request a held call makes once the verdict lets it go on (Twilio's kind, Plivo's flow: start)."""
    return ParsedWebhook(call_ref=CALL_ID, facts={kind_key: "start", "answering": True})


def test_twilio_streamed_call_is_held_then_streamed():
    backend = TwilioCarrier(config("twilio", streaming=STREAMING))
    try:
        held = backend.answer_webhook(ParsedWebhook(call_ref=CALL_ID, facts={"kind": "voice", "answering": True}),
                                      call=view(initial_message="Hi", stream_token=token_of(CALL_ID), held=True))
        assert tags(xml(held)) == ["Pause", "Redirect"]
        started = backend.answer_webhook(start_fetch("kind"), call=view(initial_message="Hi", stream_token=token_of(CALL_ID)))
        assert tags(xml(started)) == ["Connect"]
        assert started.greeting_delivered is False  # the stream's transcription readiness says it
    finally:
        backend.close()


def test_plivo_streamed_call_is_held_then_streamed():
    backend = PlivoCarrier(config("plivo", streaming=STREAMING))
    try:
        held = backend.answer_webhook(ParsedWebhook(call_ref=CALL_ID, facts={"flow": "answer", "answering": True}),
                                      call=view(initial_message="Hi", stream_token=token_of(CALL_ID), held=True))
        assert tags(xml(held)) == ["Wait", "Redirect"]
        started = backend.answer_webhook(start_fetch("flow"), call=view(initial_message="Hi", stream_token=token_of(CALL_ID)))
        assert tags(xml(started)) == ["Stream"]
    finally:
        backend.close()


def test_twilio_dial_without_detection_is_unchanged():
    assert TwilioCarrier._amd_fields(dial()) == []
    fields = dict(TwilioCarrier._amd_fields(dataclasses.replace(dial(), amd="voicemail", amd_timeout_ms=90000)))
    assert fields["MachineDetection"] == "DetectMessageEnd" and fields["MachineDetectionTimeout"] == "59"
