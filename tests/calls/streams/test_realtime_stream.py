"""The realtime stream (calls/streams/realtime.py) through the real server, with a scripted realtime provider.

Daphne serves the real ASGI application (the `live_gateway` fixture); the tests are Twilio's Media
Streams on one side and a scripted in-process model session on the other, whose events are raised
on the gateway's own event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import base64
import json
import secrets
from types import SimpleNamespace
from unittest.mock import AsyncMock
from urllib.parse import urlencode
from datetime import timedelta

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus

from calls import services
from calls.clock import now
from calls.selectors import call_timeline
from calls.simulator.rest import TwilioRestStub
from calls.models import Call, CallEvent, RealtimeStreamToken, TranscriptEntry
from calls.streams import realtime as bridge
from calls.streams.playback import Outcome, PlaybackResult
from calls.streams.stats import StreamStats
from core.audio import FRAME_BYTES, SILENCE_FRAME, samples_to_ulaw
from providers.realtime.base import ToolCall
from providers.registry import REALTIME, register_realtime
from tests.calls.streams.realtime_scripted import ScriptedRealtime
from tests.calls.streams.test_media_stream import (
    ACCOUNT,
    TOKEN,
    Gateway,
    Listener,
    _settle_limits,
    _streams_recorded,
    close_clients,
    close_code,
    closed_row,
    fetch_call,
    media_frame,
    new_sid,
    spec_code,
    stop_frame,
)
from tests.live_gateway import live_gateway_loop
from tests.waiting import await_until

live = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def rest_stub():
    """Twilio's REST API for hang-ups."""
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@pytest.fixture(autouse=True)
def scripted_provider():
    before = dict(REALTIME)
    register_realtime("scripted", "tests.calls.streams.realtime_scripted.ScriptedRealtime")
    ScriptedRealtime.sessions.clear()
    yield
    REALTIME.clear()
    REALTIME.update(before)
    ScriptedRealtime.sessions.clear()


class RealtimeGateway(Gateway):
    """The live gateway under a realtime config, with the scripted provider."""

    def current(self) -> dict:
        return self.data

    def config(self, *, provider: str = "scripted", carrier: str = "twilio", realtime: dict | None = None, **settings) -> None:
        self.data = {
            "provider": carrier,
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": self.rest_stub.base_url},
            "telnyx": {"apiKey": "KEY-test", "connectionId": "1684641123236054244",
                       "publicKey": "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=", "baseUrl": "http://127.0.0.1:9"},
            "fromNumber": "+15550100000",
            "publicUrl": self.live_gateway,
            "inboundPolicy": "open",
            "realtime": {"enabled": True, "provider": provider, "providers": {"scripted": settings}, **(realtime or {})},
        }
        loaded = self.configure(self.data)
        assert not loaded.errors, loaded.errors

    async def dial(self, token: str):
        return await super().dial(f"ws://{self.host}/voice/stream/realtime/{token}")


@pytest.fixture
async def gateway(live_gateway, configure, rest_stub):
    await _settle_limits()
    gw = RealtimeGateway(live_gateway.split("://", 1)[1], configure, live_gateway, rest_stub)
    gw.config()
    yield gw
    await close_clients(gw)
    await _settle_limits()
    # Let the gateway record this test's streams (their transcripts first) before the database is flushed.
    with contextlib.suppress(AssertionError):
        await await_until(sync_to_async(_streams_recorded), "every stream of the test recorded as closed", timeout=3)


@sync_to_async
def new_call(*, state: str = "answered", greeting: str = "", direction: str = "inbound", provider: str = "twilio") -> Call:
    return Call.objects.create(
        provider=provider, provider_call_id="CA" + secrets.token_hex(16), direction=direction, state=state,
        from_number="+15550100001", to_number="+15550100000", mode="conversation", initial_message=greeting,
        answered_at=None if state == "ringing" else now(),
    )


issue = sync_to_async(services.realtime_token_issue)


def start_frame(call: Call, sid: str, *, call_sid: str | None = None) -> str:
    start = {"accountSid": ACCOUNT, "streamSid": sid, "callSid": call_sid or call.provider_call_id, "tracks": ["inbound"],
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": start})


async def session_ready(count: int = 1):
    return await await_until(
        lambda: len(ScriptedRealtime.sessions) >= count and ScriptedRealtime.sessions[count - 1].connected
        and ScriptedRealtime.sessions[count - 1], "the model session to connect")


async def open_call(gw: RealtimeGateway, call: Call):
    ws = await gw.dial(await issue(str(call.pk)))
    sid = new_sid()
    await ws.send(start_frame(call, sid))
    session = await session_ready(len(ScriptedRealtime.sessions) + 1)
    return ws, sid, session


def on_loop(func, *args) -> None:
    """Raise a model event on the gateway's loop, as a provider session would."""
    live_gateway_loop().call_soon_threadsafe(func, *args)


def tone(ms: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(ms * 8) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16))


@sync_to_async
def lines(call: Call) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call=call).order_by("pk").values_list("speaker", "text"))


@sync_to_async
def events(call: Call, type: str) -> list[dict]:
    return list(CallEvent.objects.filter(call=call, type=type).values_list("payload", flat=True))


@sync_to_async
def ended(call: Call) -> Call | None:
    fresh = Call.objects.get(pk=call.pk)
    return fresh if fresh.is_terminal else None


# --- tokens -------------------------------------------------------------------------------------


@live
async def test_unknown_malformed_reused_and_expired_tokens_are_refused_before_the_upgrade(gateway):
    call = await new_call()
    for token in ("not-a-token", "5b0c3a52-4a33-4a5c-9d5e-0d3c3f0b0b0b"):
        with pytest.raises(InvalidStatus):
            await gateway.dial(token)
    token = await issue(str(call.pk))
    ws = await gateway.dial(token)
    with pytest.raises(InvalidStatus):
        await gateway.dial(token)  # used once already
    await ws.close()
    expired = await issue(str(call.pk))
    await sync_to_async(RealtimeStreamToken.objects.filter(token=expired).update)(expires_at=now() - timedelta(seconds=1))
    with pytest.raises(InvalidStatus):
        await gateway.dial(expired)


@live
async def test_an_unused_token_is_purged_with_a_warning(gateway, caplog):
    call = await new_call(greeting="Hello there")
    await issue(str(call.pk))
    purged = await sync_to_async(services.realtime_tokens_purge)(at=now() + timedelta(seconds=31))
    assert purged == 1
    assert "never opened its realtime stream" in caplog.text and "greeting was not spoken" in caplog.text


@live
async def test_start_for_another_call_sid_or_an_ended_call_is_refused(gateway, caplog):
    call = await new_call()
    ws = await gateway.dial(await issue(str(call.pk)))
    await ws.send(start_frame(call, new_sid(), call_sid="CA" + "0" * 32))
    assert await close_code(ws) in (1008, 4008)
    done = await new_call(state="completed")
    ws = await gateway.dial(await issue(str(done.pk)))
    await ws.send(start_frame(done, new_sid()))
    assert await close_code(ws) in (1008, 4008)
    assert not ScriptedRealtime.sessions
    assert "names another carrier call" in caplog.text and "has already ended" in caplog.text


# --- admission, greeting, audio ---------------------------------------------------------------


@live
async def test_admission_greets_as_the_first_turn_and_answers_the_call(gateway):
    call = await new_call(state="ringing", greeting="Hi, this is the clinic")
    ws, sid, session = await open_call(gateway, call)
    await await_until(lambda: session.responds, "the greeting request")
    assert "Hi, this is the clinic" in session.responds[0]
    fresh = await fetch_call(call)
    assert fresh.initial_message == "" and fresh.answered_at is not None
    assert await events(call, "call.answered")
    assert session.setup.tools and session.setup.instructions


@live
async def test_caller_audio_reaches_the_model_and_garbage_is_dropped(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    await ws.send("{not json")
    await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": 5}}))
    for n in range(5):
        await ws.send(media_frame(sid, tone(20), sequence=n + 2))
    await await_until(lambda: len(session.audio) >= 5 * FRAME_BYTES, "caller audio at the model")
    await ws.send(stop_frame(sid, call))
    row = await closed_row(sid)
    assert row.stats["dropped_malformed"] == 2 and row.stats["frames_in"] == 5
    assert session.closed


@live
async def test_model_audio_is_paced_in_frames_with_marks_and_recorded(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    on_loop(session.listener.on_speech_stopped)
    on_loop(session.listener.on_input_transcript, "What time is it?")
    on_loop(session.listener.on_audio, tone(500), "item-1")
    on_loop(session.listener.on_audio, tone(300), "item-1")
    on_loop(session.listener.on_output_transcript, "item-1", "It is noon.")
    on_loop(session.listener.on_response_done, "item-1", "completed")
    await await_until(lambda: len(listener.audio()) >= 40, "the model's audio at the carrier")
    assert all(len(p) == FRAME_BYTES for p in listener.payloads())
    assert listener.marks()
    await await_until(lambda: _count(call, 2), "both sides' transcript")
    assert await lines(call) == [("user", "What time is it?"), ("bot", "It is noon.")]
    turns = await events(call, "realtime.turn")
    assert len(turns) == 1 and turns[0]["latencyMs"] >= 0
    rows = await sync_to_async(lambda: call_timeline(call=Call.objects.get(pk=call.pk)))()
    assert any(row["label"] == "realtime.turn" and row["detail"].startswith("latency ") for row in rows)
    await ws.send(stop_frame(sid, call))
    row = await closed_row(sid)
    assert row.stats["turnLatencyMs"]["n"] == 1 and row.stats["marks_acked"] >= 1
    await listener.stop()


@live
async def test_a_caller_transcript_is_recorded_even_when_no_answer_follows(gateway):
    # Held for the answer's first frame (so the record's database work does not delay it), but only briefly.
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    on_loop(session.listener.on_speech_stopped)
    on_loop(session.listener.on_input_transcript, "Are you there?")
    await await_until(lambda: _count(call, 1), "the caller's transcript")
    assert await lines(call) == [("user", "Are you there?")]
    await ws.send(stop_frame(sid, call))
    await closed_row(sid)


@live
async def test_barge_in_clears_and_truncates_at_the_heard_position(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    on_loop(session.listener.on_audio, tone(3000), "item-1")
    on_loop(session.listener.on_output_transcript, "item-1", "one two three four five six seven eight nine ten")
    await await_until(lambda: len(listener.marks()) >= 3, "a few marks played")
    on_loop(session.listener.on_speech_started)
    await await_until(lambda: session.truncates, "the truncation")
    item, played_ms = session.truncates[0]
    assert item == "item-1" and 0 < played_ms < 3000
    assert "clear" in listener.events()
    (speaker, heard), = [line for line in await _wait_lines(call, 1)]
    assert speaker == "bot" and heard and heard != "one two three four five six seven eight nine ten"
    await listener.stop()


async def test_an_answer_that_played_out_before_the_clear_is_not_truncated():
    # A barge-in races the answer's last frame: truncating a fully played item at 0 would erase it.
    consumer = bridge.RealtimeStreamConsumer()
    consumer.stats = StreamStats()
    consumer.playback = SimpleNamespace(clear=AsyncMock())
    consumer.session = SimpleNamespace(truncate=AsyncMock(), cancel_response=AsyncMock())
    item = bridge._Item(consumer, "item-1")
    item.future = asyncio.get_running_loop().create_future()
    item.future.set_result(PlaybackResult(Outcome.PLAYED, played_ms=1200, total_ms=1200))
    await consumer._clear_and_truncate(item, local=False)
    consumer.playback.clear.assert_awaited_once()
    consumer.session.truncate.assert_not_called()
    item.future = asyncio.get_running_loop().create_future()
    item.future.set_result(PlaybackResult(Outcome.INTERRUPTED, played_ms=700, total_ms=1200))
    await consumer._clear_and_truncate(item, local=False)
    consumer.session.truncate.assert_awaited_once_with("item-1", 700)


def test_played_answers_are_forgotten_even_without_a_transcript():
    consumer = bridge.RealtimeStreamConsumer()
    consumer.items = {}
    consumer.responses_done, consumer.model_news = 0, asyncio.Event()
    for n in range(bridge.MAX_ITEMS + 10):
        item = bridge._Item(consumer, f"item-{n}")
        item.result = PlaybackResult(Outcome.PLAYED, played_ms=100, total_ms=100)  # no transcript ever came
        consumer.items[item.item_id] = item
    pending = bridge._Item(consumer, "item-pending")  # still playing: kept
    consumer.items = {"item-pending": pending, **consumer.items}
    consumer.on_response_done("item-pending", "completed")
    assert len(consumer.items) == bridge.MAX_ITEMS and "item-pending" in consumer.items
    assert f"item-{bridge.MAX_ITEMS + 9}" in consumer.items and "item-0" not in consumer.items


async def _wait_lines(call, n):
    await await_until(lambda: _count(call, n), f"{n} transcript line(s)")
    return await lines(call)


async def _count(call, n):
    return len(await lines(call)) >= n


@live
async def test_the_local_speech_gate_barges_in_when_the_provider_does_not(gateway):
    gateway.config(bargeIn=False)
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    on_loop(session.listener.on_audio, tone(3000), "item-1")
    await await_until(lambda: len(listener.marks()) >= 2, "playback under way")
    for n in range(6):
        await ws.send(media_frame(sid, tone(20, 0.5), sequence=n + 2))
    await await_until(lambda: session.cancels and session.truncates, "cancel and truncate")
    assert "clear" in listener.events()
    await listener.stop()


# --- tools and hang-ups -----------------------------------------------------------------------


@live
async def test_a_tool_call_gets_its_result(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    on_loop(session.listener.on_tool_call, ToolCall("c1", "openclaw_agent_consult", '{"question": ""}'))
    await await_until(lambda: session.tool_results, "the tool result")
    assert session.tool_results[0][0] == "openclaw_agent_consult" and "error" in session.tool_results[0][1]
    assert any("checking" in text for text in session.responds)  # said while the consult ran
    on_loop(session.listener.on_tool_call, ToolCall("c2", "nope", "{bad"))
    await await_until(lambda: len(session.tool_results) == 2, "the second result")
    assert "error" in session.tool_results[1][1]


@live
async def test_end_call_hangs_up_after_the_last_words(gateway, rest_stub):
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    on_loop(session.listener.on_audio, tone(400), "bye")
    on_loop(session.listener.on_response_done, "bye", "completed")
    on_loop(session.listener.on_tool_call, ToolCall("c1", "openclaw_end_call", "{}"))
    done = await await_until(lambda: ended(call), "the call to end", timeout=10)
    assert done.end_reason == "completed"
    assert len(listener.audio()) >= 20  # the last words were played first
    await await_until(lambda: session.closed, "the model session to close")  # right after the call ends
    await listener.stop()


@live
@pytest.mark.parametrize("error, reason", [(None, "completed"), (RuntimeError("socket lost"), "error")])
async def test_the_provider_closing_ends_the_call(gateway, rest_stub, error, reason):
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid, session = await open_call(gateway, call)
    on_loop(session.listener.on_closed, error)
    done = await await_until(lambda: ended(call), "the call to end")
    assert done.end_reason == reason
    assert done.last_error == ("" if error is None else "Realtime session lost: socket lost")
    assert await close_code(ws) in (1000, 1011, 4011)


@live
async def test_a_provider_that_never_connects_ends_the_call_with_a_reason(gateway, rest_stub, monkeypatch, caplog):
    monkeypatch.setattr(bridge, "CONNECT_TIMEOUT", 0.3)
    gateway.config(connect="hang")
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws = await gateway.dial(await issue(str(call.pk)))
    await ws.send(start_frame(call, new_sid()))
    done = await await_until(lambda: ended(call), "the call to end")
    assert done.end_reason == "error"
    assert done.last_error.startswith("The realtime provider ") and "did not connect: no answer within 0.3 s" in done.last_error
    assert await close_code(ws) in (1011, 4011)
    assert "did not connect" in caplog.text


@live
async def test_an_unregistered_provider_ends_the_call_naming_the_key(gateway, rest_stub, caplog):
    gateway.config(provider="missing")
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws = await gateway.dial(await issue(str(call.pk)))
    await ws.send(start_frame(call, new_sid()))
    done = await await_until(lambda: ended(call), "the call to end")
    assert done.end_reason == "error"
    assert "realtime.provider" in caplog.text
    assert done.last_error.startswith("Realtime provider unavailable: ") and "realtime.provider" in done.last_error


@live
async def test_no_inbound_media_ends_the_call_as_a_timeout(gateway, rest_stub, monkeypatch):
    monkeypatch.setattr(bridge, "MEDIA_TIMEOUT", 0.5)
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid, session = await open_call(gateway, call)
    done = await await_until(lambda: ended(call), "the call to end")
    assert done.end_reason == "timeout"
    await await_until(lambda: session.closed, "the model session to close")  # right after the call ends


@live
async def test_idle_hangup_ends_a_call_nobody_speaks_on(gateway, rest_stub):
    gateway.config(realtime={"idleHangupMs": 300})
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid, session = await open_call(gateway, call)
    done = await await_until(lambda: ended(call), "the idle call to end")
    assert done.end_reason == "timeout"


@live
async def test_an_outbound_greeting_is_not_cut_by_the_callee(gateway):
    call = await new_call(direction="outbound", greeting="Hello, this is your reminder")
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    await await_until(lambda: session.responds, "the greeting request")
    on_loop(session.listener.on_audio, tone(1500), "greeting")
    on_loop(session.listener.on_response_done, "greeting", "completed")
    await await_until(lambda: len(listener.marks()) >= 2, "the greeting under way")
    on_loop(session.listener.on_speech_started)
    await await_until(lambda: "tts-" in (listener.marks()[-1] if listener.marks() else "") and listener.marks()[-1].endswith("-end"),
                      "the whole greeting played", timeout=5)
    assert "clear" not in listener.events() and not session.truncates
    await listener.stop()


@live
async def test_stop_starts_the_disconnect_grace_and_closes_the_session(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    await ws.send(stop_frame(sid, call))
    row = await closed_row(sid)
    assert row.close_reason == "stop"
    assert (await fetch_call(call)).stream_grace_deadline is not None
    assert session.closed


@live
async def test_a_deep_frame_is_dropped_and_a_failing_handler_closes_the_stream_and_its_session(gateway, monkeypatch):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    await ws.send("[" * 20_000 + "]" * 20_000)  # dropped before the parser could recurse
    await ws.send(media_frame(sid, tone(20), sequence=2))
    await await_until(lambda: len(session.audio) >= FRAME_BYTES, "caller audio at the model after the deep frame")

    def fails(self, frame):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(bridge.RealtimeStreamConsumer, "_caller_audio", fails)
    await ws.send(media_frame(sid, tone(20), sequence=3))
    assert await close_code(ws) in spec_code(1011)
    row = await closed_row(sid)
    assert row.close_reason == "Internal error" and row.stats["dropped_malformed"] == 1
    assert (await fetch_call(call)).stream_grace_deadline is not None  # the call ends after the grace, as after a drop
    assert session.closed


@live
async def test_frames_during_admission_are_buffered_up_to_the_cap(gateway, monkeypatch):
    monkeypatch.setattr(bridge, "MAX_ADMISSION_BUFFER", 2000)
    slow_open = services.realtime_stream_open
    import threading

    release = threading.Event()

    def held(**kwargs):
        release.wait(5)
        return slow_open(**kwargs)

    monkeypatch.setattr(services, "realtime_stream_open", held)
    call = await new_call()
    ws = await gateway.dial(await issue(str(call.pk)))
    sid = new_sid()
    await ws.send(start_frame(call, sid))
    for n in range(10):
        await ws.send(media_frame(sid, SILENCE_FRAME, sequence=n + 2))
    code = await close_code(ws)
    release.set()
    assert code in (1013, 4013)


@live
async def test_too_much_queued_model_audio_closes_the_stream(gateway, monkeypatch):
    monkeypatch.setattr(bridge, "MAX_QUEUED_AUDIO", 8000)  # 1 s
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    on_loop(session.listener.on_audio, tone(3000), "item-1")
    assert await close_code(ws) in (1013, 4013)
    assert (await closed_row(sid)).close_reason.startswith("Backpressure")


# --- speak ------------------------------------------------------------------------------------


@live
async def test_speak_injects_into_the_live_session(gateway):
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    request = sync_to_async(services.call_speak_request, thread_sensitive=False)
    result = await request(call_id=str(call.pk), message="Your table is ready", allow_twiml_fallback=False)
    assert result.success
    await await_until(lambda: any("Your table is ready" in r for r in session.responds), "the injected speech")


@live
async def test_speak_without_a_live_bridge_fails_when_fallback_is_off(gateway):
    call = await new_call()
    request = sync_to_async(services.call_speak_request, thread_sensitive=False)
    result = await request(call_id=str(call.pk), message="Hello", allow_twiml_fallback=False)
    assert not result.success and result.error == "Realtime bridge is not active"


# --- Telnyx frames ----------------------------------------------------------------------------


@live
async def test_a_telnyx_stream_bridges_audio_both_ways(gateway):
    gateway.config(carrier="telnyx")
    call = await new_call(provider="telnyx")
    ws = await gateway.dial(await issue(str(call.pk)))
    stream_id = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
    await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
    await ws.send(json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": stream_id,
        "start": {"call_control_id": call.provider_call_id, "custom_parameters": {},
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
    }))
    session = await session_ready()
    listener = Listener(ws, echo=False)
    for n in range(3):
        await ws.send(json.dumps({"event": "media", "sequence_number": str(n + 2), "stream_id": stream_id,
                                  "media": {"track": "inbound", "chunk": str(n), "timestamp": str(n * 20),
                                            "payload": base64.b64encode(tone(20)).decode()}}))
    await await_until(lambda: len(session.audio) >= 3 * FRAME_BYTES, "caller audio at the model")
    on_loop(session.listener.on_audio, tone(400), "item-1")
    on_loop(session.listener.on_response_done, "item-1", "completed")
    await await_until(lambda: len(listener.audio()) >= 20 and listener.marks(), "the model's audio as Telnyx frames")
    for name in listener.marks():
        await ws.send(json.dumps({"event": "mark", "stream_id": stream_id, "mark": {"name": name}}))
    assert all(len(p) == FRAME_BYTES for p in listener.payloads())
    await ws.send(json.dumps({"event": "stop", "sequence_number": "9", "stream_id": stream_id,
                              "stop": {"call_control_id": call.provider_call_id}}))
    assert (await closed_row(stream_id)).close_reason == "stop"
    await listener.stop()


# --- the whole chain: webhook answer, token, stream ----------------------------------------------


@live
async def test_an_inbound_twilio_call_is_streamed_to_the_model_and_greeted(gateway, configure, rest_stub, live_gateway):
    import httpx

    from calls.simulator.call import parse_stream
    from core.urls import webhook_url
    from providers.carriers.twilio.webhook import signature

    gateway.config(speaks=True, realtime={"instructions": "Be brief."})
    loaded = configure({**gateway.current(), "inboundGreeting": "Welcome to the clinic."})
    sid = "CA" + secrets.token_hex(16)
    body = {"CallSid": sid, "AccountSid": ACCOUNT, "From": "+15550100001", "To": "+15550100000",
            "Direction": "inbound", "CallStatus": "ringing", "ApiVersion": "2010-04-01"}
    hook = webhook_url(loaded.config)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(live_gateway + "/voice/webhook", content=urlencode(body), headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(TOKEN, hook, list(body.items())),
        })
    assert answer.status_code == 200, answer.text
    url, _ = parse_stream(answer.text)
    assert url and "/voice/stream/realtime/" in url
    token = url.rsplit("/", 1)[1]
    ws = await gateway.dial(token)
    listener = Listener(ws, echo=True)
    stream_sid = new_sid()
    call = await sync_to_async(Call.objects.get)(provider_call_id=sid)
    await ws.send(start_frame(call, stream_sid))
    session = await session_ready()
    assert "Welcome to the clinic." in session.responds[0]
    assert "Be brief." in session.setup.instructions
    await await_until(lambda: len(listener.audio()) >= 20, "the greeting heard")
    await await_until(lambda: _count(call, 1), "the greeting in the transcript")
    assert await lines(call) == [("bot", "Spoken 1")]
    await ws.send(stop_frame(stream_sid, call))
    await closed_row(stream_sid)
    await listener.stop()
