"""The media-stream WebSocket consumer (docs/compatibility.md, Media streams): carrier audio in, transcription, paced TTS out.

One consumer per carrier WebSocket. Until a valid `start` it is "pending" and counted against
the caps; `start` authenticates it with the call's stream token and joins the call's group, so
speak / clear / close commands from any process reach it. Inbound audio goes to the call's
transcription session; speech from the caller clears the playback queue (barge-in) and final
transcripts go to the call services. A malformed frame is dropped and counted, never fatal.

Handlers never wait on work that may itself wait for this consumer (a speak command needs this
consumer's message loop), so service calls that can lead to speech run as separate tasks.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from providers.carriers.media import (
    FrameError,
    StreamCleared,
    StreamConnected,
    StreamDtmf,
    StreamMark,
    StreamMedia,
    StreamOther,
    StreamStart,
    StreamStop,
)
from providers.carriers.public_url import ip_in, normalize_ip
from providers.transcription.base import TranscriptionError

from ..gateway import get_gateway
from ..runtime import get_runtime
from .. import services
from ..speech import transcription_provider, tts_chain
from . import commands
from .limits import TOO_MANY_CONNECTIONS, limits
from .playback import Playback, PlaybackQueueFull, PlaybackResult
from .stats import StreamStats

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SEND_BUFFER = 1024 * 1024
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1013
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_reason(reason: str) -> str:
    """Close reasons are logged: no control characters, at most 120 characters."""
    return _CONTROL.sub(" ", reason)[:120]


def wire_close_code(code: int) -> int:
    """The close code as sent: Daphne's WebSocket library sends only 1000 and 3000–4999, so the
    reference's 1008/1009/1011/1013 go out as their private-range twins 4008/4009/4011/4013."""
    return code if code == CLOSE_NORMAL or 3000 <= code <= 4999 else 4000 + code - 1000


def _service(func):
    """A sync service on a worker thread (not the shared one: a service may wait on a playback)."""
    return database_sync_to_async(func, thread_sensitive=False)


def client_ip(scope: dict, config) -> str:
    """The socket's peer, or the first untrusted X-Forwarded-For hop when the peer is a trusted proxy."""
    peer = normalize_ip((scope.get("client") or [None])[0]) or "unknown"
    security = config.webhook_security
    if not (security.trust_forwarding_headers and ip_in(peer, security.trusted_proxy_ips)):
        return peer
    headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope.get("headers", [])}
    hops = [normalize_ip(h.strip()) for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop and not ip_in(hop, security.trusted_proxy_ips):
            return hop
    return normalize_ip(headers.get("x-real-ip", "").strip()) or peer


def send_backlog(send) -> int:
    """Bytes waiting in the server's socket buffer for this connection (Daphne/Twisted), else 0."""
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return 0
    try:
        return len(transport.dataBuffer) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
    except (AttributeError, TypeError):
        return 0


class MediaStreamConsumer(AsyncWebsocketConsumer):
    """One carrier media WebSocket."""

    groups: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        """Channels' consumer loop, made for 50 messages a second.

        Channels waits for the next message from the socket or the channel layer with a fresh
        task and an `asyncio.wait` per message. Here one long-lived reader per source feeds
        `dispatch`, and a lock keeps handlers one at a time, as Channels does.
        """
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            sources.append(functools.partial(self.channel_layer.receive, self.channel_name))
        one_at_a_time = asyncio.Lock()

        async def read(source) -> None:
            while True:
                message = await source()
                async with one_at_a_time:
                    await self.dispatch(message)

        readers = [asyncio.ensure_future(read(source)) for source in sources]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for reader in done:
                if not reader.cancelled() and not isinstance(reader.exception(), StopConsumer):
                    reader.result()  # a handler's error ends the consumer, as in Channels
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def dispatch(self, message) -> None:
        """Channels' dispatch, without its hop to the shared sync thread before every message.

        That hop closes stale database connections of the shared thread, which this consumer never
        uses: every database call here runs through `_service`, whose worker thread closes its own.
        Made 50 times a second per call, it is a thread round trip per frame for nothing.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- connection ----------------------------------------------------------------------

    async def websocket_connect(self, message) -> None:
        self.stats = StreamStats()
        self.started = False
        self.closing = False
        self.call = None
        self.playback: Playback | None = None
        self.stt = None
        self.group: str | None = None
        self.tasks: set[asyncio.Task] = set()
        self.reports: set[asyncio.Task] = set()
        self.admitted = False
        self.close_reason = "disconnected"
        self.transcripts = 0
        self.utterance_open = False  # between the caller starting to talk and the final transcript
        self.inbound_origin: tuple[float, int] | None = None
        try:
            # Building the runtime (a new config in force) makes the carrier's HTTP client: a worker thread's job.
            runtime = get_gateway().current_runtime() or await asyncio.to_thread(get_runtime)
        except Exception as exc:
            log.warning("media stream refused: %s", exc)
            await self.close()
            return
        self.config = runtime.config
        self.codec_class = runtime.carrier.media_codec
        if not (self.config.streaming.enabled and self.codec_class is not None):
            log.warning("media stream refused: streaming is not enabled for carrier %s", runtime.carrier.name)
            await self.close()
            return
        self.codec = self.codec_class()
        self.ip = client_ip(self.scope, self.config)
        streaming = self.config.streaming
        refusal = limits.admit(
            self.ip, max_connections=streaming.max_connections, max_pending=streaming.max_pending_connections,
            max_pending_per_ip=streaming.max_pending_connections_per_ip,
        )
        if refusal == TOO_MANY_CONNECTIONS:
            log.warning("media stream from %s refused: %s", self.ip, refusal)
            await self.close()  # before accept: the upgrade is refused with an HTTP error
            return
        await self.accept()
        if refusal:
            log.warning("media stream from %s closed: %s", self.ip, refusal)
            await self._close(CLOSE_TRY_LATER, refusal)
            return
        self.admitted = True
        get_gateway().bind_loop(asyncio.get_running_loop())
        self._spawn(self._start_timeout(streaming.pre_start_timeout_ms / 1000))

    async def _start_timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.started and not self.closing:
            await self._close(CLOSE_POLICY, "Start timeout")

    async def websocket_disconnect(self, message) -> None:
        await self._cleanup(f"disconnected ({message.get('code', 'no code')})")
        await super().websocket_disconnect(message)

    async def _close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = sanitize_reason(reason)
        log.info("media stream %s closing: %s %s", getattr(self, "stream_id", "-"), code, self.close_reason)
        try:
            await self.close(code=wire_close_code(code), reason=self.close_reason)
        except Exception as exc:
            log.info("closing media stream socket failed: %s", exc)
        finally:
            await self._cleanup(self.close_reason)

    async def _cleanup(self, reason: str) -> None:
        if getattr(self, "cleaned", False) or not hasattr(self, "stats"):
            return
        self.cleaned = True
        if self.admitted:
            limits.closed(self.ip, was_pending=not self.started)
        if self.playback is not None:
            await self.playback.close()  # settles every entry, so each waiting speak gets its answer
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        if self.stt is not None:
            try:
                await self.stt.close()
            except Exception as exc:
                log.info("closing transcription failed: %s", exc)
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.call is not None:
            if self.close_reason == "disconnected":
                self.close_reason = reason
            try:
                await _service(services.stream_closed)(
                    stream_pk=self.call.stream_pk, reason=self.close_reason, stats=self.stats.as_dict())
            except Exception:
                log.exception("recording the end of stream %s failed", self.stream_id)

    # --- inbound frames ------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if text_data is not None and size > MAX_MESSAGE_BYTES // 4:
            size = len(text_data.encode("utf-8"))  # the cap is in bytes; only long frames need counting
        if size > MAX_MESSAGE_BYTES:
            self.stats.drop("oversized")
            await self._close(CLOSE_TOO_BIG, "Message too big")
            return
        if text_data is None:
            self._drop("binary", "binary frames are not part of the stream protocol")
            return
        try:
            message = json.loads(text_data)
            if not isinstance(message, dict):
                raise FrameError("a frame must be a JSON object")
            frame = self.codec.parse(message)
        except (ValueError, FrameError) as exc:
            self._drop("malformed", str(exc))
            return
        if isinstance(frame, StreamMedia):
            self._on_media(frame)
        elif isinstance(frame, StreamStart):
            await self._on_start(frame)
        elif isinstance(frame, StreamMark):
            if self.playback is not None:
                self.playback.on_mark(frame.name)
        elif isinstance(frame, StreamStop):
            self.close_reason = "stop"
            await self._close(CLOSE_NORMAL, "stop")
        elif isinstance(frame, StreamDtmf):
            if self.started:
                self.stats.counters["dtmf"] += 1
                self._spawn(_service(services.stream_dtmf)(
                    call_id=self.call.call_id, stream_id=self.stream_id,
                    sequence=self.stats.counters["dtmf"], digit=frame.digit))
        elif isinstance(frame, StreamConnected):
            self.handshake_token = frame.token
        elif isinstance(frame, (StreamCleared, StreamOther)):
            self.stats.counters["ignored"] += 1

    def _drop(self, cause: str, detail: str) -> None:
        self.stats.drop(cause)
        # The first few of each cause are logged in full; later ones only counted.
        if self.stats.counters[f"dropped_{cause}"] <= 3:
            log.info("media frame dropped (%s): %s", cause, sanitize_reason(detail))

    def _on_media(self, frame: StreamMedia) -> None:
        if not self.started:
            self._drop("before_start", "media before start")
            return
        if not frame.payload:
            self._drop("empty", "media without audio")
            return
        self.stats.counters["frames_in"] += 1
        if frame.timestamp_ms is not None:
            now = time.monotonic()
            if self.inbound_origin is None:
                self.inbound_origin = (now, frame.timestamp_ms)
            else:
                # How far behind the carrier's clock this frame is handled (network + our queueing).
                origin_time, origin_ts = self.inbound_origin
                lag_ms = (now - origin_time) * 1000 - (frame.timestamp_ms - origin_ts)
                if lag_ms < 0:
                    self.inbound_origin = (now, frame.timestamp_ms)  # the earlier frames were late
                    lag_ms = 0.0
                self.stats.inbound_lag.add(lag_ms)
        if self.stt is not None:
            self.stt.send_audio(frame.payload)

    async def _on_start(self, frame: StreamStart) -> None:
        if self.started:
            await self._close(CLOSE_POLICY, "Duplicate start")
            return
        if not frame.provider_call_id:
            await self._close(CLOSE_POLICY, "Missing callSid")
            return
        token = frame.token or self._query_token() or getattr(self, "handshake_token", None) or self._header_token()
        try:
            call = await _service(services.stream_open)(
                provider_call_id=frame.provider_call_id, stream_id=frame.stream_id, token=token)
        except services.StreamRefused as exc:
            await self._close(CLOSE_POLICY, str(exc))
            return
        if self.closing:  # the socket went away while the call was looked up
            await _service(services.stream_closed)(stream_pk=call.stream_pk, reason="disconnected", stats={})
            return
        self.call = call
        self.stream_id = frame.stream_id
        self.started = True
        limits.started(self.ip)
        self.frames = self.codec.outbound(frame.stream_id)
        self.group = commands.call_group(call.call_id)
        # An older stream of this call (a reconnect) stops playing and closes.
        await self.channel_layer.group_send(self.group, {"type": "stream.replaced", "stream_id": frame.stream_id})
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.tts = tts_chain(call.tts)
        timeout_ms = call.tts.get("timeoutMs") or 8000
        self.playback = Playback(send=self._send_frame, frames=self.frames, synthesize=self._synthesize,
                                 stats=self.stats, synthesis_timeout=timeout_ms / 1000)
        log.info("media stream %s started for call %s", frame.stream_id, call.call_id)
        self._spawn(self._start_transcription())

    def _query_token(self) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin1")).get("token")
        return values[0] if values else None

    def _header_token(self) -> str | None:
        name = getattr(self.codec, "token_header", None)
        if not name:
            return None
        for key, value in self.scope.get("headers", []):
            if key.decode("latin1").lower() == name:
                return value.decode("latin1")
        return None

    async def _start_transcription(self) -> None:
        try:
            provider = transcription_provider(self.config)
            session = provider.create_session(self, language=self.call.language)
            await session.connect()
        except (TranscriptionError, Exception) as exc:
            log.warning("call %s: transcription unavailable: %s", self.call.call_id, exc)
            self.stats.counters["stt_failures"] += 1
            await self._close(CLOSE_ERROR, "STT connection failed")
            return
        if self.closing:
            await session.close()
            return
        self.stt = session
        self.stats.counters["stt_ready"] += 1
        # The greeting waits for this: nothing the caller says in reply may be lost.
        self._spawn(_service(services.stream_ready)(call_id=self.call.call_id))

    # --- transcription events (TranscriptListener) ------------------------------------------

    def on_speech_started(self) -> None:
        self._caller_speaking("speech")

    def on_partial(self, text: str) -> None:
        if text.strip():
            self._caller_speaking("partial")

    def _caller_speaking(self, trigger: str) -> None:
        """Barge-in, and once per utterance: replies to what the caller said before are superseded."""
        if self.playback is not None and not self.playback.interruptible:
            return  # an outbound greeting plays: the callee's "hello?" changes nothing (§2.13)
        self._barge_in(trigger)
        if not self.utterance_open and self.call is not None:
            self.utterance_open = True
            self._spawn(_service(services.stream_speech_started)(
                call_id=self.call.call_id, since_ms=int(time.time() * 1000)))

    def on_final(self, text: str) -> None:
        text = text.strip()
        if not text or self.closing:
            return
        if self.playback is not None and not self.playback.interruptible:
            # An outbound call's greeting is playing: its callee's "hello?" is not a turn (§2.13).
            self.stats.counters["transcripts_suppressed"] += 1
            return
        self._barge_in("final")
        self.utterance_open = False
        self.transcripts += 1
        self.stats.turn_heard(time.monotonic())
        self._spawn(_service(services.stream_transcript)(
            call_id=self.call.call_id, stream_id=self.stream_id, sequence=self.transcripts, text=text,
            heard_ms=int(time.time() * 1000)))

    def on_error(self, error: Exception) -> None:
        # Transcription is gone for good; playback still works, so the call goes on.
        log.warning("call %s: transcription lost: %s", self.call.call_id if self.call else "-", error)
        self.stats.counters["stt_lost"] += 1

    def _barge_in(self, trigger: str) -> None:
        playback = self.playback
        if playback is None or not playback.busy or not playback.interruptible:
            return
        self.stats.counters["barge_ins"] += 1
        log.info("call %s: barge-in (%s), clearing playback", self.call.call_id, trigger)
        self._spawn(playback.clear())

    # --- outbound -------------------------------------------------------------------------

    async def _send_frame(self, text: str) -> None:
        if self.closing:
            raise ConnectionError("the stream is closed")
        if send_backlog(self.base_send) > MAX_SEND_BUFFER:
            self._spawn(self._close(CLOSE_TRY_LATER, "Backpressure: send buffer exceeded"))
            raise ConnectionError("send buffer exceeded")
        await self.send(text_data=text)

    def _synthesize(self, text: str, voice: str | None):
        return self.tts.synthesize(text, voice=voice)

    # --- commands from the channel layer ------------------------------------------------------

    async def stream_speak(self, event: dict[str, Any]) -> None:
        reply_to = event.get("reply_to")
        if not self.started or self.closing or self.playback is None:
            return  # not ours to answer: the sender times out and reports no stream
        try:
            group = event.get("group")
            future = self.playback.enqueue(str(event.get("text", "")), event.get("voice"),
                                           interruptible=bool(event.get("interruptible", True)),
                                           group=str(group) if group is not None else None)
        except (PlaybackQueueFull, RuntimeError) as exc:
            if reply_to:
                await self.channel_layer.send(reply_to, {"type": "stream.result", "outcome": "failed", "error": str(exc)})
            return
        if reply_to:
            await self.channel_layer.send(reply_to, {"type": "stream.accepted"})
            # Not cancelled with the stream's tasks: the playback settles on close and this reports it.
            report = asyncio.ensure_future(self._report(future, reply_to))
            self.reports.add(report)
            report.add_done_callback(self.reports.discard)

    async def _report(self, future: asyncio.Future[PlaybackResult], reply_to: str) -> None:
        result = await future
        await self.channel_layer.send(reply_to, {"type": "stream.result", **result.as_message()})

    async def stream_clear(self, event: dict[str, Any]) -> None:
        if self.playback is not None:
            await self.playback.clear()

    async def stream_close(self, event: dict[str, Any]) -> None:
        await self._close(CLOSE_NORMAL, str(event.get("reason") or "closed"))

    async def stream_replaced(self, event: dict[str, Any]) -> None:
        if event.get("stream_id") != getattr(self, "stream_id", None):
            await self._close(CLOSE_NORMAL, "replaced by a newer stream")

    # --- helpers --------------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media stream task failed", exc_info=task.exception())
