"""Loopback fakes of the cloud streaming speech-to-text WebSocket APIs.

Each fake runs in the test's event loop, checks the provider's auth header (HTTP 401 on the
upgrade otherwise), records every connection (path, query, headers, frames) and plays a script:
`script` holds what the caller says, one entry per utterance. The fake hears speech by the energy
of the decoded μ-law (its own detector, independent of the gateway's), releases one scripted word
every FRAMES_PER_WORD loud frames as interim text and ends the utterance after the protocol's
configured silence, counted in audio time, so tests can feed frames as fast as they like.

Failure knobs (plain attributes, changeable mid-test): `refuse_status` refuses new upgrades,
`drop_after_audio`/`drop_code`/`drops` close connections after some audio frames, `silent` makes
the fake ignore everything (no acks), `garbage_on_open` sends frames that are not JSON objects
first; `send_raw`, `send_event`, `send_error` and `close` act on the newest connection.
"""
from __future__ import annotations

import asyncio
import contextlib
import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.audio import BYTES_PER_MS, FRAME_BYTES, rms, ulaw_to_samples
from tests.waiting import await_until

from .server import FakeWebsocketServer

__all__ = [
    "FakeDeepgram",
    "FakeElevenLabs",
    "FakeMistral",
    "FakeOpenAITranscription",
    "FakeStt",
    "FakeXai",
    "Frame",
    "SttConnection",
]

LOUD_RMS = 1000.0
FRAMES_PER_WORD = 5


@dataclass
class Frame:
    """One frame the client sent: "text" or "binary", with the parsed JSON of a text frame (None if not JSON)."""

    kind: str
    data: str | bytes
    json: Any = None


@dataclass
class Speech:
    active: bool = False
    words: list[str] = field(default_factory=list)
    heard: int = 0  # words released as interim text so far
    locked: int = 0  # words already sent as locked/final segments
    loud_frames: int = 0
    quiet_ms: int = 0
    after_ms: int = 0  # quiet since the last utterance ended
    ended: int = 0


@dataclass
class SttConnection:
    """One WebSocket the client opened, as the fake saw it."""

    ws: ServerConnection
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    frames: list[Frame] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    audio: bytearray = field(default_factory=bytearray)
    audio_frames: int = 0
    speech: Speech = field(default_factory=Speech)
    transcript: list[str] = field(default_factory=list)  # every utterance's text, for "done" events
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    hung_up: int | None = None  # the close code the fake closed with
    last_input: float = 0.0

    def messages(self, kind: str | None = None, key: str = "type") -> list[dict[str, Any]]:
        """The JSON objects the client sent, optionally only those of one kind."""
        found = [f.json for f in self.frames if f.kind == "text" and isinstance(f.json, dict)]
        return [m for m in found if kind is None or m.get(key) == kind]

    def events(self, kind: str, key: str = "type") -> list[dict[str, Any]]:
        """The JSON events the fake sent of one kind."""
        return [m for m in self.sent if isinstance(m, dict) and m.get(key) == kind]


class FakeStt(FakeWebsocketServer):
    """The protocol-independent part; subclasses say how their protocol looks."""

    path = "/"

    def __init__(self, *, api_key: str = "test-key", script: list[str] | None = None) -> None:
        self.api_key = api_key
        self.script = list(script or ["hello there how are you"])
        self.utterances = 0
        self.connections: list[SttConnection] = []
        self.refused = 0
        # knobs
        self.refuse_status: int | None = None
        self.drop_after_audio: int | None = None
        self.drop_code = 1011
        self.drop_reason = "internal error"
        self.drops = 1
        self.silent = False
        self.garbage_on_open = False  # send frames that are not JSON objects before anything else
        self.keep_frames = True  # record every frame and all audio (off for long benchmark runs)
        self._init_server()

    # --- what a protocol defines ----------------------------------------------------------

    def authorized(self, headers: dict[str, str], query: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.api_key}"

    async def on_open(self, conn: SttConnection) -> None:
        """Right after the upgrade."""

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        """A JSON text frame."""

    async def on_binary(self, conn: SttConnection, data: bytes) -> None:
        await self.hear(conn, data)

    def end_ms(self, conn: SttConnection) -> int | None:
        """Silence that ends an utterance (None: only the client ends turns)."""
        return None

    async def speech_started(self, conn: SttConnection) -> None:
        """Loud audio began an utterance (conn.speech.words holds its script)."""

    async def progressed(self, conn: SttConnection) -> None:
        """Another scripted word was heard (conn.speech.heard counts them)."""

    async def speech_ended(self, conn: SttConnection) -> None:
        """The utterance ended; conn.speech.words is its whole text."""

    async def quiet(self, conn: SttConnection, after_ms: int) -> None:
        """More silence after an utterance ended."""

    def error_event(self, text: str, kind: str = "error") -> dict[str, Any]:
        """The protocol's error report (`kind` matters where errors come in several types)."""
        return {"type": kind, "error": {"message": text}}

    # --- shared behaviour -----------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if self.refuse_status is not None:
            self.refused += 1
            return connection.respond(self.refuse_status, "refused by the fake\n")
        if parts.path != self.path:
            return connection.respond(404, f"no such path {parts.path}\n")
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        if not self.authorized(headers, dict(parse_qsl(parts.query))):
            return connection.respond(401, "missing or wrong credentials\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        conn = SttConnection(
            ws=ws, path=parts.path, query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={name.lower(): value for name, value in ws.request.headers.raw_items()},
            last_input=asyncio.get_running_loop().time(),
        )
        self.connections.append(conn)
        try:
            if self.garbage_on_open:
                for junk in ("this is not json {", b"\x00\xff binary", "[1, 2, 3]", '"a string"'):
                    await ws.send(junk)
            if not self.silent:
                await self.on_open(conn)
            async for raw in ws:
                conn.last_input = asyncio.get_running_loop().time()
                if isinstance(raw, bytes):
                    if self.keep_frames:
                        conn.frames.append(Frame("binary", raw))
                    if not self.silent:
                        await self.on_binary(conn, raw)
                    continue
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = None
                if self.keep_frames:
                    conn.frames.append(Frame("text", raw, message))
                if isinstance(message, dict) and not self.silent:
                    await self.on_json(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    def hang_up(self, conn: SttConnection, code: int, reason: str = "") -> None:
        """Close a connection without blocking its handler: awaiting the closing handshake inline
        would stop the handler reading, so the client's close reply could stay stuck behind audio."""
        if conn.hung_up is None:
            conn.hung_up = code
            self._spawn(conn.ws.close(code, reason))

    async def emit(self, conn: SttConnection, message: dict[str, Any]) -> None:
        conn.sent.append(message)
        try:
            await conn.ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    async def hear(self, conn: SttConnection, audio: bytes) -> None:
        """Caller audio: run the script on each 20 ms of it (a client may join frames), then the drop knob."""
        if self.keep_frames:
            conn.audio += audio
        for start in range(0, len(audio), FRAME_BYTES):
            await self._hear_frame(conn, audio[start:start + FRAME_BYTES])
            if conn.hung_up is not None:
                return

    async def _hear_frame(self, conn: SttConnection, audio: bytes) -> None:
        conn.audio_frames += 1
        speech = conn.speech
        if rms(ulaw_to_samples(audio)) >= LOUD_RMS:
            if not speech.active:
                speech.active = True
                speech.words = self.next_utterance().split()
                speech.heard = speech.locked = speech.loud_frames = 0
                await self.speech_started(conn)
            speech.quiet_ms = 0
            speech.loud_frames += 1
            if speech.loud_frames % FRAMES_PER_WORD == 0 and speech.heard < len(speech.words):
                speech.heard += 1
                await self.progressed(conn)
        elif speech.active:
            speech.quiet_ms += len(audio) // BYTES_PER_MS
            end = self.end_ms(conn)
            if end is not None and speech.quiet_ms >= end:
                await self.end_utterance(conn)
        elif speech.ended:
            speech.after_ms += len(audio) // BYTES_PER_MS
            await self.quiet(conn, speech.after_ms)
        if self.drop_after_audio is not None and self.drops > 0 and conn.audio_frames == self.drop_after_audio:
            self.drops -= 1
            self.hang_up(conn, self.drop_code, self.drop_reason)

    async def end_utterance(self, conn: SttConnection) -> None:
        speech = conn.speech
        speech.active = False
        speech.ended += 1
        speech.after_ms = 0
        conn.transcript.append(" ".join(speech.words))
        await self.speech_ended(conn)

    def next_utterance(self) -> str:
        text = self.script[min(self.utterances, len(self.script) - 1)]
        self.utterances += 1
        return text

    # --- test helpers ----------------------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        """Send any frame (e.g. one that is not JSON) on the newest connection."""
        await self.last.ws.send(data)

    async def send_event(self, message: dict[str, Any]) -> None:
        await self.emit(self.last, message)

    async def send_error(self, text: str = "scripted failure", kind: str | None = None) -> None:
        await self.emit(self.last, self.error_event(text) if kind is None else self.error_event(text, kind))

    async def close(self, code: int = 1011, reason: str = "") -> None:
        self.hang_up(self.last, code, reason)

    async def wait_connections(self, count: int) -> None:
        await await_until(lambda: len(self.connections) >= count, f"{count} connections to {type(self).__name__}")


def _words_text(words: list[str]) -> str:
    return " ".join(words)


# --- OpenAI realtime transcription (§7.2) -------------------------------------------------------

MANUAL_TURN_MODELS = ("gpt-live-transcribe", "gpt-realtime-whisper")
AUDIO_FORMATS = ("audio/pcmu", "audio/pcma", "audio/pcm")


class FakeOpenAITranscription(FakeStt):
    """`/v1/realtime?intent=transcription`: session.update → session.updated; server VAD or commits."""

    path = "/v1/realtime"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_transcription = False  # knob: …failed instead of …completed
        self._items = 0

    def _input(self, conn: SttConnection) -> dict[str, Any]:
        return conn.config.setdefault("audio", {}).setdefault("input", {})

    async def on_open(self, conn: SttConnection) -> None:
        conn.config = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": None,
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500},
        }}}
        await self.emit(conn, {"type": "session.created", "session": conn.config})

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "session.update":
            await self._update(conn, message.get("session") or {})
        elif kind == "input_audio_buffer.append":
            conn.config["buffered"] = conn.config.get("buffered", 0) + 1
            await self.hear(conn, base64.b64decode(message.get("audio") or ""))
        elif kind == "input_audio_buffer.commit":
            if not conn.config.get("buffered"):
                await self.emit(conn, {"type": "error", "error": {
                    "type": "invalid_request_error", "code": "input_audio_buffer_commit_empty", "message": "buffer is empty"}})
                return
            await self.end_utterance(conn)
        else:
            await self.emit(conn, {"type": "error", "error": {"type": "invalid_request_error", "message": f"unknown event {kind}"}})

    async def _update(self, conn: SttConnection, session: dict[str, Any]) -> None:
        if session.get("type") != "transcription":
            await self.emit(conn, {"type": "error", "error": {"type": "invalid_request_error", "param": "session.type",
                                                               "message": "session.type must be transcription"}})
            return
        wanted = (session.get("audio") or {}).get("input") or {}
        fmt = (wanted.get("format") or {}).get("type")
        if fmt is not None and fmt not in AUDIO_FORMATS:
            await self.emit(conn, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "param": "session.audio.input.format.type", "message": "bad format"}})
            return
        model = (wanted.get("transcription") or {}).get("model")
        if model in MANUAL_TURN_MODELS and wanted.get("turn_detection") is not None:
            await self.emit(conn, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "param": "session.audio.input.turn_detection",
                                                               "message": f"{model} does not support turn detection"}})
            return
        self._input(conn).update(wanted)
        await self.emit(conn, {"type": "session.updated", "session": conn.config})

    def _server_vad(self, conn: SttConnection) -> bool:
        return bool(self._input(conn).get("turn_detection"))

    def end_ms(self, conn: SttConnection) -> int | None:
        detection = self._input(conn).get("turn_detection")
        return int(detection.get("silence_duration_ms", 500)) if detection else None

    async def speech_started(self, conn: SttConnection) -> None:
        self._items += 1
        conn.config["item"] = f"item_{self._items}"
        if self._server_vad(conn):
            await self.emit(conn, {"type": "input_audio_buffer.speech_started", "audio_start_ms": len(conn.audio) // 8,
                                   "item_id": conn.config["item"]})

    async def speech_ended(self, conn: SttConnection) -> None:
        item = conn.config.get("item", "item_0")
        if self._server_vad(conn):
            await self.emit(conn, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": len(conn.audio) // 8,
                                   "item_id": item})
        await self.emit(conn, {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None})
        conn.config["buffered"] = 0
        words = conn.speech.words
        if self.fail_transcription:
            await self.emit(conn, {"type": "conversation.item.input_audio_transcription.failed", "item_id": item,
                                   "content_index": 0, "error": {"type": "server_error", "message": "scripted failure"}})
            return
        for index, word in enumerate(words):
            await self.emit(conn, {"type": "conversation.item.input_audio_transcription.delta", "item_id": item,
                                   "content_index": 0, "delta": word if index == 0 else " " + word})
        await self.emit(conn, {"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                               "content_index": 0, "transcript": _words_text(words),
                               "usage": {"type": "duration", "seconds": 1}})


# --- Deepgram /v1/listen (§7.4) ------------------------------------------------------------------


class FakeDeepgram(FakeStt):
    """Binary audio; KeepAlive/Finalize/CloseStream text frames; Results, SpeechStarted, UtteranceEnd, Metadata."""

    path = "/v1/listen"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.speech_final = True  # knob: False = noise keeps speech_final away, only UtteranceEnd ends turns
        self.reject_audio = False  # knob: close 1008 DATA-0000 on the first audio frame
        self.idle_timeout: float | None = None  # knob: close 1011 NET-0001 after this long without input

    def authorized(self, headers: dict[str, str], query: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Token {self.api_key}"

    async def on_open(self, conn: SttConnection) -> None:
        if self.idle_timeout is not None:
            self._spawn(self._watch_idle(conn))

    async def _watch_idle(self, conn: SttConnection) -> None:
        """Hang up once `idle_timeout` passes with no input: wake at that deadline (or when the socket closes)."""
        loop = asyncio.get_running_loop()
        while self.idle_timeout is not None and not conn.closed.is_set():
            remaining = conn.last_input + self.idle_timeout - loop.time()
            if remaining <= 0:
                self.hang_up(conn, 1011, "NET-0001")
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await conn.closed.wait()

    async def on_binary(self, conn: SttConnection, data: bytes) -> None:
        if self.reject_audio:
            self.hang_up(conn, 1008, "DATA-0000")
            return
        await self.hear(conn, data)

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "Finalize":
            await self.emit(conn, self._results(conn, is_final=True, speech_final=False, from_finalize=True))
        elif kind == "CloseStream":
            if conn.speech.active:
                await self.end_utterance(conn)
            await self.emit(conn, {"type": "Metadata", "transaction_key": "deprecated", "request_id": "fake-request",
                                   "sha256": "0" * 64, "created": "2026-11-30T00:00:00Z",
                                   "duration": len(conn.audio) / 8000, "channels": 1})
            self.hang_up(conn, 1000)

    def end_ms(self, conn: SttConnection) -> int | None:
        return int(conn.query.get("endpointing", 10))

    def _results(self, conn: SttConnection, *, is_final: bool, speech_final: bool, from_finalize: bool = False,
                 upto: int | None = None) -> dict[str, Any]:
        speech = conn.speech
        words = speech.words[speech.locked:speech.heard if upto is None else upto]
        if is_final:
            speech.locked = speech.heard if upto is None else upto
        return {
            "type": "Results", "channel_index": [0, 1], "duration": 0.5, "start": 0.0,
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": _words_text(words), "confidence": 0.98,
                                          "words": [{"word": w, "start": 0.0, "end": 0.1, "confidence": 0.98} for w in words]}]},
            "metadata": {"request_id": "fake-request", "model_info": {"name": conn.query.get("model")}, "model_uuid": "fake"},
        }

    async def speech_started(self, conn: SttConnection) -> None:
        if conn.query.get("vad_events") == "true":
            await self.emit(conn, {"type": "SpeechStarted", "channel": [0, 1], "timestamp": len(conn.audio) / 8000})

    async def progressed(self, conn: SttConnection) -> None:
        speech = conn.speech
        if speech.heard == len(speech.words) // 2:
            # Half way the first segment locks, so clients must concatenate final segments.
            await self.emit(conn, self._results(conn, is_final=True, speech_final=False))
        elif conn.query.get("interim_results") == "true":
            await self.emit(conn, self._results(conn, is_final=False, speech_final=False))

    async def speech_ended(self, conn: SttConnection) -> None:
        await self.emit(conn, self._results(conn, is_final=True, speech_final=self.speech_final, upto=len(conn.speech.words)))

    async def quiet(self, conn: SttConnection, after_ms: int) -> None:
        # The utterance ended `endpointing` ms after the last word; UtteranceEnd comes utterance_end_ms after it.
        utterance_end = conn.query.get("utterance_end_ms")
        if utterance_end and after_ms >= int(utterance_end) - self.end_ms(conn) and not conn.config.get("ue_sent"):
            conn.config["ue_sent"] = True
            await self.emit(conn, {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.0})

    async def end_utterance(self, conn: SttConnection) -> None:
        conn.config["ue_sent"] = False
        await super().end_utterance(conn)

    def error_event(self, text: str, kind: str = "Error") -> dict[str, Any]:
        return {"type": kind, "description": text, "message": text, "variant": "scripted"}


# --- ElevenLabs Scribe realtime (§7.5) -----------------------------------------------------------


class FakeElevenLabs(FakeStt):
    """session_started on open; input_audio_chunk JSON; partial_transcript / committed_transcript."""

    path = "/v1/speech-to-text/realtime"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.open_error: str | None = None  # knob: send this error type instead of session_started, then close

    def authorized(self, headers: dict[str, str], query: dict[str, str]) -> bool:
        return self.api_key in (headers.get("xi-api-key"), query.get("token"))

    async def on_open(self, conn: SttConnection) -> None:
        if self.open_error:
            await self.emit(conn, self.error_event("scripted failure", self.open_error))
            self.hang_up(conn, 1008, self.open_error)
            return
        query = conn.query
        await self.emit(conn, {"message_type": "session_started", "session_id": f"fake-{len(self.connections)}", "config": {
            "sample_rate": 8000, "audio_format": query.get("audio_format"), "model_id": query.get("model_id"),
            "commit_strategy": query.get("commit_strategy", "manual"),
            "vad_silence_threshold_secs": query.get("vad_silence_threshold_secs"),
            "language_code": query.get("language_code"),
        }})

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        if message.get("message_type") != "input_audio_chunk":
            await self.emit(conn, self.error_event(f"unknown message {message.get('message_type')}", "input_error"))
            return
        audio = base64.b64decode(message.get("audio_base_64") or "")
        if audio:
            await self.hear(conn, audio)
        if message.get("commit") and conn.speech.active:
            await self.end_utterance(conn)

    def end_ms(self, conn: SttConnection) -> int | None:
        if conn.query.get("commit_strategy") != "vad":
            return None
        return int(float(conn.query.get("vad_silence_threshold_secs", "1.5")) * 1000)

    async def progressed(self, conn: SttConnection) -> None:
        speech = conn.speech
        await self.emit(conn, {"message_type": "partial_transcript", "text": _words_text(speech.words[:speech.heard])})

    async def speech_ended(self, conn: SttConnection) -> None:
        await self.emit(conn, {"message_type": "committed_transcript", "text": _words_text(conn.speech.words)})

    def error_event(self, text: str, kind: str = "error") -> dict[str, Any]:
        return {"message_type": kind, "error": text}


# --- Mistral realtime transcription (§7.6) ----------------------------------------------------


MISTRAL_MAX_APPEND = 262_144


class FakeMistral(FakeStt):
    """session.created on open; session.update only before audio; text deltas per word; flush/end."""

    path = "/v1/audio/transcriptions/realtime"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segment_on_flush = False  # knob: send transcription.segment after a flush

    async def on_open(self, conn: SttConnection) -> None:
        conn.config = {"request_id": f"fake-{len(self.connections)}", "model": conn.query.get("model"),
                       "audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}, "target_streaming_delay_ms": 480}
        await self.emit(conn, {"type": "session.created", "session": dict(conn.config)})

    def _error(self, message: str, code: int) -> dict[str, Any]:
        return {"type": "error", "error": {"message": message, "code": code}}

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "session.update":
            if conn.audio_frames:
                await self.emit(conn, self._error("session settings are frozen once audio started", 3001))
                return
            conn.config.update(message.get("session") or {})
            await self.emit(conn, {"type": "session.updated", "session": dict(conn.config)})
        elif kind == "input_audio.append":
            audio = base64.b64decode(message.get("audio") or "")
            if len(audio) > MISTRAL_MAX_APPEND:
                await self.emit(conn, self._error("audio chunk too large", 3002))
                return
            await self.hear(conn, audio)
        elif kind == "input_audio.flush":
            if conn.speech.active:
                await self.end_utterance(conn)
        elif kind == "input_audio.end":
            await self.emit(conn, {"type": "transcription.done", "text": " ".join(conn.transcript),
                                   "model": conn.config.get("model")})
            self.hang_up(conn, 1000)
        else:
            await self.emit(conn, self._error(f"unknown message {kind}", 3000))

    async def _delta(self, conn: SttConnection, word: str) -> None:
        # Deltas are append-only text, so every word but the session's first brings its space.
        await self.emit(conn, {"type": "transcription.text.delta", "text": (" " if conn.config.get("text_sent") else "") + word})
        conn.config["text_sent"] = True

    async def progressed(self, conn: SttConnection) -> None:
        speech = conn.speech
        await self._delta(conn, speech.words[speech.heard - 1])
        speech.locked = speech.heard

    async def speech_ended(self, conn: SttConnection) -> None:
        speech = conn.speech
        for word in speech.words[speech.locked:]:
            await self._delta(conn, word)
        speech.locked = len(speech.words)
        if self.segment_on_flush:
            await self.emit(conn, {"type": "transcription.segment", "text": _words_text(speech.words),
                                   "start": 0.0, "end": 1.0})


# --- xAI STT (§7.7) ------------------------------------------------------------------------------


class FakeXai(FakeStt):
    """transcript.created on open; binary audio; transcript.partial; audio.done → transcript.done."""

    path = "/v1/stt"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.close_after_final = False  # knob: one utterance per connection, then close 1000
        self.close_on_done = True

    async def on_open(self, conn: SttConnection) -> None:
        await self.emit(conn, {"type": "transcript.created", "id": f"fake-{len(self.connections)}"})

    async def on_json(self, conn: SttConnection, message: dict[str, Any]) -> None:
        if message.get("type") == "audio.done":
            speech = conn.speech
            leftover = speech.words[speech.locked:] if speech.active else []
            speech.active = False
            await self.emit(conn, {"type": "transcript.done", "text": _words_text(leftover),
                                   "duration": len(conn.audio) / 8000})
            if self.close_on_done:
                self.hang_up(conn, 1000)

    def end_ms(self, conn: SttConnection) -> int | None:
        return int(conn.query.get("endpointing", 10))

    def _partial(self, conn: SttConnection, words: list[str], *, is_final: bool, speech_final: bool) -> dict[str, Any]:
        return {"type": "transcript.partial", "text": _words_text(words), "is_final": is_final, "speech_final": speech_final,
                "words": [{"word": w} for w in words], "start": 0.0, "duration": 0.5}

    async def progressed(self, conn: SttConnection) -> None:
        speech = conn.speech
        words = speech.words[speech.locked:speech.heard]
        if speech.heard == len(speech.words) // 2:
            # A locked chunk, as the service does for long speech.
            await self.emit(conn, self._partial(conn, words, is_final=True, speech_final=False))
            speech.locked = speech.heard
        elif conn.query.get("interim_results") == "true":
            await self.emit(conn, self._partial(conn, words, is_final=False, speech_final=False))

    async def speech_ended(self, conn: SttConnection) -> None:
        speech = conn.speech
        await self.emit(conn, self._partial(conn, speech.words[speech.locked:], is_final=True, speech_final=True))
        speech.locked = len(speech.words)
        if self.close_after_final:
            self.hang_up(conn, 1000)

    def error_event(self, text: str, kind: str = "error") -> dict[str, Any]:
        return {"type": kind, "message": text}
