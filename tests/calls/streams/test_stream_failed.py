"""Telnyx's streaming.failed: the call never waits for a stream that will not come (through the real gateway)."""
from __future__ import annotations

import base64
import json

import pytest

from calls.models import Call, TranscriptEntry
from core.events import CallStreamFailed
from providers.carriers.base import WebhookRequest
from providers.carriers.telnyx import webhook as telnyx_webhook
from tests.fakes import FakeTelnyx
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

FROM, CALLER = "+15550000001", "+15557654321"
GREETING = "Thanks for calling the clinic."


def gateway_config(live_gateway: str, fake: FakeTelnyx, **extra) -> dict:
    return {
        "provider": "telnyx",
        "fromNumber": FROM,
        "publicUrl": f"{live_gateway}/voice/webhook",
        "inboundPolicy": "open",
        "inboundGreeting": GREETING,
        "telnyx": {"apiKey": fake.api_key, "connectionId": "conn-123", "publicKey": fake.public_key_b64,
                   "baseUrl": fake.api_url},
        "agents": {"main": {"responder": {"type": "scripted", "replies": ["Tuesday works."]}}},
        **({"streaming": {"enabled": True, "provider": "local"}} if "realtime" not in extra else {}),
        **extra,
    }


@pytest.fixture
def telnyx(live_gateway):
    with FakeTelnyx(webhook_url=f"{live_gateway}/voice/webhook") as fake:
        yield fake
        assert not fake.errors


def ring(fake: FakeTelnyx):
    fake_call = fake.ring_inbound(CALLER, FROM)
    fake.wait_idle()
    (answer,) = wait_until(lambda: fake.requests_to("POST", r"/actions/answer$"), "the answer command")
    assert answer.json["stream_url"] and answer.json["stream_auth_token"]  # answered onto a stream
    fake.wait_idle()
    call = Call.objects.get(provider_call_id=fake_call.call_control_id)
    return fake_call, call


def fail_stream(fake: FakeTelnyx, fake_call) -> None:
    stream_id = fake_call.streams[0]["stream_id"]
    fake.send_event(fake_call.call_control_id, "streaming.failed", failure_reason="connection_failed",
                    stream_id=stream_id, stream_type="websocket",
                    stream_params={"stream_url": fake_call.streams[0]["stream_url"], "track": "inbound_track"})


def test_a_failed_stream_greets_and_listens_through_the_carrier(telnyx, live_gateway, configure):
    loaded = configure(gateway_config(live_gateway, telnyx))
    assert not loaded.errors, loaded.errors
    fake_call, call = ring(telnyx)
    assert fake_call.spoken == []  # the greeting waits for the stream's transcription
    fail_stream(telnyx, fake_call)
    wait_until(lambda: fake_call.transcription, "the carrier's transcription to start")
    assert [body["payload"] for body in fake_call.spoken] == [GREETING]
    actions = [c["action"] for c in fake_call.commands]
    assert actions.index("speak") < actions.index("transcription_start"), actions
    event = call.events.get(type="call.stream_failed")
    assert event.payload["error"] == "connection_failed"

    # The conversation goes on without the stream: the caller is heard and answered by the carrier.
    telnyx.say(fake_call.call_control_id, "Can I come on Tuesday?")
    wait_until(lambda: len(fake_call.spoken) == 2, "the reply")
    assert fake_call.spoken[-1]["payload"] == "Tuesday works."
    call.refresh_from_db()
    assert not call.is_terminal and call.last_error == ""
    assert list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text")) == [
        ("bot", GREETING), ("user", "Can I come on Tuesday?"), ("bot", "Tuesday works.")]
    assert all(d.status == 200 for d in telnyx.deliveries)


def test_a_failed_stream_ends_a_realtime_call_with_its_reason(telnyx, live_gateway, configure):
    loaded = configure(gateway_config(live_gateway, telnyx, realtime={
        "enabled": True, "provider": "openai",
        "providers": {"openai": {"apiKey": "sk-fake0123456789abcdef", "baseUrl": "http://127.0.0.1:9/v1"}}}))
    assert not loaded.errors, loaded.errors
    fake_call, call = ring(telnyx)
    fail_stream(telnyx, fake_call)
    wait_until(lambda: not telnyx.call(fake_call.call_control_id).is_alive, "the hang-up")
    telnyx.wait_idle()
    call = wait_until(lambda: Call.objects.filter(pk=call.pk, state="error").first(), "the call to end")
    assert call.end_reason == "error"
    assert "media stream" in call.last_error and "connection_failed" in call.last_error
    assert fake_call.spoken == []


def test_a_stream_failure_after_the_call_ended_changes_nothing(telnyx, live_gateway, configure):
    loaded = configure(gateway_config(live_gateway, telnyx))
    assert not loaded.errors, loaded.errors
    fake_call, call = ring(telnyx)
    telnyx.hang_up(fake_call.call_control_id)
    call = wait_until(lambda: Call.objects.filter(pk=call.pk, ended_at__isnull=False).first(), "the call to end")
    before = (call.state, call.end_reason, call.last_error, call.ended_at)
    commands = len(fake_call.commands)
    fail_stream(telnyx, fake_call)
    assert telnyx.deliveries[-1].status == 200
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.last_error, call.ended_at) == before
    assert len(fake_call.commands) == commands  # nothing was said or started


def test_streaming_failed_parses_to_a_stream_failure_of_the_known_call():
    body = json.dumps({"data": {"event_type": "streaming.failed", "id": "25dc3731-e51e-4927-a50d-a61cc25984b1",
                                "occurred_at": "2021-12-15T14:11:24.613295Z", "payload": {
                                    "call_control_id": "v3:abc", "client_state": base64.b64encode(b"call-1").decode(),
                                    "direction": "incoming", "failure_reason": "connection_failed",
                                    "stream_id": "1edb94f9", "stream_type": "websocket"}}}).encode()
    parsed = telnyx_webhook.parse(WebhookRequest(method="POST", path="/voice/webhook", query_string="",
                                                 headers={}, body=body), request_key="k")
    (event,) = parsed.events
    assert isinstance(event, CallStreamFailed)
    assert (event.call_id, event.provider_call_id, event.error) == ("call-1", "v3:abc", "connection_failed")
    assert event.direction is None  # never creates a call of its own
