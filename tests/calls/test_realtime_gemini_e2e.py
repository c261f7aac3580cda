"""Whole realtime calls against a fake Gemini Live: a simulated Twilio caller through the real gateway (Daphne)."""
# The gateway bridges the caller's stream to FakeGeminiLive (its own thread and loop), configured as
# the `google` realtime provider. The caller speaks a loud tone for each line (the fake's voice
# detection hears it; its script says what the words were) and hears the fake's 24 kHz answers as
# 8 kHz μ-law frames. Consults go through the llm responder, pointed at a fake Chat Completions server.
from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import ConnectionClosed

from calls import background
from calls.models import Call, CallEvent, TranscriptEntry
from calls.realtime.instructions import greeting_instructions
from calls.simulator.call import Gateway, Line, SimulatedCall
from calls.simulator.rest import TwilioRestStub
from calls.streams import realtime as bridge
from core.audio import FRAME_BYTES, samples_to_ulaw
from core.urls import webhook_url
from tests.calls.simulated import stream_recorded
from tests.fakes.ai.llm import FakeChatCompletions
from tests.fakes.ai.realtime_google import FakeGeminiLive
from tests.fakes.ai.realtime_google import Line as Say
from tests.waiting import await_until

pytestmark = [pytest.mark.django_db(transaction=True)]

ACCOUNT = "AC" + "4" * 32
TOKEN = "simulator-token"
KEY = "sk-fake-llm"
NUMBER, CALLER = "+15550100040", "+15550100041"
GREETING = "Welcome to the clinic."
GREETING_REPLY = "Hello and welcome to the clinic, how can I help?"


def caller_tone(ms: int = 600) -> bytes:
    """What the caller says, as the fake hears it: loud enough for its voice detector."""
    t = np.arange(ms * 8) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * 300 * t) * 0.4 * 32767).astype(np.int16))


class RecordingCall(SimulatedCall):
    """The simulated caller, also noting when each media frame arrived and how long it was."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, int]] = []
        self.close_code: int | None = None  # how the gateway closed the stream, if it did

    async def _receive(self, ws) -> None:
        call = self

        class Tap:
            def __aiter__(self):
                return self._frames()

            async def _frames(self):
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("event") == "media":
                        call.arrivals.append((time.monotonic(), len(base64.b64decode(message["media"]["payload"]))))
                    yield raw

        await super()._receive(Tap())

    async def _speak_and_listen(self, ws, pacer, lines) -> None:
        try:
            await super()._speak_and_listen(ws, pacer, lines)
        except ConnectionClosed as exc:
            # The gateway closed the stream: its hang-up, whose REST request may come a moment later.
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None
            await asyncio.wait_for(self.hung_up_by_gateway.wait(), 10)


@pytest.fixture
def rest_stub():
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@pytest.fixture
def llm():
    with FakeChatCompletions(api_key=KEY, reply='{"spoken": "We open at ten on Sundays."}') as fake:
        yield fake


@pytest.fixture
def gemini():
    fake = FakeGeminiLive(greeting_reply=GREETING_REPLY)
    fake.speed = 0  # as fast as it can: the gateway paces what the caller hears
    with fake:
        yield fake


@pytest.fixture
def site(live_gateway, configure, rest_stub, llm, gemini):
    def apply(**google):
        loaded = configure({
            "provider": "twilio",
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_stub.base_url},
            "fromNumber": NUMBER,
            "publicUrl": live_gateway,
            "inboundPolicy": "open",
            "inboundGreeting": GREETING,
            "responseModel": "fake/clinic-model",
            "models": {"providers": {"fake": {"baseUrl": llm.url, "apiKey": KEY}}},
            "realtime": {"enabled": True, "provider": "google", "providers": {"google": {
                "apiKey": "test-key", "baseUrl": gemini.url.replace("ws://", "http://", 1),
                "silenceDurationMs": 300, **google}}},
        })
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        return Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), account_sid=ACCOUNT,
                       auth_token=TOKEN)

    yield apply
    background.drain(10)


async def place_call(site: Gateway, rest: TwilioRestStub, lines: list[Line], *, max_seconds: float = 30,
                     hangup_after_ms: int = 1000) -> RecordingCall:
    """One simulated inbound call to the end (the caller's or the gateway's hang-up)."""
    sim = RecordingCall(site, caller=CALLER, callee=NUMBER, lines=lines,
                        audio={line.text: caller_tone() for line in lines},
                        hangup_after_ms=hangup_after_ms, max_seconds=max_seconds)
    loop = asyncio.get_running_loop()
    rest.on_hangup = lambda sid: loop.call_soon_threadsafe(sim.gateway_hung_up) if sid == sim.sid else None
    rest.status[sim.sid] = "in-progress"
    await sim.run()
    return sim


@sync_to_async
def records(call_sid: str) -> tuple[Call, list[tuple[str, str]], dict[str, list[dict]]]:
    call = Call.objects.get(provider_call_id=call_sid)
    lines = list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))
    events: dict[str, list[dict]] = {}
    for type, payload in CallEvent.objects.filter(call=call).order_by("pk").values_list("type", "payload"):
        events.setdefault(type, []).append(payload)
    return call, lines, events


async def settled(call_sid: str, speakers: list[str]):
    """The records once the stream's end and the expected transcript lines are written."""
    await stream_recorded(call_sid)

    async def done():
        found = await records(call_sid)
        return found if [speaker for speaker, _ in found[1]] == speakers else None

    return await await_until(done, f"transcript lines {speakers}")


async def test_the_greeting_is_the_first_turn_and_a_caller_line_is_answered(site, rest_stub, gemini):
    gemini.script = [Say(transcript="When do you open?", reply="We open at nine every morning.", reply_ms=600)]
    sim = await place_call(site(), rest_stub, [Line("When do you open?")])
    report = sim.report
    assert report.outcome == "completed", report
    conn = gemini.last
    # The greeting was asked for as the model's first turn: a text turn with the configured greeting.
    assert conn.texts == [greeting_instructions(GREETING)]
    assert GREETING in conn.texts[0]
    first_kinds = [next(iter(m)) for m in conn.received[:2]]
    assert first_kinds[0] == "setup" and "clientContent" in [next(iter(m)) for m in conn.received[:3]], first_kinds
    # Its audio (480 ms at 24 kHz) reached the caller as 20 ms μ-law frames, at the pace of real time.
    assert all(size == FRAME_BYTES for _, size in sim.arrivals)
    greeting = sim.arrivals[:20]
    span = greeting[-1][0] - greeting[0][0]
    assert span >= 0.7 * 19 * 0.02, span
    assert report.speech_frames_played >= 40  # the greeting and the answer, heard
    # The fake heard the caller as 16 kHz PCM (about 600 ms of the tone among the frames sent).
    assert len(conn.audio) >= report.frames_sent * 640 * 0.9
    pcm = np.frombuffer(bytes(conn.audio), dtype="<i2")
    assert np.abs(pcm).max() > 8000  # the loud line came through the upsampler
    assert report.turn_latencies_ms, report
    call, lines, events = await settled(sim.sid, ["bot", "user", "bot"])
    assert lines == [("bot", GREETING_REPLY), ("user", "When do you open?"), ("bot", "We open at nine every morning.")]
    turns = events["realtime.turn"]
    assert len(turns) == 1 and 0 <= turns[0]["latencyMs"] < 5000, turns
    assert call.end_reason == "completed"


LONG_REPLY = " ".join(f"word{n}" for n in range(1, 61))


async def test_the_caller_interrupts_a_long_answer(site, rest_stub, gemini):
    # Twice real time: the fake is still sending when the caller talks over it, and the gateway's
    # playback never runs dry (the caller would hear a pause and wait for the next talkspurt).
    gemini.speed = 2.0
    gemini.script = [Say(transcript="Tell me everything.", reply=LONG_REPLY, reply_ms=8000),
                     Say(transcript="Stop, please.", reply="Okay, stopping.")]
    sim = await place_call(site(), rest_stub, [Line("Tell me everything."), Line("Stop, please.", interrupt=True)])
    report = sim.report
    assert report.outcome == "completed", report
    conn = gemini.last
    assert conn.server_content("interrupted"), "the fake's own voice detection interrupted its answer"
    assert report.clears >= 1 and report.frames_cleared > 0  # the gateway cleared Twilio's buffer
    # Gemini keeps only what it sent: no truncation (nor any unknown message) went to it, and no
    # second text turn cut the conversation.
    assert {next(iter(m)) for m in conn.received} <= {"setup", "realtimeInput", "clientContent"}
    assert conn.texts == [greeting_instructions(GREETING)] and conn.problem is None
    call, lines, events = await settled(sim.sid, ["bot", "user", "bot", "user", "bot"])
    bot = [text for speaker, text in lines if speaker == "bot"]
    assert bot[0] == GREETING_REPLY and bot[-1] == "Okay, stopping."
    cut = bot[1]
    # What the caller heard of the long answer: its start, about 1.2 s of 8 s, nowhere near all of it.
    assert cut and LONG_REPLY.startswith(cut) and len(cut.split()) < 40, cut
    assert ("user", "Stop, please.") in lines


async def test_a_consult_goes_through_the_llm_responder_and_its_answer_back_to_the_model(site, rest_stub, gemini, llm):
    question = {"question": "When do you open on Sunday?", "reason": "current_external_data"}
    gemini.script = [Say(transcript="Are you open on Sunday?", reply="We open at ten on Sundays.",
                         tool=("openclaw_agent_consult", question))]
    sim = await place_call(site(), rest_stub, [Line("Are you open on Sunday?")])
    assert sim.report.outcome == "completed", sim.report
    responses = gemini.tool_responses
    assert len(responses) == 1, (responses, gemini.last.late_tool_responses)
    assert responses[0]["name"] == "openclaw_agent_consult" and responses[0]["id"] == "fc-1"
    assert responses[0]["response"]["output"]["answer"] == "We open at ten on Sundays."
    assert "When do you open on Sunday?" in json.dumps(llm.last.json["messages"])
    call, lines, events = await settled(sim.sid, ["bot", "user", "bot"])
    assert lines[-1] == ("bot", "We open at ten on Sundays.")
    (tool_call,), (tool_result,) = events["realtime.tool_call"], events["realtime.tool_result"]
    assert tool_call["name"] == "openclaw_agent_consult" and "Sunday" in json.dumps(tool_call)
    assert "ten on Sundays" in json.dumps(tool_result)


async def test_the_model_hangs_up_after_its_last_words(site, rest_stub, gemini):
    gemini.script = [Say(transcript="That is all, thanks.", reply="Goodbye, have a nice day.", reply_ms=800,
                         tool=("openclaw_end_call", {}))]
    sim = await place_call(site(), rest_stub, [Line("That is all, thanks.")], hangup_after_ms=8000)
    report = sim.report
    assert report.outcome == "hangup-bot", report  # the gateway hung up, not the caller
    assert gemini.tool_responses[0]["response"] == {"output": {"ok": True}}
    call, lines, events = await settled(sim.sid, ["bot", "user", "bot"])
    assert lines[-1] == ("bot", "Goodbye, have a nice day.")  # played in full before the hang-up
    assert report.frames_received >= (480 + 800) // 20 - 2, report.frames_received
    assert call.end_reason == "completed"
    assert events["realtime.tool_call"][0]["name"] == "openclaw_end_call"


async def test_a_go_away_resumes_the_session_and_the_call_goes_on(site, rest_stub, gemini, caplog):
    gemini.script = [Say(transcript="First question.", reply="First answer."),
                     Say(transcript="Second question.", reply="Second answer.")]
    call = asyncio.ensure_future(place_call(site(), rest_stub, [Line("First question."), Line("Second question.")]))
    # Once the first answer is out (its resumption handle issued), the server announces it is going away.
    await await_until(lambda: gemini.utterances == 1 and len(gemini.handles) == 2 or call.done(), "the first answer")
    assert len(gemini.connections) == 1
    gemini.go_away(0.05)
    sim = await call
    assert sim.report.outcome == "completed", sim.report
    first, second = gemini.connections
    assert first.hung_up == 1000 and second.resumption_handle == "h-2"  # resumed where the first left off
    assert second.texts == []  # no second greeting
    assert "goAway" in caplog.text
    _, lines, events = await settled(sim.sid, ["bot", "user", "bot", "user", "bot"])
    assert [text for speaker, text in lines if speaker == "bot"] == [GREETING_REPLY, "First answer.", "Second answer."]
    assert len(events["realtime.turn"]) == 2


@pytest.mark.parametrize("code, reason", [(1008, "Policy violation: the request was blocked."),
                                          (1007, "Request contains an invalid argument.")])
async def test_a_final_close_ends_the_call_with_its_reason(site, rest_stub, gemini, caplog, code, reason):
    call = asyncio.ensure_future(place_call(site(), rest_stub, [Line("Hello?")], hangup_after_ms=8000))
    await await_until(lambda: gemini.connections and gemini.last.texts or call.done(), "the greeting request")
    gemini.close(code, reason)
    sim = await call
    assert sim.report.outcome == "hangup-bot", sim.report
    assert len(gemini.connections) == 1  # not retried: a new session would be refused the same way
    assert "the realtime session was lost" in caplog.text
    row, _, _ = await records(sim.sid)
    assert row.end_reason == "error"
    assert f"{code} {reason}" in caplog.text, caplog.text[-2000:]


async def test_a_provider_that_never_completes_setup_ends_the_call(site, rest_stub, gemini, monkeypatch, caplog):
    monkeypatch.setattr(bridge, "CONNECT_TIMEOUT", 0.5)
    gemini.never_setup = True
    sim = await place_call(site(), rest_stub, [Line("Hello?")], hangup_after_ms=8000)
    assert sim.report.outcome == "hangup-bot", sim.report
    assert sim.report.speech_frames_played == 0
    row, lines, _ = await records(sim.sid)
    assert row.end_reason == "error" and lines == []
    assert gemini.last.setup is not None and gemini.last.texts == []
    assert "did not connect" in caplog.text and "no answer within 0.5 s" in caplog.text


async def test_a_dropped_connection_is_resumed_and_the_call_goes_on(site, rest_stub, gemini, caplog):
    gemini.script = [Say(transcript="First question.", reply="First answer."),
                     Say(transcript="Second question.", reply="Second answer.")]
    call = asyncio.ensure_future(place_call(site(), rest_stub, [Line("First question."), Line("Second question.")]))
    await await_until(lambda: gemini.utterances == 1 and len(gemini.handles) == 2 or call.done(), "the first answer")
    gemini.close(1011, "Internal error encountered.")  # the server fails mid-call
    sim = await call
    assert sim.report.outcome == "completed", sim.report
    first, second = gemini.connections
    assert first.hung_up == 1011 and second.resumption_handle == "h-2" and second.texts == []
    _, lines, _ = await settled(sim.sid, ["bot", "user", "bot", "user", "bot"])
    assert [text for speaker, text in lines if speaker == "bot"] == [GREETING_REPLY, "First answer.", "Second answer."]
