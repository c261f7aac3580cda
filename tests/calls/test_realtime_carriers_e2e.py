"""Realtime calls over Telnyx and Plivo streams, through the real gateway (Daphne) and a fake OpenAI Realtime."""
# Each carrier's fake rings the gateway, which points the call (Telnyx's answer command, Plivo's
# answer XML) at the realtime stream path with a one-time token. The test then plays the carrier's
# side of that stream in the carrier's own frames: start, caller audio, mark echoes; it hears the
# model's greeting and answers in the carrier's outbound frames, talks over a long answer and gets
# the carrier's clear frame. FakeOpenAIRealtime (its own thread) is the model.
from __future__ import annotations

import asyncio
import base64
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls import background
from calls.models import Call, CallEvent, MediaStream, TranscriptEntry
from calls.realtime.instructions import greeting_instructions
from core.audio import FRAME_BYTES, SILENCE_FRAME, samples_to_ulaw
from providers.carriers.plivo.media import extra_headers, header_value
from tests.fakes import FakePlivo, FakeTelnyx
from tests.fakes.ai.realtime_openai import FakeOpenAIRealtime, Script, Turn
from tests.providers.carriers.test_carriers_e2e import carrier_block
from tests.waiting import await_until, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]

FROM, CALLER = "+15550000001", "+15557654321"
GREETING = "Thanks for calling the clinic."
GREETING_REPLY = "Hello there, clinic."
LONG_REPLY = " ".join(f"word{n}" for n in range(1, 41))


def loud(ms: int) -> list[bytes]:
    """The caller talking, in 20 ms μ-law frames (loud enough for the fake's voice detection)."""
    t = np.arange(ms * 8) / 8000
    audio = samples_to_ulaw((np.sin(2 * np.pi * 300 * t) * 0.4 * 32767).astype(np.int16))
    return [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


def quiet(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // 20)


# --- each carrier's side of the stream -----------------------------------------------------------


class TelnyxSide:
    """Telnyx's media stream frames (stream_bidirectional_mode rtp, PCMU)."""

    name = "telnyx"
    clear_event = "clear"

    def __init__(self, stream_id: str, call_id: str) -> None:
        self.stream_id, self.call_id = stream_id, call_id

    def opening(self) -> list[str]:
        return [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps({
            "event": "start", "sequence_number": "1", "stream_id": self.stream_id,
            "start": {"call_control_id": self.call_id, "custom_parameters": {},
                      "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}})]

    def media(self, seq: int, ulaw: bytes) -> str:
        return json.dumps({"event": "media", "sequence_number": str(seq), "stream_id": self.stream_id,
                           "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20),
                                     "payload": base64.b64encode(ulaw).decode()}})

    def played(self, name: str) -> str:
        return json.dumps({"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}})

    def audio_of(self, message: dict) -> bytes | None:
        if message.get("event") != "media":
            return None
        assert set(message) == {"event", "media"} and set(message["media"]) == {"payload"}, message
        return base64.b64decode(message["media"]["payload"])

    def mark_of(self, message: dict) -> str | None:
        return message["mark"]["name"] if message.get("event") == "mark" else None

    def closing(self) -> list[str]:
        return [json.dumps({"event": "stop", "sequence_number": "999", "stream_id": self.stream_id,
                            "stop": {"call_control_id": self.call_id}})]


class PlivoSide:
    """Plivo's <Stream bidirectional> frames; the token also rides in extra_headers, as Plivo echoes it."""

    name = "plivo"
    clear_event = "clearAudio"

    def __init__(self, stream_id: str, call_id: str, token: str = "") -> None:
        self.stream_id, self.call_id, self.token = stream_id, call_id, token

    def opening(self) -> list[str]:
        return [json.dumps({
            "event": "start", "sequenceNumber": 0, "streamId": self.stream_id,
            "extra_headers": extra_headers(token=self.token).replace(",", ";"),
            "start": {"callId": self.call_id, "streamId": self.stream_id, "accountId": "MA0000000000000000",
                      "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}})]

    def media(self, seq: int, ulaw: bytes) -> str:
        return json.dumps({"event": "media", "sequenceNumber": seq, "streamId": self.stream_id,
                           "media": {"track": "inbound", "timestamp": str(seq * 20), "chunk": seq,
                                     "payload": base64.b64encode(ulaw).decode()}})

    def played(self, name: str) -> str:
        return json.dumps({"event": "playedStream", "sequenceNumber": 0, "streamId": self.stream_id, "name": name})

    def audio_of(self, message: dict) -> bytes | None:
        if message.get("event") != "playAudio":
            return None
        media = message["media"]
        assert (media["contentType"], media["sampleRate"]) == ("audio/x-mulaw", 8000), message
        return base64.b64decode(media["payload"])

    def mark_of(self, message: dict) -> str | None:
        if message.get("event") != "checkpoint":
            return None
        assert message["streamId"] == self.stream_id, message
        return message["name"]

    def closing(self) -> list[str]:
        return []  # Plivo just closes the socket


class CarrierStream:
    """The carrier's end of one realtime stream: sends its frames, reads ours, echoes marks as played."""

    def __init__(self, ws, side) -> None:
        self.ws, self.side = ws, side
        self.seq = 1
        self.audio: list[bytes] = []
        self.events: list[str] = []
        self.marks: list[str] = []
        self.task = asyncio.ensure_future(self._read())

    async def open(self) -> None:
        for frame in self.side.opening():
            await self.ws.send(frame)

    async def say(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.seq += 1
            await self.ws.send(self.side.media(self.seq, frame))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.events.append(message.get("event"))
                audio = self.side.audio_of(message)
                if audio is not None:
                    self.audio.append(audio)
                name = self.side.mark_of(message)
                if name is not None:
                    self.marks.append(name)
                    await self.ws.send(self.side.played(name))  # played at once: what was sent was heard
        except ConnectionClosed:
            pass

    def heard(self) -> int:
        """Frames of model speech received (not the silence that keeps the line warm)."""
        return sum(1 for frame in self.audio if frame != SILENCE_FRAME)

    async def close(self) -> None:
        for frame in self.side.closing():
            try:
                await self.ws.send(frame)
            except ConnectionClosed:
                pass
        await self.ws.close()
        self.task.cancel()


# --- the carriers' fakes and the gateway ----------------------------------------------------------


@pytest.fixture
def model():
    fake = FakeOpenAIRealtime(script=Script(turns=[
        Turn(transcript="When do you open?", reply="We open at nine.", reply_ms=600),
        Turn(transcript="Tell me everything.", reply=LONG_REPLY, reply_ms=6000),
        Turn(transcript="Stop please.", reply="Okay.", reply_ms=300),
    ], instructed_reply=GREETING_REPLY))
    with fake:
        yield fake


def gateway_config(carrier: str, live_gateway: str, block: dict, model: FakeOpenAIRealtime) -> dict:
    return {
        "provider": carrier,
        "fromNumber": FROM,
        "publicUrl": f"{live_gateway}/voice/webhook",
        "inboundPolicy": "open",
        "inboundGreeting": GREETING,
        carrier: block,
        "realtime": {"enabled": True, "provider": "openai", "providers": {"openai": {
            "apiKey": model.api_key, "baseUrl": model.http_url, "silenceDurationMs": 300}}},
    }


@dataclass
class Ringing:
    """An inbound call the carrier's fake rang, and where the gateway pointed its stream."""

    call: Call
    provider_call_id: str
    url: str
    token: str
    fake: FakeTelnyx | FakePlivo


@pytest.fixture
def telnyx(live_gateway, configure, model):
    with FakeTelnyx(webhook_url=f"{live_gateway}/voice/webhook") as fake:
        loaded = configure(gateway_config("telnyx", live_gateway, carrier_block("telnyx", fake), model))
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        yield fake
        background.drain(10)
        assert not fake.errors


@pytest.fixture
def plivo(live_gateway, configure, model):
    with FakePlivo() as fake:
        loaded = configure(gateway_config("plivo", live_gateway, carrier_block("plivo", fake), model))
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        yield fake
        background.drain(10)
        assert not fake.errors


def ring_telnyx(fake: FakeTelnyx) -> Ringing:
    fake_call = fake.ring_inbound(CALLER, FROM)
    (answer,) = wait_until(lambda: fake.requests_to("POST", r"/actions/answer$"), "the answer command")
    body = answer.json
    assert (body["stream_track"], body["stream_codec"], body["stream_bidirectional_mode"],
            body["stream_bidirectional_codec"]) == ("inbound_track", "PCMU", "rtp", "PCMU"), body
    call = Call.objects.get(provider_call_id=fake_call.call_control_id)
    return Ringing(call, fake_call.call_control_id, body["stream_url"], body["stream_auth_token"], fake)


def ring_plivo(fake: FakePlivo, live_gateway: str) -> Ringing:
    fake_call = fake.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook",
                                  hangup_url=f"{live_gateway}/voice/webhook?flow=hangup")
    fake.wait_idle()
    (stream,) = fake_call.streams
    assert (stream["bidirectional"], stream["keepCallAlive"], stream["contentType"]) == (
        "true", "true", "audio/x-mulaw;rate=8000"), stream
    token = stream["url"].rsplit("/", 1)[1]
    assert stream["extraHeaders"] == f"token={header_value(token)}"
    call = Call.objects.get(provider_call_id=fake_call.call_uuid)
    return Ringing(call, fake_call.call_uuid, stream["url"], token, fake)


async def dial(live_gateway: str, url: str):
    """Open the stream URL the carrier was given, on the live gateway's socket."""
    host = urlsplit(live_gateway).netloc
    return await connect(f"ws://{host}{urlsplit(url).path}", open_timeout=5, close_timeout=1, compression=None)


async def close_code(ws) -> int | None:
    try:
        async with asyncio.timeout(5):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code


@sync_to_async
def lines_of(call: Call) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))


@sync_to_async
def events_of(call: Call, type: str) -> list[dict]:
    return list(CallEvent.objects.filter(call=call, type=type).order_by("pk").values_list("payload", flat=True))


async def a_whole_call(ringing: Ringing, side, live_gateway: str, model: FakeOpenAIRealtime) -> CarrierStream:
    """Greeting, an answered line, a barge-in over a long answer: asserts what every carrier shares."""
    call = ringing.call
    assert urlsplit(ringing.url).path == f"/voice/stream/realtime/{ringing.token}"
    assert urlsplit(ringing.url).scheme == "ws"
    stream = CarrierStream(await dial(live_gateway, ringing.url), side)
    await stream.open()

    # The greeting: asked for as the model's first turn, heard as the carrier's own frames.
    conn = await await_until(lambda: model.connections and model.last.responses and model.last,
                             "the model's first response")
    assert conn.instructions[0] == greeting_instructions(GREETING)
    greeting = conn.responses[0]
    await await_until(lambda: greeting.status == "completed", "the greeting to be generated")
    await await_until(lambda: stream.heard() >= greeting.audio_ms_sent // 20 - 1, "the greeting heard", timeout=10)
    assert all(len(frame) == FRAME_BYTES for frame in stream.audio)
    await await_until(lambda: stream.marks and stream.marks[-1].endswith("-end"), "the greeting's last mark")

    # A caller line, answered with audio.
    before = stream.heard()
    await stream.say(loud(400) + quiet(400))
    answer = await await_until(lambda: len(conn.responses) >= 2 and conn.responses[1], "the answer")
    await await_until(lambda: answer.status == "completed", "the answer to be generated")
    await await_until(lambda: stream.heard() - before >= 600 // 20 - 1, "the answer heard", timeout=10)

    # A long answer, interrupted: the carrier's buffer is cleared and the model truncated at the heard point.
    await await_until(lambda: stream.marks[-1].endswith("-end"), "the answer's last mark")
    before = stream.heard()
    await stream.say(loud(400) + quiet(400))
    await await_until(lambda: stream.heard() - before >= 25, "half a second of the long answer")
    assert side.clear_event not in stream.events
    await stream.say(loud(400) + quiet(400))
    await await_until(lambda: side.clear_event in stream.events, "the carrier's clear frame")
    truncation = await await_until(lambda: conn.truncations and conn.truncations[0], "the truncation")
    assert truncation["ok"] and 0 < truncation["audio_end_ms"] < 6000, truncation
    await await_until(lambda: len(conn.responses) >= 4 and conn.responses[3].status == "completed", "the last answer")

    # The records: both sides' words (the long answer cut to what was heard) and each turn's latency.
    async def lines_written():
        found = await lines_of(call)
        return found if len(found) >= 7 else None

    try:
        lines = await await_until(lines_written, "seven transcript lines", timeout=20)
    except AssertionError as exc:
        responses = [(r.cause, r.status, r.text[:20], r.audio_ms_sent) for r in conn.responses]
        raise AssertionError(f"{exc}: {await lines_of(call)} {responses} {conn.input_transcripts}") from None
    assert len(lines) == 7, lines
    # Each side in order (a line is stored once it is known, so the two sides may interleave late).
    assert [text for speaker, text in lines if speaker == "user"] == [
        "When do you open?", "Tell me everything.", "Stop please."], lines
    bot = [text for speaker, text in lines if speaker == "bot"]
    assert bot[:2] == [GREETING_REPLY, "We open at nine."] and bot[3] == "Okay.", lines
    cut = bot[2]  # the long answer as far as it was heard
    assert cut.startswith("word") and LONG_REPLY.startswith(cut) and cut != LONG_REPLY, lines
    turns = await await_until(lambda: _at_least(events_of(call, "realtime.turn"), 3), "three turns recorded")
    assert all(turn["latencyMs"] >= 0 for turn in turns)
    return stream


async def _at_least(found, n):
    found = await found
    return found if len(found) >= n else None


async def stream_closed(call: Call) -> MediaStream:
    closed = sync_to_async(lambda: MediaStream.objects.filter(call=call, closed_at__isnull=False).first())
    return await await_until(closed, "the stream's end recorded")


async def ended(call: Call) -> Call:
    async def check():
        fresh = await sync_to_async(Call.objects.get)(pk=call.pk)
        return fresh if fresh.is_terminal else None

    return await await_until(check, "the call to end")


# --- Telnyx ---------------------------------------------------------------------------------


async def test_a_telnyx_realtime_call(telnyx, model, live_gateway):
    ringing = await sync_to_async(ring_telnyx)(telnyx)
    side = TelnyxSide("32de0dea-53cb-4b21-89a4-9e1819c043bc", ringing.provider_call_id)
    stream = await a_whole_call(ringing, side, live_gateway, model)
    with pytest.raises(InvalidStatus):
        await dial(live_gateway, ringing.url)  # the token was used up by the upgrade
    await stream.close()
    row = await stream_closed(ringing.call)
    assert row.close_reason == "stop" and row.stats["frames_in"] > 0 and row.stats["barge_ins"] >= 1
    await sync_to_async(telnyx.hang_up)(ringing.provider_call_id)
    done = await ended(ringing.call)
    assert done.end_reason in ("hangup-user", "completed"), done.end_reason
    await await_until(lambda: model.last.closed_with is not None or model.last.ws.state.name == "CLOSED",
                      "the model session to close")


async def test_a_telnyx_start_for_another_call_is_refused(telnyx, model, live_gateway):
    ringing = await sync_to_async(ring_telnyx)(telnyx)
    ws = await dial(live_gateway, ringing.url)
    for frame in TelnyxSide("stream-x", "v3:" + secrets.token_urlsafe(20)).opening():
        await ws.send(frame)
    assert await close_code(ws) in (1008, 4008)
    assert not model.connections  # no model session for a refused stream
    # The same call's token cannot be tried again.
    with pytest.raises(InvalidStatus):
        await dial(live_gateway, ringing.url)


# --- Plivo ----------------------------------------------------------------------------------


async def test_a_plivo_realtime_call(plivo, model, live_gateway):
    ringing = await sync_to_async(ring_plivo)(plivo, live_gateway)
    side = PlivoSide("b1f9d6a2-0d6e-4c3a-9f5e-3c2d1e0f9a8b", ringing.provider_call_id, ringing.token)
    stream = await a_whole_call(ringing, side, live_gateway, model)
    with pytest.raises(InvalidStatus):
        await dial(live_gateway, ringing.url)
    await stream.close()
    row = await stream_closed(ringing.call)
    assert row.stats["frames_in"] > 0 and row.stats["barge_ins"] >= 1
    await sync_to_async(plivo.hang_up)(ringing.provider_call_id)
    await ended(ringing.call)


async def test_a_plivo_start_for_another_call_is_refused(plivo, model, live_gateway):
    ringing = await sync_to_async(ring_plivo)(plivo, live_gateway)
    ws = await dial(live_gateway, ringing.url)
    for frame in PlivoSide("stream-x", "0b7c9d2e-1f3a-4b5c-8d6e-7f8091a2b3c4", ringing.token).opening():
        await ws.send(frame)
    assert await close_code(ws) in (1008, 4008)
    assert not model.connections
    with pytest.raises(InvalidStatus):
        await dial(live_gateway, ringing.url)
