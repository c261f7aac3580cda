"""The media-stream WebSocket (calls/streams/media.py) through the real server (docs/compatibility.md, Media streams).

Daphne serves the real ASGI application on a loopback port (the `live_gateway` fixture); the tests
are carriers speaking Twilio's Media Streams protocol with real WebSocket clients. Daphne does not
forward close reasons, so the tests assert the close code the client sees and the reason the
gateway recorded on the MediaStream row.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from datetime import timedelta

import channels.consumer
import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls.clock import now
from calls.documents import stream_token
from calls.models import Call, CallEvent, MediaStream, TranscriptEntry
from calls.services import call_end, call_speak, deadlines_sweep
from calls.streams import commands
from calls.streams.limits import TOO_MANY_CONNECTIONS, TOO_MANY_PENDING, StreamLimits, limits
from calls.streams.consumer import client_ip, sanitize_reason
from calls.streams.media import MediaStreamConsumer
from calls.streams.stats import LatencyHistogram, StreamStats
from calls.simulator.rest import TwilioRestStub
from core.audio import FRAME_BYTES, SILENCE_FRAME
from tests.logs import ConsoleCapture, records_of
from tests.waiting import await_stays, await_until

ACCOUNT = "AC" + "1" * 32
TOKEN = "simulator-token"


# --- unit: admission counters ---------------------------------------------------------------------


CAPS = {"max_connections": 4, "max_pending": 3, "max_pending_per_ip": 2}


def test_limits_admit_counts_total_and_pending():
    state = StreamLimits()
    assert state.admit("10.0.0.1", **CAPS) is None
    assert state.admit("10.0.0.2", **CAPS) is None
    assert state.total == 2 and state.pending_total == 2
    assert state.pending == {"10.0.0.1": 1, "10.0.0.2": 1}


def test_limits_per_ip_pending_cap():
    state = StreamLimits()
    assert state.admit("10.0.0.1", **CAPS) is None
    assert state.admit("10.0.0.1", **CAPS) is None
    assert state.admit("10.0.0.1", **CAPS) == TOO_MANY_PENDING
    assert state.total == 2 and state.pending["10.0.0.1"] == 2  # a refusal counts nothing
    assert state.admit("10.0.0.2", **CAPS) is None  # another address is not affected


def test_limits_global_pending_cap():
    state = StreamLimits()
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert state.admit(ip, **CAPS) is None
    assert state.admit("10.0.0.4", **CAPS) == TOO_MANY_PENDING
    assert state.pending_total == 3


def test_limits_total_cap_counts_started_sockets_too():
    state = StreamLimits()
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        assert state.admit(ip, **{**CAPS, "max_pending": 10}) is None
        state.started(ip)
    assert state.pending_total == 0 and state.total == 4
    assert state.admit("10.0.0.5", **CAPS) == TOO_MANY_CONNECTIONS
    state.closed("10.0.0.1", was_pending=False)
    assert state.total == 3
    assert state.admit("10.0.0.5", **CAPS) is None


def test_limits_started_frees_the_pending_slot():
    state = StreamLimits()
    assert state.admit("10.0.0.1", **CAPS) is None
    assert state.admit("10.0.0.1", **CAPS) is None
    state.started("10.0.0.1")
    assert state.pending["10.0.0.1"] == 1 and state.total == 2
    assert state.admit("10.0.0.1", **CAPS) is None
    state.started("10.0.0.1")
    state.started("10.0.0.1")
    assert "10.0.0.1" not in state.pending  # the entry goes when it reaches zero
    assert state.total == 3


def test_limits_closed_pending_and_started():
    state = StreamLimits()
    state.admit("10.0.0.1", **CAPS)
    state.admit("10.0.0.1", **CAPS)
    state.started("10.0.0.1")
    state.closed("10.0.0.1", was_pending=False)  # the started one
    assert state.total == 1 and state.pending["10.0.0.1"] == 1
    state.closed("10.0.0.1", was_pending=True)  # the pending one
    assert state.total == 0 and state.pending_total == 0 and not state.pending
    state.closed("10.0.0.1", was_pending=True)  # never below zero
    assert state.total == 0 and state.pending_total == 0


# --- unit: stats ----------------------------------------------------------------------------------


def test_histogram_percentiles():
    histogram = LatencyHistogram()
    assert histogram.percentile(50) == 0.0 and histogram.summary() == {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0}
    for ms in range(1, 101):  # 1 .. 100 ms
        histogram.add(float(ms))
    assert histogram.total == 100
    assert histogram.percentile(50) == 50.5  # upper edge of the 0.5 ms bucket holding 50 ms
    assert histogram.percentile(99) == 99.5
    assert histogram.percentile(100) == 100.0  # capped at the real maximum
    assert histogram.percentile(0) == 1.5  # rank at least 1
    assert histogram.summary() == {"n": 100, "p50": 50.5, "p99": 99.5, "max": 100.0}


def test_histogram_edges():
    histogram = LatencyHistogram()
    histogram.add(-3.0)  # negative and zero land in the first bucket
    histogram.add(0.0)
    histogram.add(0.2)
    assert histogram.percentile(100) == 0.2 and histogram.counts[0] == 3
    histogram.add(5000.0)  # beyond 2 s: the last bucket, max kept exactly
    assert histogram.counts[-1] == 1
    assert histogram.max_ms == 5000.0
    assert histogram.percentile(100) == 2000.5
    many = LatencyHistogram()
    for _ in range(99):
        many.add(1.0)  # the bucket [1.0, 1.5)
    many.add(300.0)
    assert many.percentile(50) == 1.5 and many.percentile(99) == 1.5 and many.percentile(100) == 300.0


def test_stream_stats_drop_and_dict():
    stats = StreamStats()
    stats.drop("malformed")
    stats.drop("malformed")
    stats.drop("binary")
    stats.counters["frames_in"] += 5
    stats.pacing.add(1.2)
    data = stats.as_dict()
    assert data["dropped"] == 3 and data["dropped_malformed"] == 2 and data["dropped_binary"] == 1
    assert data["frames_in"] == 5
    assert data["pacingLateMs"]["n"] == 1 and data["inboundLagMs"]["n"] == 0
    json.dumps(data)  # stored in a JSONField


def test_sanitize_reason():
    assert sanitize_reason("bad\x00reason\nwith\tcontrol\x7f") == "bad reason with control "
    assert len(sanitize_reason("x" * 500)) == 120


def test_client_ip_trusts_forwarding_headers_only_from_trusted_proxies(configure):
    scope = {"client": ["10.0.0.9", 1234], "headers": [(b"x-forwarded-for", b"203.0.113.5, 10.0.0.8")]}
    assert client_ip(scope, configure({}).config) == "10.0.0.9"
    trusting = configure({"webhookSecurity": {"trustForwardingHeaders": True,
                                              "trustedProxyIPs": ["10.0.0.8", "10.0.0.9"]}}).config
    assert client_ip(scope, trusting) == "203.0.113.5"
    assert client_ip({"client": ["192.0.2.1", 1], "headers": scope["headers"]}, trusting) == "192.0.2.1"
    assert client_ip({"client": None, "headers": []}, trusting) == "unknown"


# --- the live gateway -----------------------------------------------------------------------------

# Daphne (the gateway's server, see calls/management/commands/gateway.py) sends WebSocket close frames
# through autobahn, whose sendClose() accepts only 1000 or 3000-4999 and raises for anything else. The
# reference's 1008/1009/1011/1013 therefore go out as their private-range twins 4000 + (code - 1000);
# the tests accept either. Regression guard: the consumer once passed 1008... straight to close(), which
# raised before _cleanup ran, so refused sockets stayed open (or got Daphne's 1011) and their admission
# slots, MediaStream rows and STT sessions leaked.


def spec_code(code: int) -> set[int]:
    return {code, 4000 + code - 1000}


class Gateway:
    """The live gateway under a streaming config; every client socket it opens is closed at the end."""

    def __init__(self, host: str, configure, live_gateway: str, rest_stub: TwilioRestStub) -> None:
        self.host = host
        self.configure = configure
        self.live_gateway = live_gateway
        self.rest_stub = rest_stub
        self.clients: list = []
        self.url = f"ws://{host}/voice/stream"

    def config(self, *, enabled: bool = True, serve: dict | None = None, **streaming) -> str:
        loaded = self.configure({
            "provider": "twilio",
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": self.rest_stub.base_url},
            "fromNumber": "+15550100000",
            "publicUrl": self.live_gateway,
            "streaming": {"enabled": enabled, "provider": "local", **streaming},
            "tts": {"provider": "local"},
            **({"serve": serve} if serve else {}),
        })
        assert not loaded.errors, loaded.errors
        return self.url

    async def dial(self, url: str | None = None):
        ws = await connect(url or self.url, open_timeout=5, close_timeout=1, max_size=2**21)
        self.clients.append(ws)
        return ws


@pytest.fixture
async def gateway(live_gateway, configure, rest_stub):
    await _settle_limits()
    gw = Gateway(live_gateway.split("://", 1)[1], configure, live_gateway, rest_stub)
    gw.config()
    yield gw
    await close_clients(gw)
    drained = await _settle_limits()
    # Let the gateway record this test's streams before the database is flushed.
    with contextlib.suppress(AssertionError):
        await await_until(sync_to_async(_streams_recorded), "every stream of the test recorded as closed", timeout=1.5)
    if not drained:
        pytest.fail("media stream admission slots leaked: limits did not return to zero after every socket closed")


async def close_clients(gw: Gateway) -> None:
    """Close every client socket a test opened (bounded: a dead peer must not hold the teardown)."""
    for ws in gw.clients:
        try:
            await asyncio.wait_for(ws.close(), 2)
        except Exception:
            pass


async def _settle_limits(timeout: float = 2.0) -> bool:
    """Wait for the process-wide admission counters to drain; True if they did. They are reset either
    way, so one leaking test cannot break later tests (or other files sharing the live gateway)."""
    with contextlib.suppress(AssertionError):
        await await_until(lambda: not (limits.total or limits.pending), "the admission counters to drain", timeout=timeout)
    drained = not (limits.total or limits.pending)
    limits.total = 0
    limits.pending.clear()
    return drained


def _streams_recorded() -> bool:
    return not MediaStream.objects.filter(closed_at__isnull=True).exists()


@pytest.fixture(scope="module")
def rest_stub():
    """Twilio's REST API for hang-ups; one per module (stopping it waits for its 0.5 s poll)."""
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@sync_to_async
def new_call(*, provider: str = "twilio", state: str = "answered") -> Call:
    return Call.objects.create(
        provider=provider, provider_call_id="CA" + secrets.token_hex(16), direction="inbound", state=state,
        from_number="+15550100001", to_number="+15550100000", mode="conversation",
    )


@sync_to_async
def fetch_call(call: Call) -> Call:
    return Call.objects.get(pk=call.pk)


@sync_to_async
def streams_of(call: Call) -> list[MediaStream]:
    return list(MediaStream.objects.filter(call=call).order_by("pk"))


@sync_to_async
def stream_row(stream_sid: str) -> MediaStream | None:
    return MediaStream.objects.filter(stream_id=stream_sid).first()


@sync_to_async
def bot_lines(call: Call) -> list[str]:
    return list(TranscriptEntry.objects.filter(call=call, speaker="bot").values_list("text", flat=True))


@sync_to_async
def _terminal(call: Call) -> Call | None:
    fresh = Call.objects.get(pk=call.pk)
    return fresh if fresh.is_terminal else None


async def closed_row(stream_sid: str, timeout: float = 5.0) -> MediaStream:
    """The stream's row once the gateway recorded its end (closed_at and the final stats)."""

    async def closed():
        row = await stream_row(stream_sid)
        return row if row is not None and row.closed_at is not None and "pacingLateMs" in row.stats else None

    return await await_until(closed, f"stream {stream_sid} recorded as closed", timeout=timeout)


def new_sid() -> str:
    return "MZ" + secrets.token_hex(16)


def start_frame(call: Call | None, stream_sid: str, *, token: str | None = "valid", call_sid: str | None = "call",
                encoding: str = "audio/x-mulaw", rate: int = 8000) -> str:
    if token == "valid":
        token = stream_token(str(call.pk))
    if call_sid == "call":
        call_sid = call.provider_call_id
    start = {"accountSid": ACCOUNT, "streamSid": stream_sid, "tracks": ["inbound"],
             "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1},
             "customParameters": {"token": token} if token is not None else {}}
    if call_sid is not None:
        start["callSid"] = call_sid
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start})


def media_frame(stream_sid: str, payload: bytes = SILENCE_FRAME, sequence: int = 2, **media) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(sequence), "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": str(sequence - 1), "timestamp": str(sequence * 20),
                                 "payload": base64.b64encode(payload).decode(), **media}})


def stop_frame(stream_sid: str, call: Call) -> str:
    return json.dumps({"event": "stop", "sequenceNumber": "9", "streamSid": stream_sid,
                       "stop": {"accountSid": ACCOUNT, "callSid": call.provider_call_id}})


async def close_code(ws, timeout: float = 3.0) -> int | None:
    """Read until the gateway closes the socket; the close code it sent (None: no close frame).

    Raises TimeoutError when the gateway keeps the socket open.
    """
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def stays_open(ws, seconds: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    except ConnectionClosed:
        return False
    return True


async def _joined(call: Call) -> bool:
    return await _group_size(call) >= 1


async def _group_size(call: Call) -> int:
    """Members of the call's group, in the in-memory layer or in Redis (distributed mode)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group = commands.call_group(str(call.pk))
    if hasattr(layer, "groups"):
        return len(layer.groups.get(group, {}))
    connection = layer.connection(layer.consistent_hash(group))
    return await connection.zcard(layer._group_key(group))


async def open_stream(gw: Gateway, call: Call, stream_sid: str | None = None, url: str | None = None):
    """Connect, send connected + a valid start, and wait until the stream is registered and listening."""
    stream_sid = stream_sid or new_sid()
    ws = await gw.dial(url)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(start_frame(call, stream_sid))
    await await_until(lambda: stream_row(stream_sid))
    await await_until(lambda: _joined(call))  # joined the call's group: commands reach it
    return ws, stream_sid


class Listener:
    """Reads a stream's outbound frames in the background; may echo marks like Twilio."""

    def __init__(self, ws, *, echo: bool) -> None:
        self.ws = ws
        self.echo = echo
        self.frames: list[tuple[float, dict]] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.frames.append((time.monotonic(), message))
                if self.echo and message.get("event") == "mark":
                    await self.ws.send(json.dumps({"event": "mark", "sequenceNumber": "0",
                                                   "streamSid": message["streamSid"], "mark": message["mark"]}))
        except ConnectionClosed:
            pass

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.frames]

    def payloads(self) -> list[bytes]:
        return [base64.b64decode(m["media"]["payload"]) for _, m in self.frames if m["event"] == "media"]

    def audio(self) -> list[bytes]:
        return [p for p in self.payloads() if p != SILENCE_FRAME]

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for _, m in self.frames if m["event"] == "mark"]

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


live = pytest.mark.django_db(transaction=True)


# --- connection handling (§4.1) ------------------------------------------------------------------


@live
@pytest.mark.parametrize("path", ["/voice/other", "/", "/voice/stream/more", "/voice"])
async def test_a_wrong_path_is_refused_before_the_upgrade(gateway, path):
    with pytest.raises(InvalidStatus) as refused:
        await gateway.dial(gateway.url.replace("/voice/stream", path))
    assert refused.value.response.status_code == 403
    assert limits.total == 0


@live
async def test_the_stream_path_with_a_trailing_slash_is_the_stream(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call, url=gateway.url + "/")
    assert (await stream_row(sid)).closed_at is None
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000


@live
async def test_streams_are_refused_when_streaming_is_disabled(gateway):
    gateway.config(enabled=False)
    with pytest.raises(InvalidStatus) as refused:
        await gateway.dial()
    assert refused.value.response.status_code == 403
    assert limits.total == 0


@live
async def test_no_start_within_the_pre_start_timeout_closes_1008(gateway):
    gateway.config(preStartTimeoutMs=300)
    opened = time.monotonic()
    ws = await gateway.dial()
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send("garbage is dropped, it does not count as a start")
    assert await close_code(ws, timeout=1.5) in spec_code(1008)
    assert 0.25 < time.monotonic() - opened < 2.0
    await await_until(lambda: limits.total == 0, timeout=1)


@live
async def test_the_pre_start_timer_does_not_fire_once_started(gateway):
    gateway.config(preStartTimeoutMs=300)
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    assert await stays_open(ws, 0.6)
    assert (await stream_row(sid)).closed_at is None
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000


@live
async def test_the_streams_log_lines_name_its_call(gateway):
    call = await new_call()
    with ConsoleCapture() as console:
        ws, sid = await open_stream(gateway, call)
        await ws.send(stop_frame(sid, call))
        assert await close_code(ws) == 1000

        def line(start: str) -> dict | None:
            return next((r for r in console.records if r["message"].startswith(start)), None)

        started = await await_until(lambda: line(f"media stream {sid} started"))
        closing = await await_until(lambda: line(f"media stream {sid} closing"))
    assert started["call_id"] == closing["call_id"] == str(call.pk)
    assert started["logger"].startswith("calls.")


@live
async def test_start_with_a_bad_token_is_refused_without_a_stream(gateway):
    call = await new_call()
    for token in ("not-the-token", None, stream_token("some-other-call")):
        ws = await gateway.dial()
        await ws.send(start_frame(call, new_sid(), token=token))
        assert await close_code(ws) in spec_code(1008), token
    assert await streams_of(call) == []
    assert (await fetch_call(call)).stream_grace_deadline is None


@live
async def test_the_token_may_come_in_the_query_string(gateway):
    call = await new_call()
    sid = new_sid()
    ws = await gateway.dial(f"{gateway.url}?token={stream_token(str(call.pk))}")
    await ws.send(start_frame(call, sid, token=None))
    await await_until(lambda: stream_row(sid))
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000


@live
async def test_start_without_call_sid_is_refused(gateway):
    call = await new_call()
    ws = await gateway.dial()
    await ws.send(start_frame(call, new_sid(), call_sid=None))
    assert await close_code(ws) in spec_code(1008)
    assert await streams_of(call) == []


@live
async def test_start_for_an_unknown_ended_or_foreign_call_is_refused(gateway):
    ended = await new_call(state="completed")
    foreign = await new_call(provider="telnyx")
    unknown = Call(provider_call_id="CA" + "0" * 32)
    for call, token in ((ended, "valid"), (foreign, "valid"), (unknown, "whatever")):
        ws = await gateway.dial()
        await ws.send(start_frame(call, new_sid(), token=token))
        assert await close_code(ws) in spec_code(1008)
    assert await streams_of(ended) == [] and await streams_of(foreign) == []


@live
async def test_refused_sockets_release_their_admission_slots(gateway):
    gateway.config(maxPendingConnectionsPerIp=2)
    call = await new_call()
    for frame in (start_frame(call, new_sid(), token="nope"), start_frame(call, new_sid(), call_sid=None),
                  start_frame(call, new_sid(), call_sid="CA" + "9" * 32)):
        for _ in range(3):  # more refusals than the per-IP pending cap: a leaked slot would show
            ws = await gateway.dial()
            await ws.send(frame)
            assert await close_code(ws) in spec_code(1008)
    await await_until(lambda: limits.total == 0 and not limits.pending, timeout=2)
    ws, sid = await open_stream(gateway, call)  # the address is not locked out
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000


@live
async def test_a_duplicate_start_closes_1008_records_it_and_starts_the_grace(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    await ws.send(start_frame(call, sid))
    assert await close_code(ws) in spec_code(1008)
    row = await closed_row(sid, timeout=2)
    assert row.close_reason == "Duplicate start"
    assert (await fetch_call(call)).stream_grace_deadline is not None


@live
async def test_a_duplicate_start_does_not_open_a_second_stream(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    await ws.send(start_frame(call, sid))
    assert await close_code(ws) in spec_code(1008)
    assert len(await streams_of(call)) == 1


@live
async def test_a_valid_start_opens_the_stream_and_stop_starts_the_grace(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    row = await stream_row(sid)
    assert row.closed_at is None and row.carrier == "twilio" and row.call_id == call.pk
    assert limits.total == 1 and not limits.pending  # started: no longer pending
    await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=2))
    await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=3))
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    row = await closed_row(sid)
    assert row.close_reason == "stop"
    assert row.stats["frames_in"] == 2
    assert row.stats.get("dropped", 0) == 0
    refreshed = await fetch_call(call)
    assert refreshed.stream_grace_deadline is not None
    grace = (refreshed.stream_grace_deadline - row.closed_at).total_seconds()
    assert 1.9 <= grace <= 2.5, grace  # docs/compatibility.md, Media streams: 2000 ms
    assert not refreshed.is_terminal  # not ended yet
    await await_until(lambda: limits.total == 0, timeout=2)


@live
async def test_media_frames_do_not_hop_to_the_shared_sync_thread(gateway, monkeypatch):
    """Channels closes stale connections on the shared sync thread before every message; the media
    consumer's database work runs on its own worker threads, so 50 frames a second need no hop."""
    hops = []
    real = channels.consumer.aclose_old_connections

    async def counting():
        hops.append(1)
        return await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    for sequence in range(2, 52):
        await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=sequence))
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    assert (await closed_row(sid)).stats["frames_in"] == 50
    assert hops == []


@live
async def test_a_reconnect_within_the_grace_clears_it(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    await closed_row(sid)
    assert (await fetch_call(call)).stream_grace_deadline is not None
    second, second_sid = await open_stream(gateway, call)
    assert (await fetch_call(call)).stream_grace_deadline is None
    assert (await stream_row(second_sid)).closed_at is None
    # the sweep that would have ended the call after the grace finds nothing to do
    assert await sync_to_async(deadlines_sweep)(at=now() + timedelta(seconds=3)) == 0
    assert not (await fetch_call(call)).is_terminal


@live
async def test_a_newer_stream_replaces_the_open_one(gateway):
    call = await new_call()
    old, old_sid = await open_stream(gateway, call)
    new, new_sid_ = await open_stream(gateway, call)
    assert await close_code(old) == 1000
    old_row = await closed_row(old_sid)
    assert old_row.close_reason == "replaced"
    # Only the current stream starts the grace: the replaced one's cleanup must not, nor close the new row.
    async def new_stream_untouched() -> bool:
        return (await stream_row(new_sid_)).closed_at is None and (await fetch_call(call)).stream_grace_deadline is None

    await await_stays(new_stream_untouched, "the new stream open and no grace started", seconds=0.3)
    assert await stays_open(new, 0.2)


# --- malformed input (never fatal) ---------------------------------------------------------------


@live
async def test_malformed_frames_are_dropped_counted_and_not_fatal(gateway):
    call = await new_call()
    sid = new_sid()
    ws = await gateway.dial()
    for bad in (
        "this is not json",
        "[1, 2, 3]",
        json.dumps({"event": "bogus"}),
        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "@@not base64@@"}}),
        start_frame(call, sid, encoding="audio/x-l16"),  # a wrong codec at start is a malformed frame
        start_frame(call, sid, rate=16000),
    ):
        await ws.send(bad)
    await ws.send(media_frame(sid))  # valid, but before start
    await ws.send(b"\x00\x01binary")
    assert await stays_open(ws, 0.3)
    assert await stream_row(sid) is None  # the refused codecs did not start the stream
    assert limits.pending.get("127.0.0.1") == 1  # still pending
    # a valid start still works on the same socket
    await ws.send(start_frame(call, sid))
    await await_until(lambda: stream_row(sid))
    await ws.send(media_frame(sid, b"", sequence=3))  # no audio
    await ws.send(media_frame(sid, sequence=4, track="outbound"))  # another track: ignored
    await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "never-sent"}}))
    await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=5))
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    stats = (await closed_row(sid)).stats
    assert stats["dropped_malformed"] == 6
    assert stats["dropped_before_start"] == 1
    assert stats["dropped_binary"] == 1
    assert stats["dropped_empty"] == 1
    assert stats["dropped"] == 9
    assert stats["ignored"] == 1
    assert stats["marks_unknown"] == 1
    assert stats["frames_in"] == 1


@live
async def test_an_oversized_message_closes_1009_and_is_recorded(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    huge = json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "A" * (64 * 1024)}})
    assert len(huge) > 64 * 1024
    await ws.send(huge)
    assert await close_code(ws) in spec_code(1009)
    row = await closed_row(sid, timeout=2)
    assert row.close_reason == "Message too big"
    assert row.stats["dropped_oversized"] == 1


@live
async def test_a_message_of_exactly_64_kib_is_accepted(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    frame = media_frame(sid, b"\x10" * FRAME_BYTES)
    frame = frame[:-1] + " " * (64 * 1024 - len(frame)) + "}"
    assert len(frame) == 64 * 1024
    json.loads(frame)
    await ws.send(frame)
    assert await stays_open(ws, 0.3)
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    assert (await closed_row(sid)).stats["frames_in"] == 1


@live
async def test_unsafe_json_frames_are_dropped_with_their_reason_and_the_stream_goes_on(gateway, caplog):
    """A 20,000-deep frame never reaches the recursive parser; a lone surrogate or NaN never reaches the database."""
    caplog.set_level(logging.INFO, logger="calls.streams.media")
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    await ws.send("[" * 20_000 + "]" * 20_000)  # 40 kB: under the message cap
    await ws.send(json.dumps({"event": "dtmf", "streamSid": sid, "dtmf": {"digit": "\ud83d"}}))  # sent as the escape
    await ws.send('{"event": "media", "streamSid": "%s", "sequenceNumber": NaN}' % sid)
    await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=2))
    assert await stays_open(ws, 0.3)
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    row = await closed_row(sid)
    assert row.close_reason == "stop"
    assert row.stats["dropped_malformed"] == 3 and row.stats["frames_in"] == 1
    logged = [r.getMessage() for r in records_of(caplog, "calls.streams.media")]
    for reason in ("nesting deeper than 64 levels", "lone surrogate U+D83D at $.dtmf.digit", "non-finite number NaN"):
        assert sum(reason in line for line in logged) == 1, (reason, logged)


@live
async def test_a_failing_handler_closes_1011_records_the_stream_and_the_call_ends_after_the_grace(
        gateway, rest_stub, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="calls.streams")
    call = await new_call(state="listening")
    rest_stub.status[call.provider_call_id] = "in-progress"
    real = MediaStreamConsumer._caller_audio

    def fails_on_0x66(self, frame):
        if frame.payload[:1] == b"\x66":
            raise RuntimeError("injected failure")
        real(self, frame)

    monkeypatch.setattr(MediaStreamConsumer, "_caller_audio", fails_on_0x66)
    ws, sid = await open_stream(gateway, call)
    await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=2))
    await ws.send(media_frame(sid, b"\x66" * FRAME_BYTES, sequence=3))
    assert await close_code(ws) in spec_code(1011)
    row = await closed_row(sid)
    assert row.close_reason == "Internal error"
    assert row.stats["frames_in"] == 2  # what the stream did before the failure is kept
    assert [r.exc_info[1].args for r in records_of(caplog, "calls.streams") if r.exc_info] == [("injected failure",)]
    await await_until(lambda: limits.total == 0, "the admission slot released", timeout=2)
    assert (await fetch_call(call)).stream_grace_deadline is not None  # the grace runs, as after any lost stream
    sweep = sync_to_async(deadlines_sweep, thread_sensitive=False)
    assert await sweep(at=now() + timedelta(seconds=3)) == 1
    ended = await await_until(lambda: _terminal(call), timeout=5)
    assert ended.end_reason == "hangup-bot"
    assert rest_stub.status[call.provider_call_id] == "completed"


# --- caps ---------------------------------------------------------------------------------------


@live
async def test_pending_cap_per_ip_and_a_started_socket_is_not_pending(gateway):
    gateway.config(maxPendingConnectionsPerIp=2)
    first = await gateway.dial()
    second = await gateway.dial()
    third = await gateway.dial()  # accepted, then closed: too many pending from 127.0.0.1
    assert await close_code(third) in spec_code(1013)
    assert await stays_open(first, 0.1) and await stays_open(second, 0.1)
    assert limits.pending.get("127.0.0.1") == 2 and limits.total == 2
    # first starts: it no longer counts as pending, so one more pending socket fits
    call = await new_call()
    sid = new_sid()
    await first.send(start_frame(call, sid))
    await await_until(lambda: stream_row(sid))
    await await_until(lambda: limits.pending.get("127.0.0.1") == 1, timeout=2)
    fourth = await gateway.dial()
    assert await stays_open(fourth, 0.3)
    fifth = await gateway.dial()
    assert await close_code(fifth) in spec_code(1013)
    assert limits.pending.get("127.0.0.1") == 2 and limits.total == 3


@live
async def test_global_pending_cap(gateway):
    gateway.config(maxPendingConnections=2, maxPendingConnectionsPerIp=4)
    sockets = [await gateway.dial() for _ in range(2)]
    extra = await gateway.dial()
    assert await close_code(extra) in spec_code(1013)
    for ws in sockets:
        assert await stays_open(ws, 0.1)
    assert limits.total == 2


@live
async def test_total_cap_refuses_at_the_handshake(gateway):
    gateway.config(maxConnections=2)
    call = await new_call()
    await open_stream(gateway, call)  # started sockets count too
    pending = await gateway.dial()
    with pytest.raises(InvalidStatus) as refused:
        await gateway.dial()
    # docs/compatibility.md, Media streams answers 503; Daphne refuses any upgrade the application closes with 403
    assert refused.value.response.status_code in (403, 503)
    assert limits.total == 2
    await pending.close()
    await await_until(lambda: limits.total == 1, timeout=2)
    again = await gateway.dial()  # the slot is free again
    assert await stays_open(again, 0.2)


@live
async def test_a_transcription_failure_closes_1011(gateway):
    gateway.config(provider="openai")  # no API key: the session cannot be created
    call = await new_call()
    sid = new_sid()
    ws = await gateway.dial()
    await ws.send(start_frame(call, sid))
    assert await close_code(ws, timeout=1.5) in spec_code(1011)
    assert (await closed_row(sid, timeout=2)).close_reason == "STT connection failed"


# --- playback through the stream ---------------------------------------------------------------


@live
async def test_call_speak_plays_on_the_stream_and_records_what_was_played(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    listener = Listener(ws, echo=True)
    speak = sync_to_async(call_speak, thread_sensitive=False)
    outcome = await asyncio.wait_for(speak(call_id=str(call.pk), text="Hello there."), 20)
    assert outcome == "played"
    assert all(m["streamSid"] == sid for _, m in listener.frames)
    assert all(len(p) == FRAME_BYTES for p in listener.payloads())
    assert len(listener.audio()) >= 15  # "Hello there." is most of a second of speech
    marks = listener.marks()
    assert marks and marks[-1].endswith("-end")
    assert listener.events()[-1] == "mark"  # the end mark follows the last media frame
    assert await bot_lines(call) == ["Hello there."]
    assert (await fetch_call(call)).state == "listening"
    await listener.stop()
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    stats = (await closed_row(sid)).stats
    assert stats["marks_sent"] == len(marks) and stats["marks_acked"] == len(marks)
    # every synthesized frame is counted (a frame of digital silence too); the pre-roll is not
    assert len(listener.audio()) <= stats["frames_out"] <= len(listener.payloads()) - 1
    assert stats["pacingLateMs"]["n"] == stats["frames_out"]


@live
async def test_stream_clear_from_the_channel_layer_sends_clear(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    listener = Listener(ws, echo=False)  # no echoes: nothing counts as heard
    speak = asyncio.ensure_future(sync_to_async(call_speak, thread_sensitive=False)(
        call_id=str(call.pk), text="Hello there, this sentence is long enough to be cut off."))
    await await_until(lambda: len(listener.audio()) >= 5, timeout=20)
    sent = await sync_to_async(commands.stream_send, thread_sensitive=False)(str(call.pk), {"type": "stream.clear"})
    assert sent is True
    await await_until(lambda: "clear" in listener.events(), timeout=3)
    outcome = await asyncio.wait_for(speak, 10)
    assert outcome == "skipped"
    # Nothing of the cleared speech follows, and no second clear.
    def one_clear_and_no_media_after() -> bool:
        events = listener.events()
        return events.count("clear") == 1 and "media" not in events[events.index("clear") + 1:]

    await await_stays(one_clear_and_no_media_after, seconds=0.2)
    assert {"event": "clear", "streamSid": sid} in [m for _, m in listener.frames]
    assert await bot_lines(call) == []
    assert (await fetch_call(call)).state == "listening"
    await listener.stop()


@live
async def test_call_speak_without_a_stream_reply_fails_fast(gateway, monkeypatch):
    """A MediaStream row whose consumer is gone: the speak is not accepted and reports it."""
    monkeypatch.setattr(commands, "ACCEPT_TIMEOUT", 0.5)
    call = await new_call()
    await sync_to_async(MediaStream.objects.create)(call=call, stream_id=new_sid(), carrier="twilio")
    from core.errors import CarrierError

    started = time.monotonic()
    with pytest.raises(CarrierError, match="media stream not reachable"):
        await sync_to_async(call_speak, thread_sensitive=False)(call_id=str(call.pk), text="Anyone there?")
    assert time.monotonic() - started < 3
    assert (await fetch_call(call)).state == "listening"
    await sync_to_async(MediaStream.objects.filter(call=call).update)(closed_at=now())


@live
async def test_call_end_closes_the_stream(gateway, rest_stub):
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid = await open_stream(gateway, call)
    await sync_to_async(call_end, thread_sensitive=False)(call_id=str(call.pk))
    assert await close_code(ws) == 1000
    row = await closed_row(sid)
    assert row.close_reason == "call ended"
    ended = await fetch_call(call)
    assert ended.end_reason == "hangup-bot" and ended.is_terminal
    assert ended.stream_grace_deadline is None  # an ended call has no grace to run
    assert rest_stub.status[call.provider_call_id] == "completed"


@live
async def test_disconnect_without_reconnect_ends_the_call_after_the_grace(gateway, rest_stub):
    call = await new_call()
    rest_stub.status[call.provider_call_id] = "in-progress"
    ws, sid = await open_stream(gateway, call)
    await ws.close()  # the carrier's socket drops, without a stop frame
    row = await closed_row(sid)
    assert row.close_reason.startswith("disconnected")
    assert (await fetch_call(call)).stream_grace_deadline is not None
    sweep = sync_to_async(deadlines_sweep, thread_sensitive=False)
    assert await sweep(at=now() + timedelta(milliseconds=500)) == 0  # still within the grace
    assert not (await fetch_call(call)).is_terminal
    assert await sweep(at=now() + timedelta(seconds=3)) == 1
    ended = await await_until(lambda: _terminal(call), timeout=5)
    assert ended.end_reason == "hangup-bot"
    assert ended.stream_grace_deadline is None
    assert rest_stub.status[call.provider_call_id] == "completed"


@live
async def test_dtmf_on_the_stream_is_recorded(gateway):
    call = await new_call()
    ws, sid = await open_stream(gateway, call)
    await ws.send(json.dumps({"event": "dtmf", "streamSid": sid, "sequenceNumber": "5",
                              "dtmf": {"track": "inbound_track", "digit": "7"}}))

    @sync_to_async
    def dtmf_events():
        return list(CallEvent.objects.filter(call=call, type="call.dtmf").values_list("payload", flat=True))

    events = await await_until(dtmf_events, timeout=5)
    assert "7" in json.dumps(events)
    await ws.send(stop_frame(sid, call))
    assert await close_code(ws) == 1000
    assert (await closed_row(sid)).stats["dtmf"] == 1


class MuteProvider:
    """A speech provider's WebSocket that accepts the upgrade, then reads and never answers again: not even
    the close handshake (a provider that hung, or a network path that went dark)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0  # bytes after the upgrade
        self.sockets: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import hashlib
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    def _swallow(self, conn) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def stop(self) -> None:
        self.listener.close()
        for conn in self.sockets:
            conn.close()


def _stream_applications() -> set:
    """The live gateway's application tasks of /voice/stream connections."""
    from tests.live_gateway import _server

    return {details["application_instance"] for protocol, details in list(_server.connections.items())
            if getattr(protocol, "path", None) == b"/voice/stream" and "application_instance" in details}


@live
async def test_a_vanished_carrier_with_a_hung_provider_still_lets_the_stream_finish_in_time(gateway):
    """The carrier's socket drops without a close while the speech provider answers nothing, not even
    its close: the stream's consumer still finishes, well within Daphne's application_close_timeout
    (10 s, after which Daphne kills it and the stream's end would go unrecorded)."""
    provider = MuteProvider()
    try:
        gateway.config(provider="deepgram", providers={"deepgram": {"apiKey": "dg-mute",
                                                                    "baseUrl": f"http://127.0.0.1:{provider.port}"}})
        before = _stream_applications()
        call = await new_call()
        ws, sid = await open_stream(gateway, call)
        (application,) = _stream_applications() - before
        for sequence in range(2, 40):  # the provider receives audio: transcription is up
            await ws.send(media_frame(sid, sequence=sequence))
        await await_until(lambda: provider.received > 0, "audio to reach the provider")
        ws.transport.abort()  # gone: no close frame, no FIN handshake to wait for
        await await_until(application.done, "the stream's consumer to finish", timeout=8)
        assert not application.cancelled()  # it finished by itself, not killed by Daphne
        row = await closed_row(sid)
        assert row.close_reason.startswith("disconnected")
    finally:
        provider.stop()


@live
async def test_open_streams_do_not_count_against_the_http_connection_cap(gateway):
    """A WebSocket stops counting as an HTTP connection of its address once upgraded: the streams have caps of their own."""
    import httpx

    gateway.config(serve={"maxConnectionsPerIp": 2})
    for _ in range(3):
        await open_stream(gateway, await new_call())
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{gateway.live_gateway}/voice/hold-music")).status_code == 200
