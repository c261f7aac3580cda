"""Microsoft Edge "Read Aloud" TTS through the optional edge-tts package; MP3 only, so never used on a call."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from core.audio import AudioFormat
from providers.tts.base import TtsError, TtsProvider

DEFAULT_VOICE = "en-US-EmmaMultilingualNeural"  # edge-tts's own default
PASSED_OPTIONS = ("rate", "volume", "pitch", "proxy")


class MicrosoftTts(TtsProvider):
    name = "microsoft"
    api_key_env = None
    # The service serves only MP3 at 24 kHz (docs/compatibility.md, Speech providers): the chain skips it for phone audio.
    telephony = False

    def output_format(self) -> AudioFormat:
        return AudioFormat("mp3", 24000)

    async def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        try:
            import edge_tts
        except ImportError:
            raise TtsError(f"{self.name}: the edge-tts package is not installed") from None
        options = {key: self.setting(key) for key in PASSED_OPTIONS if self.setting(key) is not None}
        try:
            communicate = edge_tts.Communicate(text, voice=voice or self.setting("voice", DEFAULT_VOICE), **options)
            chunks = communicate.stream()
        except Exception as exc:
            raise TtsError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        received = 0
        try:
            while (chunk := await self._next(chunks)) is not None:
                # boundary metadata (WordBoundary / SentenceBoundary) arrives on the same stream
                if chunk.get("type") == "audio" and chunk.get("data"):
                    received += len(chunk["data"])
                    yield chunk["data"]
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        if not received:
            raise TtsError(f"{self.name}: empty audio")

    async def _next(self, chunks: Any) -> dict[str, Any] | None:
        """The next item of the edge-tts stream within the timeout; None at its end."""
        try:
            async with asyncio.timeout(self.timeout):
                return await anext(chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise TtsError(f"{self.name}: timed out after {round(self.timeout * 1000)} ms") from None
        except Exception as exc:
            raise TtsError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
