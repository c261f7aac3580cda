"""Speech providers failing under a real gateway process on a streamed call: the streaming STT drops mid-utterance, the TTS stalls.

The gateway (Twilio carrier on a loopback REST stub, Deepgram and OpenAI/ElevenLabs fakes, a
scripted responder) serves one call from the carrier simulator. The caller's lines are tones
(the STT fake hears speech by its energy), so no offline voice is needed.
"""
from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from calls.simulator.call import Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.simulator.run import simulate
from core.audio import samples_to_ulaw
from tests.faults.gateway import GatewayProcess
from tests.fakes.ai.stt import FakeDeepgram
from tests.fakes.ai.tts import FakeTts
from tests.waiting import await_until

# Real processes: on a machine shared with other work a start alone can take many seconds.
pytestmark = pytest.mark.timeout(240)

ACCOUNT = "AC" + "7" * 32
TOKEN = "faults-token"
STT_KEY, OPENAI_KEY, ELEVEN_KEY = "dg-faults", "sk-faults", "xi-faults"
GREETING = "Hello, clinic."
REPLIES = ["First answer.", "Second answer.", "Third answer."]


def config(stt: FakeDeepgram, tts: FakeTts, rest: TwilioRestStub, **tts_extra) -> dict:
    return {
        "provider": "twilio", "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest.base_url},
        "fromNumber": "+15550100000", "inboundPolicy": "open", "inboundGreeting": GREETING,
        "streaming": {"enabled": True, "provider": "deepgram", "providers": {"deepgram": {
            "apiKey": STT_KEY, "baseUrl": stt.url.replace("ws://", "http://"), "endpointingMs": 300}}},
        "tts": {"provider": "openai", "providers": {
            "openai": {"apiKey": OPENAI_KEY, "baseUrl": f"{tts.url}/v1"},
            "elevenlabs": {"apiKey": ELEVEN_KEY, "baseUrl": tts.url, "voiceId": "fault-voice"}}, **tts_extra},
        "agents": {"main": {"responder": {"type": "scripted", "replies": REPLIES}}},
    }


def tone_lines(*texts: str, seconds: float = 1.2) -> tuple[list[Line], dict[str, bytes]]:
    """Caller lines as loud tones, a different pitch each (what the STT fake counts as words)."""
    audio = {}
    for index, text in enumerate(texts):
        t = np.arange(int(8000 * seconds)) / 8000
        audio[text] = samples_to_ulaw((8000 * np.sin(2 * np.pi * (300 + 100 * index) * t)).astype(np.int16))
    return [Line(text) for text in texts], audio


def caller(gateway: GatewayProcess) -> Gateway:
    return Gateway(base_url=gateway.base, webhook_url=f"{gateway.base}/voice/webhook", account_sid=ACCOUNT,
                   auth_token=TOKEN)


def transcript(gateway: GatewayProcess, call_sid: str) -> list[tuple[str, str]]:
    return gateway.rows("SELECT t.speaker, t.text FROM calls_transcriptentry t JOIN calls_call c ON c.id = t.call_id "
                        "WHERE c.provider_call_id = %s ORDER BY t.id", (call_sid,))


async def test_streaming_stt_dropping_mid_utterance(tmp_path):
    """The STT socket closes (1011) while the caller's second line is being heard: the gateway
    reconnects, the third line is heard and answered, the first line's final transcript is kept,
    and the drop is logged with its close code and reason."""
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    stt = await FakeDeepgram(api_key=STT_KEY, script=["book a visit", "on monday morning", "thank you"]).start()
    lines, audio = tone_lines("one", "two", "three")
    try:
        with FakeTts(openai_key=OPENAI_KEY, elevenlabs_key=ELEVEN_KEY, chunk_gap=0.0) as tts:
            with GatewayProcess(tmp_path, config(stt, tts, rest)) as gateway:
                call = asyncio.create_task(simulate(caller(gateway), lines, rest=rest, listen=False, audio=audio,
                                                    max_seconds=60))
                first = await await_until(lambda: stt.connections and stt.connections[0], "the STT connection",
                                          timeout=60)
                # Mid-utterance: the first line was final, the second has started and is not final yet.
                await await_until(lambda: (first.speech.ended == 1 and first.speech.active) or call.done(),
                                  "the second line being heard", timeout=60)
                assert not call.done(), call.result()
                stt.hang_up(first, 1011, "fault injected")
                report = (await call).calls[0]
                said = transcript(gateway, report.call_sid)
                log = gateway.log()
    finally:
        await stt.stop()
        rest.stop()
    assert report.outcome == "completed", (report, log[-3000:])
    assert len(stt.connections) >= 2, "the gateway did not reconnect"
    assert ("user", "book a visit") in said, said  # final before the drop: kept
    # Heard after the drop, on the new connection, and answered.
    after = [text for speaker, text in said if speaker == "user" and text != "book a visit"]
    assert after and stt.connections[-1].transcript, (said, [c.transcript for c in stt.connections])
    assert [t for t in said if t[0] == "bot"][-1][1] in REPLIES, said
    assert re.search(r"deepgram transcription disconnected \(1011 fault injected\); reconnect 1/", log), log[-3000:]


async def test_tts_that_stalls(tmp_path):
    """OpenAI's TTS accepts every request and never sends audio: each speak is bounded by tts.timeoutMs,
    the greeting and replies come from the next provider, the stall is logged, the call completes."""
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    stt = await FakeDeepgram(api_key=STT_KEY, script=["book a visit"]).start()
    lines, audio = tone_lines("one")
    try:
        with FakeTts(openai_key=OPENAI_KEY, elevenlabs_key=ELEVEN_KEY, chunk_gap=0.0) as tts:
            tts.stall("openai")
            with GatewayProcess(tmp_path, config(stt, tts, rest, timeoutMs=1000)) as gateway:
                report = (await asyncio.wait_for(
                    simulate(caller(gateway), lines, rest=rest, listen=False, audio=audio, max_seconds=60),
                    timeout=90)).calls[0]
                said = transcript(gateway, report.call_sid)
                log = gateway.log()
            stalled, answered = tts.requests_to("openai"), tts.requests_to("elevenlabs")
    finally:
        await stt.stop()
        rest.stop()
    assert report.outcome == "completed", (report, log[-3000:])
    assert stalled, "the stalled provider was never asked"
    # Greeting and reply were both spoken, by the provider after the stalled one.
    assert [r.json["text"] for r in answered] == [GREETING, REPLIES[0]], (answered, log[-3000:])
    assert report.speech_frames_played > 0 and report.unanswered_turns == 0, report
    assert ("bot", GREETING) in said and ("bot", REPLIES[0]) in said, said
    assert "tts fallback: from=openai to=elevenlabs attempts=openai:" in log, log[-3000:]
