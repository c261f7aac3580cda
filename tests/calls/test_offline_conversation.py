"""Offline end to end: the carrier simulator calls the real gateway (Daphne on a loopback port).

Everything is local: the simulator's caller speaks with Piper; the gateway transcribes with
PocketSphinx and answers with a scripted reply spoken by Piper. What the caller got is judged by
what the gateway sent and the caller's playout played and acknowledged (frames, marks, clears),
not by a second recognizer listening on the caller's side: Piper samples its voice, so that
recognition varies from run to run, and more so on a loaded machine.
"""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from calls import background
from calls.models import Call, MediaStream, TranscriptEntry
from calls.simulator.call import Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from core.urls import webhook_url
from tests.calls.simulated import stream_recorded

# Piper and PocketSphinx keep cores busy in real time: these tests run one after the other, in one
# xdist worker (`--dist loadgroup`), never two at once.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("offline-audio")]

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


async def stored(call_sid: str):
    await stream_recorded(call_sid)
    return await sync_to_async(_stored)(call_sid)


def assert_everything_sent_was_played_or_cleared(call_report) -> None:
    """The caller's playout accounts for every frame and mark the gateway sent."""
    assert call_report.frames_played + call_report.frames_cleared == call_report.frames_received, call_report
    assert call_report.marks_echoed == call_report.marks_received, call_report


async def test_caller_hears_the_scripted_reply(streaming_gateway, rest_stub):
    gateway = streaming_gateway(REPLY)
    report = await simulate(gateway, [Line("I would like to book an appointment please.")], rest=rest_stub, max_seconds=45,
                            listen=False)
    call_report = report.calls[0]
    assert call_report.outcome == "completed", call_report
    # Nothing was cut: the caller played every frame the gateway sent and echoed every mark.
    assert call_report.clears == 0, call_report
    assert_everything_sent_was_played_or_cleared(call_report)
    assert call_report.frames_cleared == 0 and call_report.speech_frames_played > 100, call_report
    assert call_report.turn_latencies_ms, "no reply was timed"
    call, entries, streams = await stored(call_report.call_sid)
    # The greeting came first, then the caller, then the reply; each bot line is stored whole only
    # once the caller's playout echoed its end mark (what is heard is what is stored).
    assert entries[0] == ("bot", GREETING), entries
    user_lines = [text for speaker, text in entries if speaker == "user"]
    assert user_lines and "book" in user_lines[0] and "appointment" in user_lines[0], entries
    assert entries.index(("bot", REPLY)) > entries.index(("user", user_lines[0])), entries
    stats = streams[0]["stats"]
    assert stats["frames_in"] > 100
    assert stats.get("dropped", 0) == 0
    assert stats["marks_acked"] == stats["marks_sent"] == call_report.marks_received, stats


async def test_barge_in_clears_playback_and_keeps_only_what_was_heard(streaming_gateway, rest_stub):
    gateway = streaming_gateway(LONG_REPLY, "All right, goodbye.")
    lines = [Line("Please tell me your opening hours."), Line("Please stop talking now.", interrupt=True)]
    report = await simulate(gateway, lines, rest=rest_stub, max_seconds=60, listen=False)
    call_report = report.calls[0]
    assert call_report.outcome == "completed", call_report
    assert call_report.clears >= 1, "the gateway never sent clear"
    interrupted_at = [t.at for t in call_report.transcript if t.who == "caller"][1]
    assert call_report.clear_at[0] > interrupted_at, call_report  # the clear answered the caller talking over
    assert_everything_sent_was_played_or_cleared(call_report)
    call, entries, streams = await stored(call_report.call_sid)
    bot_lines = [text for speaker, text in entries if speaker == "bot"]
    cut = [text for text in bot_lines if LONG_REPLY.startswith(text) and text != LONG_REPLY]
    assert LONG_REPLY not in bot_lines
    assert cut and 0 < len(cut[0]) < len(LONG_REPLY) / 2, bot_lines
    assert "inventory" not in " ".join(bot_lines).lower()
    assert "All right, goodbye." in bot_lines  # the interruption was answered
    assert streams[0]["stats"]["barge_ins"] >= 1
