"""Fake OpenAI and ElevenLabs text-to-speech HTTP APIs on 127.0.0.1, with failure knobs and a request log."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from core.audio import samples_to_ulaw
from tests.fakes.base import LoopbackHttpFake, Recorded

__all__ = ["FakeTts", "Knobs", "OPENAI_RATE", "TONE_HZ"]

OPENAI_RATE = 24000  # `pcm` from /v1/audio/speech is PCM16 LE mono at 24 kHz
ULAW_RATE = 8000
TONE_HZ = 440

OPENAI_FIELDS = {"model", "input", "voice", "instructions", "response_format", "speed", "stream_format"}
OPENAI_MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"}
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar"}
ELEVENLABS_FIELDS = {"text", "model_id", "voice_settings", "language_code", "seed", "previous_text", "next_text",
                     "previous_request_ids", "next_request_ids", "apply_text_normalization",
                     "pronunciation_dictionary_locators"}
ELEVENLABS_VOICE_SETTINGS = {"stability", "similarity_boost", "style", "use_speaker_boost", "speed"}

_OPENAI_PATH = re.compile(r"^/v1/audio/speech$")
_ELEVENLABS_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice_id>[^/]+)/stream$")


@dataclass
class Knobs:
    """How one provider's route misbehaves; the default is a healthy stream."""

    fail_status: int | None = None  # answer with this status and `fail_body` instead of audio
    fail_body: Any = None  # JSON-able, or bytes sent as they are
    drop_after_chunks: int | None = None  # send this many audio chunks, then close the connection
    stall_after_chunks: int | None = None  # send this many chunks, then go silent until the fake stops
    empty: bool = False  # 200 with a body of zero bytes


class _ValidationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeTts(LoopbackHttpFake):
    """OpenAI `POST /v1/audio/speech` and ElevenLabs `POST /v1/text-to-speech/{voice_id}/stream`.

    Both answer with a 440 Hz tone lasting `duration_ms(text)`, sent as a chunked body in pieces of
    `chunk_ms` with a short pause between them, so clients really see the audio arrive in parts.
    OpenAI chunks are one byte longer than a whole number of samples, so PCM samples straddle chunks.
    """

    def __init__(self, *, openai_key: str = "sk-fake-openai", elevenlabs_key: str = "xi-fake-eleven",
                 ms_per_char: int = 40, chunk_ms: int = 100, chunk_gap: float = 0.01) -> None:
        super().__init__()
        self.openai_key = openai_key
        self.elevenlabs_key = elevenlabs_key
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.chunk_gap = chunk_gap
        self.voices: set[str] | None = None  # ElevenLabs voice ids that exist (None: any)
        self.requests: list[Recorded] = []
        self.connections = 0  # TCP connections accepted (a client that keeps them alive opens few)
        self.errors: list[BaseException] = []  # crashes in the fake itself
        self.knobs = {"openai": Knobs(), "elevenlabs": Knobs()}
        self.lock = threading.Lock()

    thread_name = "fake-tts"

    def handler_class(self) -> type:
        return _Handler

    @property
    def url(self) -> str:
        """Base URL without a path: ElevenLabs' base; OpenAI's is url + "/v1"."""
        return self.origin

    # ---- knobs (provider None: both routes)

    def fail(self, provider: str | None, status: int, body: Any = None) -> None:
        """Answer with `status` and `body` (default: the provider's own error shape)."""
        for name in self._names(provider):
            self.knobs[name].fail_status, self.knobs[name].fail_body = status, body

    def drop_mid_stream(self, provider: str | None, after_chunks: int = 2) -> None:
        for name in self._names(provider):
            self.knobs[name].drop_after_chunks = after_chunks

    def stall(self, provider: str | None, after_chunks: int = 0) -> None:
        for name in self._names(provider):
            self.knobs[name].stall_after_chunks = after_chunks

    def return_empty(self, provider: str | None) -> None:
        for name in self._names(provider):
            self.knobs[name].empty = True

    def reset(self) -> None:
        self.knobs = {"openai": Knobs(), "elevenlabs": Knobs()}

    def _names(self, provider: str | None) -> list[str]:
        if provider is not None and provider not in self.knobs:
            raise ValueError(f"unknown provider {provider!r}")
        return [provider] if provider else list(self.knobs)

    # ---- what the fake sends

    def duration_ms(self, text: str) -> int:
        """Length of the tone answered for `text`: proportional to its length, like real speech."""
        return max(1, len(text)) * self.ms_per_char

    def pcm_for(self, text: str) -> bytes:
        return _tone(self.duration_ms(text), OPENAI_RATE).astype("<i2").tobytes()

    def ulaw_for(self, text: str) -> bytes:
        return samples_to_ulaw(_tone(self.duration_ms(text), ULAW_RATE))

    def requests_to(self, provider: str) -> list[Recorded]:
        pattern = _OPENAI_PATH if provider == "openai" else _ELEVENLABS_PATH
        with self.lock:
            return [r for r in self.requests if pattern.match(r.path)]

    # ---- routes

    def _record(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Recorded:
        parts = urlsplit(raw_path)
        lower = {name.lower(): value for name, value in headers.items()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = Recorded(method=method, path=parts.path, query=parse_qs(parts.query, keep_blank_values=True),
                          headers=lower, body=body, form=None, json=parsed)
        with self.lock:
            self.requests.append(record)
        return record

    def _openai(self, record: Recorded) -> tuple[int, Any, bytes | None]:
        """(status, error body, audio): audio is None when answering with an error."""
        if record.headers.get("authorization") != f"Bearer {self.openai_key}":
            return 401, _openai_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), None
        knobs = self.knobs["openai"]
        if knobs.fail_status is not None:
            return knobs.fail_status, knobs.fail_body or _openai_error(
                f"The server had an error while processing your request ({knobs.fail_status}).", "server_error"), None
        try:
            body = _json_object(record)
            unknown = set(body) - OPENAI_FIELDS
            if unknown:
                raise _ValidationError(400, f"Unrecognized request argument supplied: {', '.join(sorted(unknown))}")
            text = body.get("input")
            if not isinstance(text, str) or not text:
                raise _ValidationError(400, "'input' is a required property")
            if len(text) > 4096:
                raise _ValidationError(400, "'input' is too long (max 4096 characters)")
            if body.get("model") not in OPENAI_MODELS:
                raise _ValidationError(400, f"Invalid model: {body.get('model')!r}")
            if body.get("voice") not in OPENAI_VOICES:
                raise _ValidationError(400, f"Invalid voice: {body.get('voice')!r}")
            if body.get("response_format") != "pcm":
                raise _ValidationError(400, "this fake only serves response_format 'pcm'")
            speed = body.get("speed", 1.0)
            if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
                raise _ValidationError(400, f"Invalid speed: {speed!r}")
        except _ValidationError as exc:
            return exc.status, _openai_error(str(exc), "invalid_request_error"), None
        return 200, None, b"" if knobs.empty else self.pcm_for(text)

    def _elevenlabs(self, record: Recorded, voice_id: str) -> tuple[int, Any, bytes | None]:
        if record.headers.get("xi-api-key") != self.elevenlabs_key:
            return 401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, None
        knobs = self.knobs["elevenlabs"]
        if knobs.fail_status is not None:
            return knobs.fail_status, knobs.fail_body or {
                "detail": {"status": "server_error", "message": f"Internal error ({knobs.fail_status})"}}, None
        if self.voices is not None and voice_id not in self.voices:
            return 404, {"detail": {"status": "voice_not_found",
                                    "message": f"A voice with the voice_id {voice_id} was not found."}}, None
        try:
            if record.query.get("output_format") != ["ulaw_8000"]:
                raise _ValidationError(400, "this fake only serves output_format=ulaw_8000")
            body = _json_object(record)
            unknown = set(body) - ELEVENLABS_FIELDS
            if unknown:
                raise _ValidationError(422, f"unexpected fields: {', '.join(sorted(unknown))}")
            text = body.get("text")
            if not isinstance(text, str) or not text:
                raise _ValidationError(422, "text: field required")
            if not isinstance(body.get("model_id", ""), str):
                raise _ValidationError(422, "model_id must be a string")
            unknown_settings = set(body.get("voice_settings") or {}) - ELEVENLABS_VOICE_SETTINGS
            if unknown_settings:
                raise _ValidationError(422, f"unknown voice_settings: {', '.join(sorted(unknown_settings))}")
            if body.get("apply_text_normalization", "auto") not in ("auto", "on", "off"):
                raise _ValidationError(422, "apply_text_normalization must be auto, on or off")
            seed = body.get("seed", 0)
            if not isinstance(seed, int) or not 0 <= seed <= 4294967295:
                raise _ValidationError(422, "seed must be an integer between 0 and 4294967295")
        except _ValidationError as exc:
            return exc.status, {"detail": {"status": "invalid_request", "message": str(exc)}}, None
        return 200, None, b"" if knobs.empty else self.ulaw_for(text)

    def _chunk_bytes(self, provider: str) -> int:
        if provider == "openai":
            return self.chunk_ms * OPENAI_RATE // 1000 * 2 + 1
        return self.chunk_ms * ULAW_RATE // 1000


def _tone(duration_ms: int, rate: int) -> np.ndarray:
    t = np.arange(duration_ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)


def _openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _json_object(record: Recorded) -> dict[str, Any]:
    if not record.headers.get("content-type", "").startswith("application/json"):
        raise _ValidationError(400, "Content-Type must be application/json")
    if not isinstance(record.json, dict):
        raise _ValidationError(400, "the body is not a JSON object")
    return record.json


class _Handler(BaseHTTPRequestHandler):
    """One request: record it, route it, then answer with an error or a chunked audio body."""

    protocol_version = "HTTP/1.1"  # chunked transfer encoding needs it
    fake: FakeTts  # set on the per-server subclass

    def setup(self) -> None:
        super().setup()
        with self.fake.lock:
            self.fake.connections += 1  # one handler per TCP connection, however many requests it carries

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is FakeTts.requests

    def do_GET(self) -> None:
        self._read_and_record()
        self._send_json(405, {"error": {"message": "method not allowed"}})

    def do_POST(self) -> None:
        record = self._read_and_record()
        try:
            if _OPENAI_PATH.match(record.path):
                provider, (status, error, audio) = "openai", self.fake._openai(record)
            elif match := _ELEVENLABS_PATH.match(record.path):
                provider, (status, error, audio) = "elevenlabs", self.fake._elevenlabs(record, match["voice_id"])
            else:
                self._send_json(404, {"error": {"message": f"no route for {record.path}"}})
                return
        except Exception as exc:  # a fake bug must surface as a 500, not a hung client
            self.fake.errors.append(exc)
            self._send_json(500, {"error": {"message": f"fake TTS crashed: {exc!r}"}})
            return
        record.status = status
        try:
            if audio is None:
                self._send_json(status, error)
            else:
                self._send_audio(provider, audio)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout test): nothing left to answer

    def _read_and_record(self) -> Recorded:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return self.fake._record(self.command, self.path, dict(self.headers.items()), body)

    def _send_json(self, status: int, body: Any) -> None:
        # bytes go out as they are: a proxy's HTML error page rather than the API's JSON
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_audio(self, provider: str, audio: bytes) -> None:
        fake, knobs = self.fake, self.fake.knobs[provider]
        self.send_response(200)
        self.send_header("Content-Type", "audio/pcm" if provider == "openai" else "audio/basic")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        size = fake._chunk_bytes(provider)
        pieces = [audio[i:i + size] for i in range(0, len(audio), size)]
        for index, piece in enumerate(pieces):
            if knobs.stall_after_chunks == index:
                fake._release.wait(30)  # until the fake stops; the client's timeout fires first
                self.close_connection = True
                return
            if knobs.drop_after_chunks == index:
                self.close_connection = True  # no terminating chunk: the body is cut short
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            if fake.chunk_gap:
                fake._release.wait(fake.chunk_gap)
        if knobs.stall_after_chunks is not None and knobs.stall_after_chunks >= len(pieces):
            fake._release.wait(30)
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
