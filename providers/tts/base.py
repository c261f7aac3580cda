"""The telephony TTS interface, and the fallback chain that turns text into μ-law 8 kHz.

Subclass TtsProvider: set `name`, `api_key_env` (None when no key is needed) and implement
`output_format()` and `stream()`, an async iterator of audio chunks in that format, yielded as
they arrive so playback starts before synthesis ends. Providers that cannot produce telephony
audio set `telephony = False` and are skipped by the chain (docs/compatibility.md, Speech providers).

The chain tries providers in order until one yields audio; one warning names `from`, `to` and
`attempts`. A failure after audio started is not retried: that utterance fails.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.audio import AudioFormat, TelephonyEncoder
from core.redact import RedactedError, redact

from ..settings import ProviderSettings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 8000
# Its own threads: the loop's default pool also runs blocking sync_to_async work that may be
# waiting on this very playback, and encoding must never queue behind it.
_encoder_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tts-encode")


class TtsError(RedactedError):
    """Synthesis failed; the message names the provider."""


class TtsProvider(ProviderSettings):
    name: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    telephony: ClassVar[bool] = True

    def __init__(self, settings: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None,
                 timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        super().__init__(settings, environ=environ)
        self.timeout = timeout_ms / 1000

    def base_url(self) -> str:
        return (self.setting("baseUrl") or self.default_base_url).rstrip("/")

    def output_format(self) -> AudioFormat:
        raise NotImplementedError

    def stream(self, text: str, *, voice: str | None = None) -> AsyncIterator[bytes]:
        """Audio for `text` in output_format(), chunk by chunk. Raise TtsError on failure."""
        raise NotImplementedError


@dataclass
class Synthesis:
    """What the chain produced: μ-law chunks, from which provider, after which failures."""

    provider: str = ""
    failures: list[str] = field(default_factory=list)


class TtsChain:
    """Providers in fallback order; `synthesize()` yields μ-law 8 kHz chunks."""

    def __init__(self, providers: list[TtsProvider]) -> None:
        self.providers = providers

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    async def synthesize(self, text: str, *, voice: str | None = None, report: Synthesis | None = None) -> AsyncIterator[bytes]:
        report = report if report is not None else Synthesis()
        first = self.providers[0].name if self.providers else "none"
        for provider in self.providers:
            if not provider.telephony:
                report.failures.append(f"{provider.name}: no telephony output")
                continue
            started = False
            try:
                encoder = TelephonyEncoder(provider.output_format())
                # aclosing: a barge-in that stops early closes the provider's request at once.
                async with contextlib.aclosing(provider.stream(text, voice=voice)) as chunks:
                    async for chunk in _with_tail(chunks, encoder):
                        if not started:
                            started = True
                            report.provider = provider.name
                            if report.failures:
                                log.warning("tts fallback: from=%s to=%s attempts=%s",
                                            first, provider.name, "; ".join(report.failures))
                        yield chunk
            except Exception as exc:
                if started:
                    raise TtsError(f"{provider.name} failed mid-utterance: {exc}") from exc
                message = redact(str(exc))[:200] or type(exc).__name__  # redacted before it is cut
                if not message.startswith(f"{provider.name}:"):
                    message = f"{provider.name}: {message}"
                report.failures.append(message)
                continue
            if started:
                return
            report.failures.append(f"{provider.name}: no audio")
        raise TtsError("speech synthesis failed (" + ("; ".join(report.failures) or "no TTS provider") + ")")


async def _with_tail(chunks: AsyncIterator[bytes], encoder: TelephonyEncoder) -> AsyncIterator[bytes]:
    """The provider's chunks converted to μ-law, then whatever the encoder still holds.

    Decoding a sentence of MP3 costs tens of ms of CPU, so such an encoder runs on a worker
    thread, one chunk at a time (it keeps state), never on the event loop; resampling and μ-law
    cost microseconds and stay on the loop.
    """
    loop = asyncio.get_running_loop()
    async for chunk in chunks:
        audio = await loop.run_in_executor(_encoder_pool, encoder.encode, chunk) if encoder.costly else encoder.encode(chunk)
        if audio:
            yield audio
    tail = await loop.run_in_executor(_encoder_pool, encoder.flush) if encoder.costly else encoder.flush()
    if tail:
        yield tail
