"""ElevenLabs Scribe realtime speech-to-text as a streaming transcription provider.

Error reports are sorted three ways:
- auth_error, quota_exceeded, unaccepted_terms(_error): a new connection would fail the same
  way, so the session gives up at once (listener.on_error, socket closed, no reconnects);
- session_time_limit_exceeded: this session is spent, so the socket is closed and the base
  class reconnects to a fresh one;
- anything else (rate limits, throttled commits, bad chunks, transcriber errors): logged; if the
  server closes the socket over it, the base class reconnects as for any drop.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .base import TranscriptListener, TranscriptionProvider, TranscriptionSession
from .cloud import CloudSession, Utterance, b64, describe_error, number_setting

log = logging.getLogger(__name__)

DEFAULT_MODEL = "scribe_v2_realtime"
DEFAULT_SILENCE_MS = 800
# The range the API accepts for vad_silence_threshold_secs.
MIN_SILENCE_S, MAX_SILENCE_S = 0.3, 3.0

FATAL_ERRORS = frozenset({"auth_error", "quota_exceeded", "unaccepted_terms", "unaccepted_terms_error"})
RENEW_ERRORS = frozenset({"session_time_limit_exceeded"})
ERRORS = FATAL_ERRORS | RENEW_ERRORS | frozenset({
    "error", "commit_throttled", "transcriber_error", "rate_limited", "input_error", "invalid_request",
    "queue_overflow", "resource_exhausted", "chunk_size_exceeded", "insufficient_audio_activity",
})


class ElevenLabsSession(CloudSession):
    """Server-side VAD commits; partial_transcript and committed_transcript carry the text."""

    type_key = "message_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.utterance = Utterance()
        self._socket: Any = None
        self._renewal: asyncio.Task | None = None

    def url(self) -> str:
        provider = self.provider
        silence_s = number_setting(provider, "silenceDurationMs", DEFAULT_SILENCE_MS, minimum=1) / 1000
        # Outside the accepted range the server refuses the session; the nearest allowed value is closer to what was meant.
        silence_s = min(max(silence_s, MIN_SILENCE_S), MAX_SILENCE_S)
        return self.endpoint("/v1/speech-to-text/realtime", {
            "model_id": provider.setting("model", DEFAULT_MODEL),
            "audio_format": "ulaw_8000",
            "commit_strategy": "vad",
            "vad_silence_threshold_secs": f"{silence_s:g}",
            "language_code": self.language,
        })

    def headers(self) -> dict[str, str]:
        return {"xi-api-key": str(self.provider.api_key())}

    async def configure(self, ws: Any) -> None:
        await self.expect(ws, "session_started")
        self._socket = ws

    def error_text(self, message: dict[str, Any]) -> str | None:
        kind = message.get("message_type")
        if kind not in ERRORS:
            return None
        return f"{kind}: {describe_error(message.get('error') or message.get('message'))}"

    def chunk_message(self, ulaw: bytes) -> str:
        return json.dumps({"message_type": "input_audio_chunk", "audio_base_64": b64(ulaw), "commit": False, "sample_rate": 8000})

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("message_type")
        if kind == "partial_transcript":
            text = self.utterance.hear(str(message.get("text") or ""))
            if text:
                # Scribe has no speech-start event; the first words of a turn are the barge-in trigger.
                self.report_speech(self.utterance)
                self.listener.on_partial(text)
        elif kind == "committed_transcript":
            self.utterance.lock(str(message.get("text") or ""))
            self.report_final(self.utterance)
        elif kind in FATAL_ERRORS:
            self.give_up(self.error_text(message) or str(kind))
        elif kind in RENEW_ERRORS:
            log.info("elevenlabs transcription: %s; starting a new session", self.error_text(message))
            if self._socket is not None:
                self._renewal = asyncio.get_running_loop().create_task(self._socket.close())
        elif kind in ERRORS:
            log.warning("elevenlabs transcription error: %s", self.error_text(message))


class ElevenLabsTranscription(TranscriptionProvider):
    name = "elevenlabs"
    api_key_env = "ELEVENLABS_API_KEY"
    default_base_url = "wss://api.elevenlabs.io"

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        return ElevenLabsSession(self, listener, language=language)
