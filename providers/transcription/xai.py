"""xAI speech-to-text WebSocket as a streaming transcription provider."""
from __future__ import annotations

import logging
from typing import Any

from core.audio import SAMPLE_RATE, ulaw_to_pcm16

from .base import TranscriptionError, TranscriptListener, TranscriptionProvider, TranscriptionSession
from .cloud import CloudSession, Utterance, flag, number_setting, websocket_url, with_query

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTING_MS = 800
# Phone audio is μ-law; "pcm" (s16le) is the same audio decoded. Other rates would need resampling for nothing.
ENCODINGS = ("mulaw", "pcm")


class XaiSession(CloudSession):
    """Configured by query only; binary audio in, transcript.partial/done out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.utterance = Utterance()
        self.encoding = str(self.provider.setting("encoding", "mulaw")).lower()

    def url(self) -> str:
        provider = self.provider
        if self.encoding not in ENCODINGS:
            raise TranscriptionError(f"xai transcription: streaming.providers.xai.encoding must be one of"
                                     f" {', '.join(ENCODINGS)} (got {self.encoding!r})")
        if number_setting(provider, "sampleRate", SAMPLE_RATE) != SAMPLE_RATE:
            raise TranscriptionError(
                f"xai transcription: streaming.providers.xai.sampleRate must be {SAMPLE_RATE}, the phone line's rate")
        endpoint = provider.setting("endpoint")
        base = websocket_url(str(endpoint)) if endpoint else provider.base_url() + "/v1/stt"
        return with_query(base, {
            "sample_rate": SAMPLE_RATE,
            "encoding": self.encoding,
            "interim_results": flag(provider.setting("interimResults", True)),
            # The query parameter is `endpointing`; endpointingMs is only the setting's name.
            "endpointing": number_setting(provider, "endpointingMs", DEFAULT_ENDPOINTING_MS),
            "language": self.language,
        })

    def headers(self) -> dict[str, str]:
        return self.bearer()

    async def configure(self, ws: Any) -> None:
        await self.expect(ws, "transcript.created")

    def chunk_message(self, ulaw: bytes) -> bytes:
        return ulaw_to_pcm16(ulaw) if self.encoding == "pcm" else ulaw

    async def finish(self, ws: Any) -> bool:
        await self.send_json(ws, {"type": "audio.done"})
        return True  # the last results come back before the server closes

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "transcript.partial":
            text = str(message.get("text") or "")
            if not message.get("is_final"):
                so_far = self.utterance.hear(text)
            else:
                so_far = self.utterance.lock(text)
            if so_far:
                self.report_speech(self.utterance)
            if message.get("is_final") and message.get("speech_final"):
                self.report_final(self.utterance)
            elif so_far:
                self.listener.on_partial(so_far)
        elif kind == "transcript.done":
            # Whatever the speech_final events did not already cover.
            self.utterance.lock(str(message.get("text") or ""))
            self.report_final(self.utterance)
        elif kind == "error":
            log.warning("xai transcription error: %s", self.error_text(message))


class XaiTranscription(TranscriptionProvider):
    name = "xai"
    api_key_env = "XAI_API_KEY"
    default_base_url = "wss://api.x.ai"

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        return XaiSession(self, listener, language=language)
