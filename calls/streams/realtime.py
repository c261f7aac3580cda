"""The realtime stream consumer: a carrier's call audio bridged full-duplex to a realtime voice model session."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from core.audio import BYTES_PER_MS
from core.states import CallState
from core.urls import realtime_streams_on
from providers.carriers.media import StreamMedia, StreamOther, StreamStart
from providers.realtime.base import RealtimeError, ToolCall

from .. import services
from ..gateway import get_gateway
from ..metrics import recorders as metrics
from ..runtime import get_runtime
from .consumer import (
    CLOSE_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    CarrierStreamConsumer,
    sanitize_reason,
    service,
)
from .playback import Outcome, Playback, PlaybackQueueFull, PlaybackResult, heard_text
from .speech_gate import SpeechGate

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_ADMISSION_BUFFER = 1024 * 1024  # frames held while the stream is admitted
MAX_QUEUED_AUDIO = 8000 * 120  # 120 s of model audio waiting to be played
MEDIA_TIMEOUT = 30.0  # no inbound media this long: the caller is gone
GAP_LOG_INTERVAL = 5.0
GAP_MS = 120
ITEM_AUDIO_TIMEOUT = 15.0  # longest pause inside one model answer's audio
CONNECT_TIMEOUT = 15.0
LAST_WORDS_TIMEOUT = 10.0  # end_call: how long the model's last words may still play
# end_call with nothing queued: how long the model may take to begin the goodbye it says in answer
# to the tool's result (Gemini speaks after the call as often as before it).
LAST_WORDS_START = 2.0
CLOSE_TIMEOUT = 3.0
RECORDS_WAIT = 2.0  # a consult waits this long at most for the transcript records before it
BARGE_IN_SETTLE = 1.0
# A caller transcript that arrives just before the answer's audio is recorded once the answer's first
# frame has gone, at most this much later (seconds).
HELD_RECORD_WAIT = 0.1
MAX_ITEMS = 32  # model answers remembered (for their transcript and barge-in)


def _prepare(*, config, call_id: str):
    """The provider and the session setup for a call (sync: imports and database reads)."""
    from ..realtime.instructions import session_setup
    from ..realtime.provider import realtime_provider

    provider = realtime_provider(config)
    return provider, session_setup(config=config, call_id=call_id)


def _forced_consult_answer(*, call_id: str, text: str) -> str | None:
    """A forced consult's answer (sync: its module, which pulls in the responders, is imported off the loop too)."""
    from ..realtime.consult import forced_consult_answer

    return forced_consult_answer(call_id=call_id, text=text)


class _Item:
    """One model answer's audio on its way to the playback; iterated by the player."""

    def __init__(self, consumer: RealtimeStreamConsumer, item_id: str) -> None:
        self.consumer = consumer
        self.item_id = item_id
        self.chunks: deque[bytes] = deque()
        self.ready = asyncio.Event()
        self.finished = False  # no more audio will come
        self.cut = False  # a barge-in cleared it: later audio is dropped
        self.produced = 0
        self.started_at: float | None = None
        self.transcript: str | None = None
        self.result: PlaybackResult | None = None
        self.future: asyncio.Future[PlaybackResult] | None = None
        self.recorded = False

    def push(self, ulaw: bytes) -> None:
        self.chunks.append(ulaw)
        self.produced += len(ulaw)
        self.ready.set()

    def finish(self) -> None:
        self.finished = True
        self.ready.set()

    def __aiter__(self):
        return self._audio()

    async def _audio(self):
        while True:
            while self.chunks:
                yield self.chunks.popleft()
            if self.finished:
                return
            self.ready.clear()
            await self.ready.wait()


class RealtimeStreamConsumer(CarrierStreamConsumer):
    """One carrier WebSocket bridged to one realtime model session.

    The carrier opens `<realtime stream path>/<token>` with the one-time token it was given; the token
    is used up before the upgrade is accepted. On `start` the stream is admitted to the token's call
    (the carrier call id must match), the greeting is taken and the model session opened on it; frames
    that arrive meanwhile are buffered. Caller audio goes to the model; the model's audio plays through
    the same paced, marked Playback as speech, one entry per model item. A barge-in (the provider's
    voice detection, or the local speech gate) clears the carrier's buffer and truncates the model's
    item at what the caller heard. Whoever ends the call, the model session is closed.
    """

    kind = "realtime stream"
    max_message_bytes = MAX_MESSAGE_BYTES

    async def websocket_connect(self, message) -> None:
        self._init_state()
        self.session = None
        self.provider = None
        self.token_call_id: str | None = None
        self.buffered: deque[str | None] = deque()
        self.buffered_bytes = 0
        self.items: dict[str, _Item] = {}
        self.current_item: _Item | None = None
        self.greeting_pending = False
        self.gate: SpeechGate | None = None
        self.last_media_at = time.monotonic()
        self.last_activity_at = time.monotonic()
        self.last_timestamp: int | None = None
        self.last_gap_log = 0.0
        self.consults = 0
        self.turns = 0
        self.turn_started_at: float | None = None
        self.speech_stops_seen = False
        self.ending = False
        self.records: set[asyncio.Task] = set()
        self.held: list[tuple[Any, dict[str, Any]]] = []
        self.held_timer: asyncio.TimerHandle | None = None
        self.forced = None
        self.responses_done = 0
        self.model_news = asyncio.Event()  # model audio or a finished answer arrived
        try:
            runtime = get_gateway().current_runtime() or await asyncio.to_thread(get_runtime)
        except Exception as exc:
            log.warning("realtime stream refused: %s", exc)
            await self.close()
            return
        self.config = runtime.config
        codec_class = runtime.carrier.media_codec
        if not (realtime_streams_on(self.config) and codec_class is not None):
            log.warning("realtime stream refused: realtime is not enabled for carrier %s", runtime.carrier.name)
            await self.close()
            return
        self.codec = codec_class()
        token = (self.scope.get("url_route") or {}).get("kwargs", {}).get("token", "")
        try:
            self.token_call_id = await service(services.realtime_token_consume)(token)
        except Exception:
            log.exception("checking a realtime stream token failed")
            self.token_call_id = None
        if self.token_call_id is None:
            await self.close()  # before accept: the upgrade is refused
            return
        await self._admit(self.config)

    async def _cleanup(self, reason: str) -> bool:
        if not await super()._cleanup(reason):
            return False
        session, self.session = self.session, None
        if session is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await session.close()
            except Exception as exc:
                log.info("closing the realtime session failed: %s", exc)
        # The stream's end is its last record: the transcript and turns it made are written first.
        await self._transcript_written()
        await self._record_closed()
        return True

    # --- inbound frames ------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        if self.admitting:
            # Held until the call is admitted and the session exists, then handled in order.
            self.buffered_bytes += len(text_data) if text_data is not None else len(bytes_data or b"")
            if self.buffered_bytes > MAX_ADMISSION_BUFFER:
                self.stats.drop("admission_overflow")
                await self._close(CLOSE_TRY_LATER, "Admission buffer exceeded")
                return
            self.buffered.append(text_data if text_data is not None else None)
            return
        await self._handle(text_data, bytes_data)

    async def _on_other(self, frame) -> None:
        if isinstance(frame, StreamOther) and frame.event == "error":
            self.stats.counters["carrier_errors"] += 1
            log.warning("realtime stream %s: the carrier reports an error: %s", getattr(self, "stream_id", "-"),
                        sanitize_reason(frame.detail))
        else:
            self.stats.counters["ignored"] += 1

    def _caller_audio(self, frame: StreamMedia) -> None:
        now = time.monotonic()
        self.last_media_at = now
        if frame.timestamp_ms is not None:
            if self.last_timestamp is not None:
                gap = frame.timestamp_ms - self.last_timestamp
                if (gap > GAP_MS or gap < 0) and now - self.last_gap_log >= GAP_LOG_INTERVAL:
                    self.last_gap_log = now
                    log.info("call %s: inbound media timestamp gap of %d ms", self.call.call_id, gap)
                if gap > GAP_MS or gap < 0:
                    self.stats.counters["media_gaps"] += 1
            self.last_timestamp = frame.timestamp_ms
        if self.session is not None:
            self.session.send_audio(frame.payload)
        if self.gate is not None and self.gate.push(frame.payload):
            self.last_activity_at = now
            self._barge_in("gate")

    # --- admission -----------------------------------------------------------------------

    async def _on_start(self, frame: StreamStart) -> None:
        if not await self._start_allowed(frame):
            return
        self.admitting = True
        self._spawn(self._admit_call(frame))

    async def _admit_call(self, frame: StreamStart) -> None:
        try:
            call = await service(services.realtime_stream_open)(
                call_id=self.token_call_id, provider_call_id=frame.provider_call_id, stream_id=frame.stream_id)
        except services.StreamRefused as exc:
            self.admitting = False
            await self._close(CLOSE_POLICY, str(exc))
            return
        except Exception:
            log.exception("admitting realtime stream %s failed", frame.stream_id)
            self.admitting = False
            await self._close(CLOSE_ERROR, "Admission failed")
            return
        if self.closing:  # the socket went away while the call was admitted
            await service(services.stream_closed)(stream_pk=call.stream_pk, reason="disconnected", stats={})
            return
        await self._join_call(call, frame.stream_id)
        self.playback = Playback(send=self._send_frame, frames=self.frames, synthesize=self._no_synthesis, stats=self.stats,
                                 tap=self.recording)
        try:
            # On a worker thread: the provider's module may be imported now, and the setup reads the database.
            provider, setup = await service(_prepare)(config=self.config, call_id=call.call_id)
        except RealtimeError as exc:
            log.error("call %s: realtime provider unavailable: %s", call.call_id, exc)
            self.stats.counters["provider_failures"] += 1
            await self._end_call(CallState.ERROR.value, "Realtime provider unavailable", code=CLOSE_ERROR,
                                 error=f"Realtime provider unavailable: {exc}")
            return
        except Exception as exc:
            log.exception("call %s: realtime session setup failed", call.call_id)
            await self._end_call(CallState.ERROR.value, "Realtime setup failed", code=CLOSE_ERROR,
                                 error=f"Realtime setup failed: {str(exc) or type(exc).__name__}")
            return
        self.provider = provider
        if not provider.handles_barge_in:
            self.gate = SpeechGate()
        try:
            self.session = provider.create_session(self, setup)
            self.forced = self._forced_consult()
        except Exception as exc:
            log.error("call %s: opening a realtime session with %s failed: %s", call.call_id, provider.name, exc)
            await self._end_call(CallState.ERROR.value, "Realtime setup failed", code=CLOSE_ERROR,
                                 error=f"Opening a realtime session with {provider.name} failed: {exc}")
            return
        # Frames held during admission, in order; the session queues caller audio until it connects.
        while self.buffered:
            text = self.buffered.popleft()
            if self.closing:
                return
            await self._handle(text, None if text is not None else b"")
        self.admitting = False
        self.buffered_bytes = 0
        log.info("realtime stream %s started for call %s (provider %s)", frame.stream_id, call.call_id, provider.name)
        self.last_media_at = self.last_activity_at = time.monotonic()
        self._spawn(self._media_watch())
        if getattr(self.config.realtime, "idle_hangup_ms", None):
            self._spawn(self._idle_watch(self.config.realtime.idle_hangup_ms / 1000))
        self._spawn(self._connect(call.greeting))

    async def _connect(self, greeting: str) -> None:
        session = self.session
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await session.connect()
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {CONNECT_TIMEOUT:g} s"
            log.error("call %s: the realtime provider %s did not connect: %s", self.call.call_id, self.provider.name, reason)
            self.stats.counters["provider_failures"] += 1
            await self._end_call(CallState.ERROR.value, "Realtime connection failed", code=CLOSE_ERROR,
                                 error=f"The realtime provider {self.provider.name} did not connect: {reason}")
            return
        self.stats.counters["provider_ready"] += 1
        if greeting and not self.closing:
            self.greeting_pending = True
            from ..realtime.instructions import greeting_instructions

            try:
                await session.respond(greeting_instructions(greeting))
            except Exception as exc:
                self.greeting_pending = False
                log.warning("call %s: asking the model for the greeting failed: %s", self.call.call_id, exc)

    def _forced_consult(self):
        """consultPolicy always: the host consults when the model answered without doing so."""
        realtime = self.config.realtime
        if realtime.consult_policy != "always" or realtime.tool_policy == "none":
            return None
        from ..realtime.forced import ForcedConsult

        return ForcedConsult()

    async def _force_consult_when_due(self) -> None:
        forced = self.forced
        delay = forced.delay_left(time.monotonic())
        if delay is None:
            return
        await asyncio.sleep(delay)  # the model's chance to call the consult tool itself
        words = forced.take(time.monotonic())
        if words is None or self.closing:
            return
        await self._transcript_written()  # the consult reads it
        self.consults += 1
        try:
            answer = await service(_forced_consult_answer)(call_id=self.call.call_id, text=words)
        finally:
            self.consults -= 1
            self.last_activity_at = time.monotonic()
        if answer and not self.closing:
            await self._inject(answer)

    async def _no_synthesis(self, text: str, voice: str | None):
        raise RuntimeError("a realtime stream plays the model's audio only")
        yield b""  # pragma: no cover  (makes this an async generator)

    # --- the model's events (RealtimeListener) ---------------------------------------------

    def on_audio(self, ulaw: bytes, item_id: str) -> None:
        if self.closing or self.playback is None or not ulaw:
            return
        item = self.items.get(item_id)
        if item is not None and item.cut:
            self.stats.counters["model_audio_dropped"] += 1
            return
        self.last_activity_at = time.monotonic()
        if item is None or item.finished:
            item = self._new_item(item_id)
            if item is None:
                return
        item.push(ulaw)
        self.model_news.set()
        if self._queued_audio() > MAX_QUEUED_AUDIO:
            self.stats.counters["audio_backpressure"] += 1
            self._spawn(self._close(CLOSE_TRY_LATER, "Backpressure: queued audio exceeded"))

    def _queued_audio(self) -> int:
        """Model audio received and not yet played out (bytes): what waits in the playback."""
        queued = sum(item.produced for item in self.items.values() if item.result is None and not item.cut)
        current = self.current_item
        if current is not None and current.started_at is not None:
            queued -= min(current.produced, int((time.monotonic() - current.started_at) * 1000) * BYTES_PER_MS)
        return queued

    def _new_item(self, item_id: str) -> _Item | None:
        item = _Item(self, item_id)
        interruptible = True
        if self.greeting_pending:
            self.greeting_pending = False
            # An outbound call's greeting is not cut by the callee's "hello?" (as in the classic path).
            interruptible = self.call.direction != "outbound"
        try:
            item.future = self.playback.enqueue_audio(
                item, interruptible=interruptible, timeout=ITEM_AUDIO_TIMEOUT,
                on_started=lambda at, item=item: self._audio_started(item, at))
        except (PlaybackQueueFull, RuntimeError) as exc:
            log.warning("call %s: model audio dropped: %s", self.call.call_id, exc)
            self.stats.counters["model_audio_dropped"] += 1
            return None
        self.items[item_id] = item
        item.future.add_done_callback(lambda future, item=item: self._item_played(item, future))
        return item

    def _audio_started(self, item: _Item, at: float) -> None:
        self.current_item = item
        item.started_at = at
        self._release_held()
        if self.turn_started_at is None:
            return
        latency_ms = int((at - self.turn_started_at) * 1000)
        self.turn_started_at = None
        self.turns += 1
        metrics.turn_completed("realtime", latency_ms / 1000)
        self._record(services.realtime_event, call_id=self.call.call_id, type="realtime.turn",
                     payload={"turn": self.turns, "itemId": item.item_id, "latencyMs": latency_ms},
                     dedupe_key=f"realtime-turn-{self.stream_id}-{self.turns}"[:255])

    def _item_played(self, item: _Item, future: asyncio.Future) -> None:
        if self.current_item is item:
            self.current_item = None
        item.finish()
        if future.cancelled():
            return
        item.result = future.result()
        if item.result.outcome == Outcome.FAILED:
            log.info("call %s: model audio %s not played: %s", self.call.call_id, item.item_id, item.result.error)
        self._record_model_text(item)

    def _record_model_text(self, item: _Item) -> None:
        """The model's words once both its transcript and what was played are known."""
        if item.recorded or item.transcript is None or item.result is None:
            return
        item.recorded = True
        result = item.result
        if result.outcome == Outcome.PLAYED:
            text = item.transcript
        elif result.outcome == Outcome.INTERRUPTED:
            text = heard_text(item.transcript, result.played_ms * BYTES_PER_MS / max(item.produced, 1))
        else:
            text = ""
        if text:
            self._record(services.realtime_transcript, call_id=self.call.call_id, speaker="bot", text=text)

    def on_output_transcript(self, item_id: str, text: str) -> None:
        item = self.items.get(item_id)
        if item is None:
            return  # an answer without audio (e.g. cut before any was played): nothing was heard
        item.transcript = text
        self._record_model_text(item)

    def on_response_done(self, item_id: str | None, status: str) -> None:
        self.responses_done += 1
        self.model_news.set()
        for key, item in list(self.items.items()):
            if item_id is None or key == item_id:
                item.finish()
        # Played items are forgotten, oldest first, beyond the last few (kept for a late transcript):
        # one whose transcript never comes must not stay for the rest of a long call.
        if len(self.items) > MAX_ITEMS:
            played = [key for key, item in self.items.items() if item.result is not None]
            for key in played[: len(self.items) - MAX_ITEMS]:
                del self.items[key]

    def on_speech_started(self) -> None:
        self.last_activity_at = time.monotonic()
        self.turn_started_at = None
        self._barge_in("speech")

    def on_speech_stopped(self) -> None:
        self.speech_stops_seen = True
        self.last_activity_at = time.monotonic()
        self.turn_started_at = time.monotonic()
        self.stats.turn_heard(self.turn_started_at)

    def on_input_transcript(self, text: str) -> None:
        if not text.strip() or self.call is None:
            return
        self.last_activity_at = time.monotonic()
        if not self.speech_stops_seen and self.current_item is None:
            # The provider sends no speech stop: the turn starts with the caller's final words.
            self.turn_started_at = time.monotonic()
            self.stats.turn_heard(self.turn_started_at)
        self.stats.counters["caller_transcripts"] += 1
        self._record_after_first_frame(services.realtime_transcript, call_id=self.call.call_id, speaker="user", text=text)
        if self.forced is not None:
            self.forced.on_final_transcript(text, time.monotonic())
            self._spawn(self._force_consult_when_due())

    def on_tool_call(self, call: ToolCall) -> None:
        if self.closing or self.call is None:
            return
        self.stats.counters["tool_calls"] += 1
        self._spawn(self._run_tool(call))

    def on_closed(self, error: Exception | None) -> None:
        if self.closing or self.ending or self.call is None:
            return
        if error is None:
            log.info("call %s: the realtime session ended", self.call.call_id)
            self._spawn(self._end_call(CallState.COMPLETED.value, "Realtime session ended"))
        else:
            log.warning("call %s: the realtime session was lost: %s", self.call.call_id, error)
            self._spawn(self._end_call(CallState.ERROR.value, "Realtime session lost", code=CLOSE_ERROR,
                                       error=f"Realtime session lost: {error}"))

    # --- barge-in --------------------------------------------------------------------------

    def _barge_in(self, trigger: str) -> None:
        playback = self.playback
        if playback is None or not playback.busy or not playback.interruptible:
            return
        item = self.current_item
        for queued in self.items.values():
            if queued.result is None:
                queued.cut = True
        self.stats.counters["barge_ins"] += 1
        log.info("call %s: barge-in (%s), clearing the model's audio", self.call.call_id, trigger)
        self._spawn(self._clear_and_truncate(item, local=trigger == "gate"))

    async def _clear_and_truncate(self, item: _Item | None, *, local: bool) -> None:
        await self.playback.clear()
        session = self.session
        if session is None:
            return
        if local:
            try:
                await session.cancel_response()
            except Exception as exc:
                log.info("cancelling the model's answer failed: %s", exc)
        if item is None or item.future is None:
            return
        try:
            async with asyncio.timeout(BARGE_IN_SETTLE):
                result = await asyncio.shield(item.future)
        except TimeoutError:
            return
        if result.outcome == Outcome.PLAYED:
            return  # it played out before the clear: the model's record of it is already right
        played_ms = result.played_ms if result.outcome == Outcome.INTERRUPTED else 0
        self.stats.counters["truncations"] += 1
        try:
            await session.truncate(item.item_id, played_ms)
        except Exception as exc:
            log.info("truncating the model's answer failed: %s", exc)

    # --- tools ------------------------------------------------------------------------------

    async def _run_tool(self, call: ToolCall) -> None:
        from ..realtime.tools import ToolOutcome, tool_is_slow, tool_run, tool_waits_for_words

        await self._transcript_written()  # a tool (the consult) may read it
        if tool_waits_for_words(call.name):
            await self._queued_audio_played()
        slow = tool_is_slow(call.name)
        if slow:
            self.consults += 1
        try:
            if slow:
                if self.forced is not None:
                    self.forced.on_consult_called(time.monotonic())
                await self._checking_notice()
            outcome = await service(tool_run)(call_id=self.call.call_id, call=call)
        except Exception as exc:
            log.warning("call %s: tool %s failed: %s", self.call.call_id, call.name, exc)
            outcome = ToolOutcome({"error": f"the tool failed: {type(exc).__name__}"})
        finally:
            if slow:
                self.consults -= 1
                self.last_activity_at = time.monotonic()
        session = self.session
        if session is None or self.closing:
            return
        answered = self.responses_done
        try:
            await session.send_tool_result(call, outcome.output)
        except Exception as exc:
            log.warning("call %s: sending the result of %s failed: %s", self.call.call_id, call.name, exc)
        if outcome.end_call:
            await self._last_words_played(answered)
            await self._end_call(CallState.COMPLETED.value, "Ended by the model")
        elif outcome.transferred:
            # The carrier has the caller now: the bridge leaves without hanging up.
            await self._close(CLOSE_NORMAL, "Transferred")

    async def _queued_audio_played(self) -> None:
        """Wait (bounded) until the audio the model produced so far has played to the caller."""
        pending = [item.future for item in self.items.values() if item.future is not None and not item.future.done()]
        if pending:
            await asyncio.wait(pending, timeout=LAST_WORDS_TIMEOUT)

    async def _checking_notice(self) -> None:
        """The model says it is checking while the consult runs (its own response, out of band)."""
        from ..realtime.instructions import checking_instructions

        session = self.session
        if session is None or not getattr(self.provider, "speaks_while_tool_runs", True):
            return
        try:
            await session.respond(checking_instructions())
        except Exception as exc:
            log.info("call %s: the checking notice failed: %s", self.call.call_id, exc)

    async def _last_words_played(self, answered: int) -> None:
        """Wait (bounded) until the model's last words have played: the audio queued so far, and
        the goodbye it may still say in answer to the tool's result (`answered`: answers finished
        before the result was sent)."""
        started = time.monotonic()
        deadline = started + LAST_WORDS_TIMEOUT
        while not self.closing:
            pending = [item.future for item in self.items.values() if item.future is not None and not item.future.done()]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if pending:
                await asyncio.wait(pending, timeout=remaining)
                continue
            # Nothing left to play: done once an answer finished after the result, or when the model
            # has not begun one for a while.
            wait = min(remaining, started + LAST_WORDS_START - time.monotonic())
            if self.responses_done > answered or wait <= 0:
                return
            self.model_news.clear()
            try:
                async with asyncio.timeout(wait):
                    await self.model_news.wait()
            except TimeoutError:
                return

    # --- hang-up ----------------------------------------------------------------------------

    async def _media_watch(self) -> None:
        while not self.closing:
            remaining = MEDIA_TIMEOUT - (time.monotonic() - self.last_media_at)
            if remaining <= 0:
                log.warning("call %s: no inbound media for %g s, ending the call", self.call.call_id, MEDIA_TIMEOUT)
                await self._end_call(CallState.TIMEOUT.value, "No inbound media")
                return
            await asyncio.sleep(remaining)

    async def _idle_watch(self, seconds: float) -> None:
        while not self.closing:
            idle = time.monotonic() - self.last_activity_at
            busy = self.consults or (self.playback is not None and self.playback.busy)
            if busy:
                self.last_activity_at = time.monotonic()
            elif idle >= seconds:
                log.info("call %s: no speech for %g s, ending the call", self.call.call_id, seconds)
                await self._end_call(CallState.TIMEOUT.value, "Idle")
                return
            await asyncio.sleep(max(0.05, seconds - idle) if not busy else min(seconds, 1.0))

    async def _end_call(self, reason: str, close_reason: str, *, code: int = CLOSE_NORMAL, error: str = "") -> None:
        """End the carrier call (the services close this stream through the call's group), then close.

        `error`: what went wrong, kept on the call's record (last_error); the close reason stands in for it.
        """
        if self.ending or self.call is None:
            return
        self.ending = True
        try:
            error = error or (close_reason if reason == CallState.ERROR.value else "")
            await service(services.call_end)(call_id=self.call.call_id, reason=reason, error=error)
        except Exception as exc:
            log.warning("call %s: ending the call (%s) failed: %s", self.call.call_id, reason, exc)
        await self._close(code, close_reason)

    # --- commands from the channel layer ------------------------------------------------------

    async def stream_inject(self, event: dict[str, Any]) -> None:
        """voicecall.speak on a realtime call: the model says the text."""
        reply_to = event.get("reply_to")
        if not self.started or self.closing or self.session is None:
            return  # not ours to answer: the sender times out and falls back
        if reply_to:
            await self._reply(reply_to, {"type": "stream.accepted"})
        self._spawn(self._inject(str(event.get("text", ""))))

    async def _inject(self, text: str) -> None:
        from ..realtime.instructions import speak_instructions

        session = self.session
        if session is None or not text.strip():
            return
        try:
            await session.respond(speak_instructions(text))
            self.stats.counters["injected"] += 1
        except Exception as exc:
            log.warning("call %s: injecting speech failed: %s", self.call.call_id, exc)

    async def stream_speak(self, event: dict[str, Any]) -> None:
        """Classic playback is not for a realtime stream: left unanswered (the sender falls back)."""

    # --- helpers --------------------------------------------------------------------------

    def _record(self, func, **kwargs) -> None:
        """A database record on a worker thread; kept past the stream's end, so nothing is lost."""
        task = asyncio.ensure_future(service(func)(**kwargs))
        self.records.add(task)
        task.add_done_callback(self._record_done)

    def _record_after_first_frame(self, func, **kwargs) -> None:
        """A record made while the turn's answer is about to start waits for its first frame (at most
        HELD_RECORD_WAIT): a worker thread's database work holds the interpreter in slices of the
        switch interval, which would delay that frame by milliseconds."""
        if self.turn_started_at is None:
            self._record(func, **kwargs)
            return
        self.held.append((func, kwargs))
        if self.held_timer is None:
            self.held_timer = asyncio.get_running_loop().call_later(HELD_RECORD_WAIT, self._release_held)

    def _release_held(self) -> None:
        if self.held_timer is not None:
            self.held_timer.cancel()
            self.held_timer = None
        held, self.held = self.held, []
        for func, kwargs in held:
            self._record(func, **kwargs)

    async def _transcript_written(self) -> None:
        """Every record made so far is in the database (bounded): what runs next reads the transcript."""
        self._release_held()
        pending = list(self.records)
        if pending:
            await asyncio.wait(pending, timeout=RECORDS_WAIT)

    def _record_done(self, task: asyncio.Task) -> None:
        self.records.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime record failed", exc_info=task.exception())
