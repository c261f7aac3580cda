"""Offline end to end: the carrier simulator calls the real gateway (Daphne on a loopback port).

Everything is local: the simulator's caller speaks with Piper and listens with PocketSphinx; the
gateway transcribes with PocketSphinx and answers with a scripted reply spoken by Piper.
"""
from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from calls import background
from calls.models import Call, MediaStream, TranscriptEntry
from calls.simulator.call import Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from core.urls import webhook_url

pytestmark = pytest.mark.django_db(transaction=True)

ACCOUNT = "AC" + "1" * 32
TOKEN = "simulator-token"
GREETING = "Welcome to the clinic, how can I help you?"
REPLY = "Your appointment is booked for Monday morning."
LONG_REPLY = (
    "Let me read you the whole list of our opening hours for every day of the week. "
    "On Monday we open at nine in the morning and close at five in the evening. "
    "On Tuesday we open at ten and close at six. On Wednesday we are closed all day for inventory."
)


@pytest.fixture
def rest_stub():
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@pytest.fixture
def streaming_gateway(live_gateway, configure, rest_stub):
    def apply(*replies: str):
        loaded = configure({
            "provider": "twilio",
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_stub.base_url},
            "fromNumber": "+15550100000",
            "publicUrl": live_gateway,
            "inboundPolicy": "open",
            "inboundGreeting": GREETING,
            "streaming": {"enabled": True, "provider": "local"},
            "tts": {"provider": "local"},
            "agents": {"main": {"responder": {"type": "scripted", "replies": list(replies)}}},
        })
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        return Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), account_sid=ACCOUNT, auth_token=TOKEN)

    yield apply
    background.drain(10)


def _stored(call_sid: str):
    call = Call.objects.get(provider_call_id=call_sid)
    entries = list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))
    streams = list(MediaStream.objects.filter(call=call).values("closed_at", "close_reason", "stats"))
    return call, entries, streams


async def test_caller_hears_the_scripted_reply(streaming_gateway, rest_stub):
    gateway = streaming_gateway(REPLY)
    report = await simulate(gateway, [Line("I would like to book an appointment please.")], rest=rest_stub, max_seconds=45)
    call_report = report.calls[0]
    assert call_report.outcome == "completed", call_report
    heard = call_report.heard().lower()
    # Offline recognition is not perfect: the test listens for the key words of each sentence.
    # The sentences are ones PocketSphinx gets right from Piper's voice over μ-law.
    assert "welcome" in heard, heard  # the greeting came first
    # The reply's key words are its news, the day and time. Recognition of its first words varies
    # with load ("appointment and look", "a point of that book", "we're quite mad and look").
    for word in ("monday", "morning"):
        assert word in heard, heard
    assert call_report.turn_latencies_ms, "no reply was timed"
    await asyncio.sleep(0.5)
    call, entries, streams = await sync_to_async(_stored)(call_report.call_sid)
    assert ("bot", GREETING) in entries
    assert ("bot", REPLY) in entries
    user_lines = [text for speaker, text in entries if speaker == "user"]
    assert user_lines and "book" in user_lines[0] and "appointment" in user_lines[0]
    assert streams and streams[0]["stats"]["frames_in"] > 100
    assert streams[0]["stats"].get("dropped", 0) == 0


async def test_barge_in_clears_playback_and_keeps_only_what_was_heard(streaming_gateway, rest_stub):
    gateway = streaming_gateway(LONG_REPLY, "All right, goodbye.")
    lines = [Line("Please tell me your opening hours."), Line("Please stop talking now.", interrupt=True)]
    report = await simulate(gateway, lines, rest=rest_stub, max_seconds=60)
    call_report = report.calls[0]
    assert call_report.outcome == "completed", call_report
    assert call_report.clears >= 1, "the gateway never sent clear"
    heard = call_report.heard().lower()
    assert "inventory" not in heard and "wednesday" not in heard
    await asyncio.sleep(0.5)
    call, entries, streams = await sync_to_async(_stored)(call_report.call_sid)
    bot_lines = [text for speaker, text in entries if speaker == "bot"]
    cut = [text for text in bot_lines if LONG_REPLY.startswith(text) and text != LONG_REPLY]
    assert LONG_REPLY not in bot_lines
    assert cut and 0 < len(cut[0]) < len(LONG_REPLY) / 2, bot_lines
    assert "inventory" not in " ".join(bot_lines).lower()
    assert "All right, goodbye." in bot_lines  # the interruption was answered
    assert streams[0]["stats"]["barge_ins"] >= 1
