"""ElevenLabs text-to-speech over HTTP streaming, asked for μ-law 8 kHz so audio goes to the line as is (§5.2)."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from core.audio import MULAW_8K, AudioFormat
from providers.tts.base import TtsError, TtsProvider
from providers.tts.http import post_stream, require_api_key

DEFAULT_MODEL = "eleven_flash_v2_5"  # the low-latency model; first audio matters most on a call
OUTPUT_FORMAT = "ulaw_8000"
# config key → request field, for the optional top-level fields (docs/compatibility.md, Speech providers)
OPTIONAL_FIELDS = {
    "seed": "seed",
    "languageCode": "language_code",
    "applyTextNormalization": "apply_text_normalization",
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


class ElevenLabsTts(TtsProvider):
    name = "elevenlabs"
    api_key_env = "ELEVENLABS_API_KEY"
    default_base_url = "https://api.elevenlabs.io"

    def output_format(self) -> AudioFormat:
        return MULAW_8K

    def request_body(self, text: str) -> dict[str, Any]:
        model = self.setting("modelId") or self.setting("model", DEFAULT_MODEL)
        body: dict[str, Any] = {"text": text, "model_id": model}
        voice_settings = self.setting("voiceSettings")
        if voice_settings:
            # config is camelCase (similarityBoost, useSpeakerBoost); the API wants snake_case
            body["voice_settings"] = {_snake(key): value for key, value in voice_settings.items() if value is not None}
        for key, field in OPTIONAL_FIELDS.items():
            if self.setting(key) is not None:
                body[field] = self.setting(key)
        return body

    async def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        voice_id = voice or self.setting("voiceId") or self.setting("voice")
        if not voice_id:
            raise TtsError(f"{self.name}: voiceId required")
        key = require_api_key(self)
        url = f"{self.base_url()}/v1/text-to-speech/{quote(voice_id, safe='')}/stream"
        async for chunk in post_stream(self, url, headers={"xi-api-key": key}, body=self.request_body(text),
                                       params={"output_format": OUTPUT_FORMAT}):
            yield chunk
