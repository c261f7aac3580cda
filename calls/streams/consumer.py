"""What every carrier stream consumer shares: the reader loop, caps, frame parsing and dropping, sends with backpressure, closing."""
from __future__ import annotations

import asyncio
import functools
import logging
import re

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from core import jsonsafe
from core.call_context import bind_call_id, call_scope
from providers.carriers.media import FrameError, StreamMark, StreamMedia, StreamStart, StreamStop
from providers.carriers.public_url import ip_in, normalize_ip

from .. import services
from ..console.pokes import CONSOLE_GROUP
from ..gateway import get_gateway
from ..log_limit import warn_limited
from ..metrics import recorders as metrics
from . import commands, outage
from .recording import start_recording
from .limits import TOO_MANY_CONNECTIONS, limits
from .reorder import Reorder
from .stats import StreamStats

log = logging.getLogger("calls.streams.media")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SEND_BUFFER = 1024 * 1024
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1013
# How often a started stream publishes its health to the live console.
STATS_TICK_SECONDS = 1.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_reason(reason: str) -> str:
    """Close reasons are logged: no control characters, at most 120 characters."""
    return _CONTROL.sub(" ", reason)[:120]


def wire_close_code(code: int) -> int:
    """The close code as sent: Daphne's WebSocket library sends only 1000 and 3000–4999, so the
    reference's 1008/1009/1011/1013 go out as their private-range twins 4008/4009/4011/4013."""
    return code if code == CLOSE_NORMAL or 3000 <= code <= 4999 else 4000 + code - 1000


def service(func):
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


class CarrierStreamConsumer(AsyncWebsocketConsumer):
    """One carrier WebSocket speaking a media codec; subclasses handle the parsed frames.

    Subclasses set `kind` (for logs), call `_admit()` from `websocket_connect`, implement
    `_caller_audio`, `_on_start` (and `_on_other` for other frames they use) and extend `_cleanup()`.
    """

    groups: list[str] = []
    kind = "media stream"
    max_message_bytes = MAX_MESSAGE_BYTES

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
            sources.append(self._commands)
        one_at_a_time = asyncio.Lock()

        async def read(source) -> None:
            while True:
                message = await source()
                async with one_at_a_time:
                    await self.dispatch(message)

        readers = [asyncio.ensure_future(read(source)) for source in sources]
        done: set[asyncio.Future] = set()  # stays empty when this task is cancelled while it waits
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for reader in readers:
                if reader not in done:
                    reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        for reader in done:
            error = None if reader.cancelled() else reader.exception()
            if error is not None and not isinstance(error, StopConsumer):
                await self._crashed(error)  # a handler's error ends the consumer, as in Channels, but cleanly
                break

    async def _commands(self) -> dict:
        """The next command from the channel layer. An outage of the layer (Redis gone, or stalled) is
        waited out, never fatal: the stream's audio does not depend on it, only commands do."""
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)
                outage.retrieve_failures(self.channel_layer)
                return message
            except outage.layer_errors() as exc:
                outage.groups.noticed(self.channel_layer, exc)
            # One probe per process tries the layer meanwhile (not every stream on its own).
            await outage.groups.wait(outage.CONSUMER_RETRY)

    async def _layer(self, operation: str, coro) -> bool:
        """A group operation or reply on the channel layer, bounded; an outage is noticed and logged, not raised."""
        try:
            async with asyncio.timeout(outage.LAYER_TIMEOUT):
                await coro
            return True
        except outage.layer_errors() as exc:
            log.info("%s %s: %s failed: %s", self.kind, getattr(self, "stream_id", "-"), operation, outage.describe(exc))
            outage.groups.noticed(self.channel_layer, exc)
            return False

    async def _reply(self, reply_to: str, message: dict) -> None:
        """Answer a command's sender on its reply channel (it reports a failure itself when none arrives)."""
        await self._layer("replying to a command", self.channel_layer.send(reply_to, message))

    async def _crashed(self, error: BaseException) -> None:
        """A handler raised: close 1011 and record the stream's end (its grace starts), so the call never
        waits on a stream that is gone; the cause is logged once."""
        log.error("%s %s: handler failed; closing", self.kind, getattr(self, "stream_id", "-"), exc_info=error)
        try:
            if not getattr(self, "closing", False):
                await self._close(CLOSE_ERROR, "Internal error")
            else:  # it failed while closing: the socket may be open still, and the caps held
                await self.close(code=wire_close_code(CLOSE_ERROR))
                await self._cleanup("Internal error")
        except Exception:
            log.exception("closing %s %s after a failure failed", self.kind, getattr(self, "stream_id", "-"))
        await self._record_closed()  # once only: done already unless the cleanup itself failed

    async def dispatch(self, message) -> None:
        """Channels' dispatch, without its hop to the shared sync thread before every message.

        That hop closes stale database connections of the shared thread, which this consumer never
        uses: every database call here runs through `service`, whose worker thread closes its own.
        Made 50 times a second per call, it is a thread round trip per frame for nothing.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        # Lines logged while handling it, and by tasks it starts, name the stream's call once known.
        with call_scope(self.call.call_id if getattr(self, "call", None) is not None else None):
            await handler(message)

    # --- connection ----------------------------------------------------------------------

    def _init_state(self) -> None:
        self.stats = StreamStats()
        self.started = False
        self.closing = False
        self.call = None
        self.playback = None
        self.recording = None  # the local WAV, when the call records (calls/streams/recording.py)
        self.group: str | None = None
        self.tasks: set[asyncio.Task] = set()
        self.reports: set[asyncio.Task] = set()
        self.admitted = False
        self.admitting = False  # a start is being admitted (its frame checked, the call not yet joined)
        self.close_reason = "disconnected"
        self.reorder: Reorder | None = None

    async def _admit(self, config) -> bool:
        """Count this socket against the caps (accepting it unless the total cap is reached); once
        admitted, it has `preStartTimeoutMs` to send its start."""
        self.ip = client_ip(self.scope, config)
        streaming = config.streaming
        refusal = limits.admit(
            self.ip, max_connections=streaming.max_connections, max_pending=streaming.max_pending_connections,
            max_pending_per_ip=streaming.max_pending_connections_per_ip,
        )
        if refusal:
            metrics.refused("stream_connections" if refusal == TOO_MANY_CONNECTIONS else "stream_pending")
        if refusal == TOO_MANY_CONNECTIONS:
            log.warning("%s from %s refused: %s", self.kind, self.ip, refusal)
            await self.close()  # before accept: the upgrade is refused with an HTTP error
            return False
        await self.accept()
        if refusal:
            log.warning("%s from %s closed: %s", self.kind, self.ip, refusal)
            await self._close(CLOSE_TRY_LATER, refusal)
            return False
        self.admitted = True
        get_gateway().bind_loop(asyncio.get_running_loop())
        self._spawn(self._start_timeout(config.streaming.pre_start_timeout_ms / 1000))
        return True

    async def _start_allowed(self, frame) -> bool:
        """A start frame may admit this stream (the first one, naming the carrier call); else closing."""
        if self.started or self.admitting:
            await self._close(CLOSE_POLICY, "Duplicate start")
            return False
        if not frame.provider_call_id:
            await self._close(CLOSE_POLICY, "Missing callSid")
            return False
        return True

    async def _join_call(self, call, stream_id: str) -> None:
        """The stream is the call's now: counted as started, and in the call's group (an older stream closes)."""
        self.call = call
        bind_call_id(call.call_id)
        self.stream_id = stream_id
        self._mark_started()
        self.frames = self.codec.outbound(stream_id)
        self.recording = start_recording(config=self.config, call=call, stream_id=stream_id)
        if self.codec.reorder_window:  # a carrier that does not promise order: its sequence numbers restore it
            self.reorder = Reorder(self.codec.reorder_window, self._in_order, self.stats)
        self.group = commands.call_group(call.call_id)
        # An older stream of this call (a reconnect) stops playing and closes.
        await self._layer("replacing an older stream",
                          self.channel_layer.group_send(self.group, {"type": "stream.replaced", "stream_id": stream_id}))
        # Kept even when the layer is down now: its group is joined again once it is back.
        outage.groups.joined(self.channel_name, self.group)
        await self._layer("joining the call's group", self.channel_layer.group_add(self.group, self.channel_name))
        self._spawn(self._ticking())

    async def _ticking(self) -> None:
        """Once a second while the stream is up: `_stats_tick()` (cancelled with the stream's tasks)."""
        while not self.closing:
            await asyncio.sleep(STATS_TICK_SECONDS)
            if self.closing:
                return
            try:
                await self._stats_tick()
            except Exception:  # the stream's audio goes on whatever a tick does
                log.exception("%s %s: stats tick failed", self.kind, getattr(self, "stream_id", "-"))

    async def _stats_tick(self) -> None:
        """The stream's health to the live console (calls/console/socket.py) and its new lag and pacing
        counts to the metrics, never raising into the stream."""
        self._flush_metrics()
        counters, lag = self.stats.counters, self.stats.inbound_lag
        health = {
            "type": "console.stream", "callId": self.call.call_id,
            "stats": {
                "framesIn": counters["frames_in"], "framesOut": counters["frames_out"], "dropped": counters["dropped"],
                "lagP50Ms": lag.percentile(50), "lagP99Ms": lag.percentile(99),
            },
        }
        try:
            async with asyncio.timeout(outage.LAYER_TIMEOUT):
                await self.channel_layer.group_send(CONSOLE_GROUP, health)
        except Exception as exc:  # an outage of the layer: the console waits, the call does not
            warn_limited(log, ("stream health", type(exc).__name__), "%s health not published: %s",
                         self.kind, outage.describe(exc))

    def _flush_metrics(self) -> None:
        """The stream's lag and pacing counts not yet in the process's Prometheus histograms go there now."""
        config = getattr(self, "config", None)
        metrics.stream_metrics_flush(self.stats, config.provider if config is not None else "none")

    async def _record_closed(self) -> None:
        """The end of this stream in the database (reason and stats), once its call is known."""
        if hasattr(self, "stats"):
            self._flush_metrics()
        if self.call is None or getattr(self, "end_recorded", False):
            return
        self.end_recorded = True
        try:
            await service(services.stream_closed)(stream_pk=self.call.stream_pk, reason=self.close_reason, stats=self.stats.as_dict())
        except Exception:
            log.exception("recording the end of %s %s failed", self.kind, getattr(self, "stream_id", "-"))

    def _mark_started(self) -> None:
        self.started = True
        if self.admitted:
            limits.started(self.ip)

    async def _start_timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not self.started and not self.closing:
            metrics.refused("stream_start_timeout")
            await self._close(CLOSE_POLICY, "Start timeout")

    async def websocket_disconnect(self, message) -> None:
        await self._cleanup(f"disconnected ({message.get('code', 'no code')})")
        await super().websocket_disconnect(message)

    async def _close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_reason = sanitize_reason(reason)
        log.info("%s %s closing: %s %s", self.kind, getattr(self, "stream_id", "-"), code, self.close_reason)
        try:
            await self.close(code=wire_close_code(code), reason=self.close_reason)
        except Exception as exc:
            log.info("closing %s socket failed: %s", self.kind, exc)
        finally:
            await self._cleanup(self.close_reason)

    async def _cleanup(self, reason: str) -> bool:
        """Release the caps, settle playback, cancel tasks, leave the group. False when already done."""
        if getattr(self, "cleaned", False) or not hasattr(self, "stats"):
            return False
        self.cleaned = True
        if self.admitted:
            limits.closed(self.ip, was_pending=not self.started)
        if self.playback is not None:
            await self.playback.close()  # settles every entry, so each waiting speak gets its answer
        if self.recording is not None:
            self.recording.close()  # its last chunk and its row are finished in the background
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        if self.group:
            outage.groups.left(self.channel_name)
            await self._layer("leaving the call's group", self.channel_layer.group_discard(self.group, self.channel_name))
        if self.close_reason == "disconnected":
            self.close_reason = reason
        return True

    # --- inbound frames ------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        await self._handle(text_data, bytes_data)

    async def _handle(self, text_data: str | None, bytes_data: bytes | None = None) -> None:
        """One WebSocket message: media, start, marks and stop mean the same on every stream."""
        frame = await self._frame(text_data, bytes_data)
        if frame is None:
            return
        if isinstance(frame, StreamMedia):
            self._on_media(frame)
        elif isinstance(frame, StreamStart):
            await self._on_start(frame)
        elif isinstance(frame, StreamMark):
            if self.playback is not None:
                self.playback.on_mark(frame.name)
        elif isinstance(frame, StreamStop):
            if self.reorder is not None:
                self.reorder.flush()
            self.close_reason = "stop"
            await self._close(CLOSE_NORMAL, "stop")
        else:
            await self._on_other(frame)

    def _on_media(self, frame: StreamMedia) -> None:
        if not self.started:
            self._drop("before_start", "media before start")
            return
        if not frame.payload:
            self._drop("empty", "media without audio")
            return
        self.stats.counters["frames_in"] += 1
        if self.reorder is not None:
            self.reorder.push(frame)
        else:
            self._in_order(frame)

    def _in_order(self, frame: StreamMedia) -> None:
        """A caller frame in the carrier's order: recorded, then heard."""
        if self.recording is not None:
            self.recording.inbound(frame.payload, frame.timestamp_ms)
        self._caller_audio(frame)

    def _caller_audio(self, frame: StreamMedia) -> None:
        """A media frame with audio, once the stream started."""
        raise NotImplementedError

    async def _on_start(self, frame: StreamStart) -> None:
        raise NotImplementedError

    async def _on_other(self, frame) -> None:
        """Any other frame (DTMF, carrier notices); ignored unless the stream has a use for it."""
        self.stats.counters["ignored"] += 1

    async def _frame(self, text_data: str | None, bytes_data: bytes | None):
        """The codec's frame for one WebSocket message; None when dropped (or too big: closing)."""
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if text_data is not None and size > self.max_message_bytes // 4:
            size = len(text_data.encode("utf-8"))  # the cap is in bytes; only long frames need counting
        if size > self.max_message_bytes:
            self.stats.drop("oversized")
            await self._close(CLOSE_TOO_BIG, "Message too big")
            return None
        if text_data is None:
            self._drop("binary", "binary frames are not part of the stream protocol")
            return None
        try:
            message = jsonsafe.loads(text_data)  # a ValueError naming the problem, never a RecursionError
            if not isinstance(message, dict):
                raise FrameError("a frame must be a JSON object")
            frame = self.codec.parse(message)
        except (ValueError, FrameError) as exc:
            self._drop("malformed", str(exc))
            return None
        if self.reorder is not None and not isinstance(frame, StreamMedia):
            self._sequence_used(message)
        return frame

    def _sequence_used(self, message: dict) -> None:
        """A message that is not media took a number of the sequence the media is ordered by."""
        value = message.get(self.codec.sequence_key)
        if isinstance(value, str) and value.isdigit() and len(value) < 19:
            self.reorder.skip(int(value))
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            self.reorder.skip(value)

    def _drop(self, cause: str, detail: str) -> None:
        self.stats.drop(cause)
        # The first few of each cause are logged in full; later ones only counted.
        if self.stats.counters[f"dropped_{cause}"] <= 3:
            log.info("%s frame dropped (%s): %s", self.kind, cause, sanitize_reason(detail))

    # --- outbound -------------------------------------------------------------------------

    async def _send_frame(self, text: str) -> None:
        if self.closing:
            raise ConnectionError("the stream is closed")
        if send_backlog(self.base_send) > MAX_SEND_BUFFER:
            self._spawn(self._close(CLOSE_TRY_LATER, "Backpressure: send buffer exceeded"))
            raise ConnectionError("send buffer exceeded")
        await self.send(text_data=text)

    # --- commands from the channel layer ------------------------------------------------------

    async def stream_clear(self, event) -> None:
        if self.playback is not None:
            await self.playback.clear()

    async def stream_close(self, event) -> None:
        await self._close(CLOSE_NORMAL, str(event.get("reason") or "closed"))

    async def stream_replaced(self, event) -> None:
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
            log.error("%s task failed", self.kind, exc_info=task.exception())
