"""OpenAI text-to-speech (POST /v1/audio/speech), streamed as raw PCM16 24 kHz."""
from __future__ import annotations

from collections.abc import AsyncIterator

from core.audio import AudioFormat
from providers.tts.base import TtsError, TtsProvider
from providers.tts.http import post_stream, require_api_key

MAX_INPUT_CHARS = 4096
DEFAULT_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICE = "coral"


class OpenAITts(TtsProvider):
    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    default_base_url = "https://api.openai.com/v1"

    def output_format(self) -> AudioFormat:
        # `pcm` is the only headerless format OpenAI offers; it is fixed at 24 kHz
        return AudioFormat("pcm16", 24000)

    async def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        if len(text) > MAX_INPUT_CHARS:
            # the API would answer 400 anyway; failing here spares the round trip
            raise TtsError(f"{self.name}: input is {len(text)} characters, the limit is {MAX_INPUT_CHARS}")
        key = require_api_key(self)
        body = {
            "model": self.setting("model", DEFAULT_MODEL),
            "input": text,
            "voice": voice or self.setting("voice", DEFAULT_VOICE),
            "response_format": "pcm",
        }
        for option in ("instructions", "speed"):
            if self.setting(option) is not None:
                body[option] = self.setting(option)
        async for chunk in post_stream(self, f"{self.base_url()}/audio/speech",
                                       headers={"Authorization": f"Bearer {key}"}, body=body):
            yield chunk
