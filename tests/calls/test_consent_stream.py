"""A recorded streamed call end to end: the carrier simulator calls the real gateway, which says the
consent announcement before its greeting on the media stream and writes the call's two-channel WAV.

The caller (the simulator, speaking Piper's audio in real time) starts talking once the gateway has
been quiet for a while, as a person would after the greeting; the WAV must show just that: the
gateway's words first on the right channel, the caller's on the left only after the gateway fell
silent, and the scripted reply on the right after them.
"""
from __future__ import annotations

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from calls import background
from calls.models import Call, Recording, TranscriptEntry
from calls.simulator.call import QUIET_AFTER_MS, SPEECH_RMS, Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from core.urls import webhook_url
from tests.calls.simulated import stream_recorded
from tests.calls.streams.test_local_recording import read_wav, windows_rms
from tests.waiting import await_until

# Piper and PocketSphinx keep cores busy in real time: with the other offline-audio tests, one at a time.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("offline-audio")]

ACCOUNT = "AC" + "2" * 32
TOKEN = "simulator-token"
CONSENT = "This call is recorded."
GREETING = "Welcome to the clinic."
REPLY = "Your appointment is booked."


@pytest.fixture
def rest_stub():
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


def _settled(call_sid: str):
    call = Call.objects.get(provider_call_id=call_sid)
    rows = list(Recording.objects.filter(call=call))
    if not rows or any(r.status == "in-progress" for r in rows):
        return None
    lines = list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))
    return call, rows, lines


async def test_a_recorded_streamed_call_says_the_consent_first_and_is_recorded_in_order(live_gateway, configure,
                                                                                         rest_stub, tmp_path):
    loaded = configure({
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_stub.base_url},
        "fromNumber": "+15550100000",
        "publicUrl": live_gateway,
        "inboundPolicy": "open",
        "inboundGreeting": GREETING,
        "streaming": {"enabled": True, "provider": "local"},
        "tts": {"provider": "local", "timeoutMs": 30000},
        "agents": {"main": {"responder": {"type": "scripted", "replies": [REPLY]}}},
        "recording": {"local": True, "consentMessage": CONSENT, "directory": str(tmp_path)},
    })
    assert not loaded.errors, loaded.errors
    background.set_mode("thread")
    try:
        gateway = Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), account_sid=ACCOUNT,
                          auth_token=TOKEN)
        report = await simulate(gateway, [Line("I would like to book an appointment please.")], rest=rest_stub,
                                max_seconds=60, listen=False)
        call_report = report.calls[0]
        assert call_report.outcome == "completed", call_report
        await stream_recorded(call_report.call_sid)
        call, (row,), lines = await await_until(sync_to_async(lambda: _settled(call_report.call_sid)),
                                                "the call's recording settled", timeout=15)
    finally:
        background.drain(10)
    assert call.record_local and lines[0] == ("bot", f"{CONSENT} {GREETING}"), lines
    assert row.status == "completed" and row.channels == 2, row.error
    left, right = read_wav(tmp_path / row.file)
    caller, gateway_side = windows_rms(left) >= SPEECH_RMS, windows_rms(right) >= SPEECH_RMS
    assert caller.any() and gateway_side.any()
    spoke = int(np.argmax(caller))  # the caller's first words, on the carrier's clock (frames)
    first = int(np.argmax(gateway_side))
    assert first < spoke  # the gateway spoke first: the consent and the greeting
    # The caller began once the gateway had been quiet for QUIET_AFTER_MS as it played: on the WAV's
    # timeline the gateway's channel is silent for (nearly) that long before the caller's first words.
    quiet = QUIET_AFTER_MS // 20
    assert not gateway_side[spoke - quiet + 5:spoke - 5].any(), np.flatnonzero(gateway_side[:spoke])[-5:]
    assert gateway_side[spoke:].any()  # and the reply came after them
    assert row.duration_seconds == pytest.approx(len(left) / 8000)
