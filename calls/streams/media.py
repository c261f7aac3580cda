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
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from providers.carriers.media import StreamConnected, StreamDtmf, StreamMedia, StreamStart
from providers.transcription.base import TranscriptionError

from ..gateway import get_gateway
from ..runtime import get_runtime
from .. import services
from ..speech import transcription_provider, tts_chain
from .consumer import CLOSE_ERROR, CLOSE_POLICY, CarrierStreamConsumer, service
from .playback import Playback, PlaybackQueueFull, PlaybackResult

# Closing transcription waits for its last results (a provider flushes them within a second or two);
# past this the stream closes without waiting, and the close goes on by itself. Daphne kills a
# disconnected connection's application after 10 s, and the stream's end must be recorded before
# that: on a loaded machine with PostgreSQL, recording it after a 5 s wait took over 3 s more.
STT_CLOSE_TIMEOUT = 3.0
_closing_sessions: set[asyncio.Task] = set()  # closes that outlived their stream, held until done

log = logging.getLogger(__name__)

# After the last TTS provider's own timeout, a moment for its error to arrive before the speak gives up.
FALLBACK_MARGIN_S = 0.5


class MediaStreamConsumer(CarrierStreamConsumer):
    """One carrier media WebSocket."""

    kind = "media stream"

    # --- connection ----------------------------------------------------------------------

    async def websocket_connect(self, message) -> None:
        self._init_state()
        self.stt = None
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
        await self._admit(self.config)

    async def _cleanup(self, reason: str) -> bool:
        if not await super()._cleanup(reason):
            return False
        if self.stt is not None:
            # Its own task, waited for a bounded time: a provider that does not answer its close (the
            # socket library waits 10 s for that) must not keep this consumer past the server's limit
            # for a disconnected connection (Daphne kills it after 10 s, before the end is recorded).
            closing = asyncio.ensure_future(self.stt.close())
            _closing_sessions.add(closing)
            closing.add_done_callback(_closing_sessions.discard)
            try:
                async with asyncio.timeout(STT_CLOSE_TIMEOUT):
                    await asyncio.shield(closing)
            except TimeoutError:
                log.info("transcription still closing after %g s; it goes on without this stream", STT_CLOSE_TIMEOUT)
            except Exception as exc:
                log.info("closing transcription failed: %s", exc)
        await self._record_closed()
        return True

    # --- inbound frames ------------------------------------------------------------------

    async def _on_other(self, frame) -> None:
        if isinstance(frame, StreamDtmf):
            if self.started:
                self.stats.counters["dtmf"] += 1
                self._spawn(service(services.stream_dtmf)(
                    call_id=self.call.call_id, stream_id=self.stream_id,
                    sequence=self.stats.counters["dtmf"], digit=frame.digit))
        elif isinstance(frame, StreamConnected):
            self.handshake_token = frame.token
        else:
            self.stats.counters["ignored"] += 1

    def _caller_audio(self, frame: StreamMedia) -> None:
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
        if not await self._start_allowed(frame):
            return
        token = frame.token or self._query_token() or getattr(self, "handshake_token", None) or self._header_token()
        try:
            call = await service(services.stream_open)(
                provider_call_id=frame.provider_call_id, stream_id=frame.stream_id, token=token)
        except services.StreamRefused as exc:
            await self._close(CLOSE_POLICY, str(exc))
            return
        if self.closing:  # the socket went away while the call was looked up
            await service(services.stream_closed)(stream_pk=call.stream_pk, reason="disconnected", stats={})
            return
        await self._join_call(call, frame.stream_id)
        self.tts = tts_chain(call.tts)
        timeout = (call.tts.get("timeoutMs") or 8000) / 1000
        # tts.timeoutMs is each provider's: the chain's fallbacks get theirs before the speak fails.
        self.playback = Playback(send=self._send_frame, frames=self.frames, synthesize=self._synthesize,
                                 stats=self.stats, synthesis_timeout=timeout,
                                 first_audio_timeout=timeout * max(1, len(self.tts.providers)) + FALLBACK_MARGIN_S,
                                 tap=self.recording)
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
        self._spawn(service(services.stream_ready)(call_id=self.call.call_id))

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
            self._spawn(service(services.stream_speech_started)(
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
        self._spawn(service(services.stream_transcript)(
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
                await self._reply(reply_to, {"type": "stream.result", "outcome": "failed", "error": str(exc)})
            return
        if reply_to:
            await self._reply(reply_to, {"type": "stream.accepted"})
            # Not cancelled with the stream's tasks: the playback settles on close and this reports it.
            report = asyncio.ensure_future(self._report(future, reply_to))
            self.reports.add(report)
            report.add_done_callback(self.reports.discard)

    async def _report(self, future: asyncio.Future[PlaybackResult], reply_to: str) -> None:
        result = await future
        await self._reply(reply_to, {"type": "stream.result", **result.as_message()})
