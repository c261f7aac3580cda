"""Fuzzing the media-stream frame parser of every carrier through the real ASGI application (/voice/stream).

Each example opens a WebSocket to the real application (Channels' communicator), half the time starts
a stream for a fresh call with a valid start, then sends drawn frames: the carrier's own frames
mutated, wrong-typed and spliced with nasty JSON (NaN, 1e400, lone surrogates, 5,000-deep nesting),
broken JSON and binary frames. Invariants: the application never raises and never closes 1011, no
ERROR is logged, every admission slot is released, and a started stream's row is recorded closed.
"""
from __future__ import annotations

import base64
import json
import secrets

import pytest
from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from channels.testing import WebsocketCommunicator
from hypothesis import given
from hypothesis import strategies as st

from calls.documents import stream_token
from calls.streams import media as media_consumer
from calls.streams.limits import limits
from core.audio import FRAME_BYTES, SILENCE_FRAME
from tests.fuzz import budget
from tests.fuzz.jsontext import spliced
from tests.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

CARRIERS = ("twilio", "telnyx", "plivo")
ERROR_CLOSES = {1011, 4011}
PAYLOAD = base64.b64encode(SILENCE_FRAME).decode()
CREDENTIALS = {
    "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "twilio-token", "baseUrl": "http://127.0.0.1:9"},
    "telnyx": {"apiKey": "KEY-test", "connectionId": "1684641123236054244", "baseUrl": "http://127.0.0.1:9",
               "publicKey": base64.b64encode(b"\x01" * 32).decode()},
    "plivo": {"authId": "MA" + "A" * 18, "authToken": "plivo-token", "baseUrl": "http://127.0.0.1:9"},
}


def frames_of(carrier: str, sid: str, call_sid: str) -> dict[str, dict]:
    """The carrier's own frames for one stream, as it sends them."""
    if carrier == "twilio":
        return {
            "start": {"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
                "accountSid": "AC" + "1" * 32, "streamSid": sid, "callSid": call_sid, "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {}}},
            "media": {"event": "media", "sequenceNumber": "2", "streamSid": sid,
                      "media": {"track": "inbound", "chunk": "1", "timestamp": "40", "payload": PAYLOAD}},
            "dtmf": {"event": "dtmf", "streamSid": sid, "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "7"}},
            "mark": {"event": "mark", "streamSid": sid, "sequenceNumber": "6", "mark": {"name": "m1"}},
            "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            "stop": {"event": "stop", "sequenceNumber": "9", "streamSid": sid, "stop": {"callSid": call_sid}},
        }
    if carrier == "telnyx":
        return {
            "start": {"event": "start", "sequence_number": "1", "stream_id": sid, "start": {
                "call_control_id": call_sid, "custom_parameters": {},
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}},
            "media": {"event": "media", "sequence_number": "2", "stream_id": sid,
                      "media": {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": PAYLOAD}},
            "dtmf": {"event": "dtmf", "stream_id": sid, "dtmf": {"digit": "7"}},
            "mark": {"event": "mark", "stream_id": sid, "mark": {"name": "m1"}},
            "error": {"event": "error", "stream_id": sid, "payload": {"code": 100002, "title": "Unknown error"}},
            "connected": {"event": "connected", "version": "1.0.0"},
            "stop": {"event": "stop", "sequence_number": "9", "stream_id": sid, "stop": {"call_control_id": call_sid}},
        }
    return {
        "start": {"event": "start", "sequenceNumber": 0, "streamId": sid, "extra_headers": "{}", "start": {
            "callId": call_sid, "streamId": sid, "accountId": "MA" + "A" * 18, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}},
        "media": {"event": "media", "sequenceNumber": 2, "streamId": sid,
                  "media": {"track": "inbound", "timestamp": "40", "chunk": 2, "payload": PAYLOAD}},
        "dtmf": {"event": "dtmf", "streamId": sid, "dtmf": {"digit": "7"}},
        "mark": {"event": "playedStream", "sequenceNumber": 3, "streamId": sid, "name": "m1"},
        "cleared": {"event": "clearedAudio", "sequenceNumber": 4, "streamId": sid},
        "stop": {"event": "stop", "sequenceNumber": 9, "streamId": sid},
    }


text = st.text(max_size=12)
junk = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | text | st.just({}) | st.just([])


def mutate(draw, value):
    """A frame with members dropped or given other values, at any depth (one change in eight)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            change = draw(st.integers(0, 15))
            if change == 0:
                continue
            out[key] = draw(junk) if change == 1 else mutate(draw, item)
        return out
    return value


@st.composite
def frames(draw, carrier: str, sid: str, call_sid: str) -> str | bytes:
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(st.binary(max_size=40))
    if shape == 1:
        return draw(st.sampled_from(["[" * 20_000 + "]" * 20_000, "not json", "[]", "null", '"x"', "{}"]))
    own = frames_of(carrier, sid, call_sid)
    frame = own[draw(st.sampled_from(sorted(own)))]
    if draw(st.integers(0, 2)) == 0:
        frame = mutate(draw, frame)
    if isinstance(frame.get("media"), dict) and draw(st.integers(0, 3)) == 0:
        frame["media"] = {**frame["media"], "payload": base64.b64encode(draw(st.binary(max_size=FRAME_BYTES))).decode()}
    return draw(spliced(frame))


def stream_config(carrier: str) -> dict:
    return {"provider": carrier, carrier: CREDENTIALS[carrier], "fromNumber": "+15550100000",
            "publicUrl": "https://gw.example.com/voice/webhook", "streaming": {"enabled": True, "provider": "local"},
            "tts": {"provider": "local"}}


class QuietSession:
    """Transcription that hears nothing: the fuzz is about frames, not speech."""

    async def connect(self) -> None:
        pass

    def send_audio(self, audio: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


class QuietProvider:
    def create_session(self, listener, *, language=None) -> QuietSession:
        return QuietSession()


@pytest.fixture
def streams(request, configure, monkeypatch, loop, app_errors):
    from calls.gateway import get_gateway

    carrier = request.param
    loaded = configure(stream_config(carrier))
    assert not loaded.errors, loaded.errors
    monkeypatch.setattr(media_consumer, "transcription_provider", lambda config: QuietProvider())
    # A layer of this test's own: channels_redis lets one loop at a time receive on a layer object, and
    # the live gateway of this process (its loop) may still be closing sockets of an earlier test.
    monkeypatch.setitem(channel_layers.backends, DEFAULT_CHANNEL_LAYER, channel_layers.make_backend(DEFAULT_CHANNEL_LAYER))
    bound = get_gateway().loop
    yield carrier
    get_gateway().bind_loop(bound)  # the streams bound this test's loop; a live gateway's streams rebind it anyway


@sync_to_async
def new_call(carrier: str):
    from calls.models import Call

    return Call.objects.create(provider=carrier, provider_call_id="c-" + secrets.token_hex(12), direction="inbound",
                               state="listening", from_number="+15550100001", to_number="+15550100000",
                               mode="conversation")


@sync_to_async
def stream_closed(sid: str):
    from calls.models import MediaStream

    row = MediaStream.objects.filter(stream_id=sid).first()
    return row if row is not None and row.closed_at is not None else None


@sync_to_async
def stream_opened(sid: str) -> bool:
    from calls.models import MediaStream

    return MediaStream.objects.filter(stream_id=sid).exists()


async def run_stream(carrier: str, start: bool, drawn: list) -> list[int]:
    """One socket through the real application; the close codes the application sent."""
    from voicecall_project.asgi import application

    sid = "MZ" + secrets.token_hex(16)
    call = await new_call(carrier) if start else None
    path = "/voice/stream" + (f"?token={stream_token(str(call.pk))}" if call else "")
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    try:
        if call is not None:
            budget.sent()
            await communicator.send_to(text_data=json.dumps(frames_of(carrier, sid, call.provider_call_id)["start"]))
            await await_until(lambda: stream_opened(sid), "the stream admitted", timeout=5)
        for frame in drawn(sid, call.provider_call_id if call else "c-unknown"):
            budget.sent()
            kind = "bytes" if isinstance(frame, bytes) else "text"
            await communicator.send_input({"type": "websocket.receive", kind: frame})
    finally:  # the socket goes away whatever happened, so one failure cannot hold the caps for the next example
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait(timeout=5)  # re-raises whatever the application raised
    closes = []
    while not communicator.output_queue.empty():
        message = communicator.output_queue.get_nowait()
        if message["type"] == "websocket.close":
            closes.append(message.get("code", 1000))
    if call is not None:
        row = await await_until(lambda: stream_closed(sid), "the stream recorded as closed", timeout=5)
        assert row.close_reason, row
    await await_until(lambda: not (limits.total or limits.pending), "the admission slots released", timeout=5)
    return closes


@pytest.mark.parametrize("streams", CARRIERS, indirect=True)
@budget.fuzz_settings("media", parts=len(CARRIERS))
@given(data=st.data(), start=st.booleans(), count=st.integers(1, 8))
def test_media_frames(streams, loop, app_errors, data, start, count):
    carrier = streams

    def drawn(sid: str, call_sid: str) -> list:
        return [data.draw(frames(carrier, sid, call_sid)) for _ in range(count)]

    closes = loop.run_until_complete(run_stream(carrier, start, drawn))
    assert not ERROR_CLOSES & set(closes), closes
    assert not app_errors.take()
    budget.outcome(f"{carrier} stream", f"closed {closes[0]}" if closes else "open")
