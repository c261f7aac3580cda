"""OpenAI realtime transcription session (GA shape) as a streaming transcription provider."""
from __future__ import annotations

import json
import logging
from typing import Any

from .base import TranscriptListener, TranscriptionProvider, TranscriptionSession
from .cloud import CloudSession, GatewayTurnsMixin, b64, describe_error, number_setting

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-transcribe"
DEFAULT_SILENCE_MS = 800
DEFAULT_VAD_THRESHOLD = 0.5
PREFIX_PADDING_MS = 300
# These models refuse server_vad/semantic_vad (turn_detection must be null), so the session
# never ends a turn by itself: the gateway's own VAD commits the buffer at each turn end.
MANUAL_TURN_MODELS = frozenset({"gpt-live-transcribe", "gpt-realtime-whisper"})


class OpenAISession(CloudSession):
    """Server VAD finds the turns; transcripts arrive per conversation item."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Text per item: the next turn's speech may start before the previous turn's text is complete.
        self._items: dict[str, str] = {}

    @property
    def model(self) -> str:
        return str(self.provider.setting("model", DEFAULT_MODEL))

    def url(self) -> str:
        # A model in the URL would make a conversation session, which rejects the transcription setup.
        return self.provider.base_url() + "/v1/realtime?intent=transcription"

    def headers(self) -> dict[str, str]:
        return self.bearer()

    def turn_detection(self) -> dict[str, Any] | None:
        provider = self.provider
        return {
            "type": "server_vad",
            "threshold": number_setting(provider, "vadThreshold", DEFAULT_VAD_THRESHOLD, integer=False),
            "prefix_padding_ms": PREFIX_PADDING_MS,
            "silence_duration_ms": number_setting(provider, "silenceDurationMs", DEFAULT_SILENCE_MS, minimum=1),
        }

    def session_config(self) -> dict[str, Any]:
        transcription: dict[str, Any] = {"model": self.model}
        if self.language:
            transcription["language"] = self.language
        prompt = self.provider.setting("prompt")
        if prompt and self.model != "gpt-realtime-whisper":  # that model takes no prompt
            transcription["prompt"] = str(prompt)
        return {
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcmu"},
                "transcription": transcription,
                "turn_detection": self.turn_detection(),
            }},
        }

    async def configure(self, ws: Any) -> None:
        await self.send_json(ws, {"type": "session.update", "session": self.session_config()})
        await self.expect(ws, "session.updated")

    def chunk_message(self, ulaw: bytes) -> str:
        return json.dumps({"type": "input_audio_buffer.append", "audio": b64(ulaw)})

    def turn_end_message(self) -> str:
        return json.dumps({"type": "input_audio_buffer.commit"})

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        item = str(message.get("item_id", ""))
        if kind == "input_audio_buffer.speech_started":
            self.listener.on_speech_started()
        elif kind == "conversation.item.input_audio_transcription.delta":
            text = self._items.get(item, "") + str(message.get("delta") or "")
            self._items[item] = text
            if text.strip():
                self.listener.on_partial(text.strip())
        elif kind == "conversation.item.input_audio_transcription.completed":
            self._items.pop(item, None)
            text = str(message.get("transcript") or "").strip()
            if text:
                self.listener.on_final(text)
        elif kind == "conversation.item.input_audio_transcription.failed":
            self._items.pop(item, None)
            log.warning("openai transcription of item %s failed: %s", item, describe_error(message.get("error")))
        elif kind == "error":
            log.warning("openai transcription error: %s", self.error_text(message))


class OpenAIManualTurnSession(GatewayTurnsMixin, OpenAISession):
    """For models without server VAD: turn_detection null, and the gateway VAD commits each turn."""

    def turn_detection(self) -> dict[str, Any] | None:
        return None


class OpenAITranscription(TranscriptionProvider):
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    default_base_url = "wss://api.openai.com"

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        model = str(self.setting("model", DEFAULT_MODEL))
        session_class = OpenAIManualTurnSession if model in MANUAL_TURN_MODELS else OpenAISession
        return session_class(self, listener, language=language)
