"""Deepgram live transcription (`/v1/listen`, Nova models) as a streaming transcription provider."""
from __future__ import annotations

import json
import logging
from typing import Any

from .base import TranscriptListener, TranscriptionProvider, TranscriptionSession
from .cloud import CloudSession, Utterance, describe_error, number_setting

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nova-3"
DEFAULT_ENDPOINTING_MS = 800
DEFAULT_UTTERANCE_END_MS = 1000


class DeepgramSession(CloudSession):
    """Binary audio in; Results, SpeechStarted and UtteranceEnd out."""

    # Deepgram drops a socket that carried neither audio nor KeepAlive for 10 s (NET-0001).
    keepalive_message = json.dumps({"type": "KeepAlive"})
    keepalive_interval = 4.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.utterance = Utterance()

    def url(self) -> str:
        provider = self.provider
        # endpointingMs is Deepgram's own name; silenceDurationMs is what the other providers use.
        endpointing_key = "endpointingMs" if provider.setting("endpointingMs") is not None else "silenceDurationMs"
        return self.endpoint("/v1/listen", {
            "model": provider.setting("model", DEFAULT_MODEL),
            "encoding": "mulaw",
            "sample_rate": 8000,
            "channels": 1,
            "interim_results": "true",
            "endpointing": number_setting(provider, endpointing_key, DEFAULT_ENDPOINTING_MS, minimum=1),
            "utterance_end_ms": number_setting(provider, "utteranceEndMs", DEFAULT_UTTERANCE_END_MS, minimum=1000),
            "vad_events": "true",
            "smart_format": "true",
            "punctuate": "true",
            "language": self.language,
        })

    def headers(self) -> dict[str, str]:
        # An API key goes with "Token"; "Bearer" is for temporary JWTs only.
        return {"Authorization": f"Token {self.provider.api_key()}"}

    def chunk_message(self, ulaw: bytes) -> bytes:
        return ulaw

    async def finish(self, ws: Any) -> bool:
        await self.send_json(ws, {"type": "CloseStream"})
        return True  # the last results come back before the server closes

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "SpeechStarted":
            # Passed on every time: one fired by noise must not mute the next real one.
            self.utterance.announced = True
            self.listener.on_speech_started()
        elif kind == "Results":
            self._results(message)
        elif kind == "UtteranceEnd":
            # The word-gap end signal: also fires when noise keeps speech_final from coming.
            self.report_final(self.utterance)
        elif kind in ("Error", "error"):
            problem = describe_error(message.get("description") or message.get("message"))
            log.warning("deepgram transcription error: %s", problem)

    def _results(self, message: dict[str, Any]) -> None:
        alternatives = (message.get("channel") or {}).get("alternatives") or [{}]
        text = str(alternatives[0].get("transcript") or "")
        if message.get("is_final"):
            so_far = self.utterance.lock(text)
        else:
            so_far = self.utterance.hear(text)
        ended = bool(message.get("is_final") and message.get("speech_final"))
        if so_far:
            # Words are a barge-in trigger too, for when SpeechStarted is missing or late.
            self.report_speech(self.utterance)
            if not ended:
                self.listener.on_partial(so_far)
        if ended:
            self.report_final(self.utterance)


class DeepgramTranscription(TranscriptionProvider):
    name = "deepgram"
    api_key_env = "DEEPGRAM_API_KEY"
    default_base_url = "wss://api.deepgram.com"

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        return DeepgramSession(self, listener, language=language)
