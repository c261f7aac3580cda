"""Which transcription provider and which TTS chain a call uses, from the config in force."""
from __future__ import annotations

import logging
from typing import Any

from core.config import VoiceCallConfig
from providers.registry import TRANSCRIPTION, TTS, transcription_class, tts_class
from providers.transcription.base import TranscriptionError, TranscriptionProvider
from providers.tts.base import DEFAULT_TIMEOUT_MS, TtsChain, TtsProvider


log = logging.getLogger(__name__)


def transcription_provider(config: VoiceCallConfig) -> TranscriptionProvider:
    """streaming.provider, or the first configured provider by priority (the offline one last).

    Raises TranscriptionError naming the problem when the named provider is unknown or unusable.
    """
    blocks = {name: block.model_dump(by_alias=True, exclude_none=True) for name, block in config.streaming.providers.items()}
    name = config.streaming.provider
    if name:
        try:
            provider = transcription_class(name)(blocks.get(name))
        except KeyError as exc:
            raise TranscriptionError(f"streaming.provider: {exc.args[0]}") from None
        except ImportError as exc:
            raise TranscriptionError(f"streaming.provider {name!r} cannot be loaded: {exc}") from None
        if not provider.configured():
            raise TranscriptionError(f"streaming.provider {name!r} has no API key (streaming.providers.{name}.apiKey)")
        return provider
    for candidate in TRANSCRIPTION:
        try:
            provider = transcription_class(candidate)(blocks.get(candidate))
        except ImportError:
            continue
        if provider.configured():
            return provider
    raise TranscriptionError("no transcription provider is configured")


def tts_chain(tts: dict[str, Any]) -> TtsChain:
    """The providers to try for a call, from its effective tts config (camelCase dict).

    Order: tts.provider, then the other providers with a block in tts.providers, then the rest
    that are configured (have a key or need none), so the offline voice is the last resort.
    """
    timeout_ms = tts.get("timeoutMs") or DEFAULT_TIMEOUT_MS
    blocks = tts.get("providers") or {}
    named = [name for name in [tts.get("provider"), *blocks] if name]
    order: list[str] = []
    for name in [*named, *TTS]:
        if name in TTS and name not in order:
            order.append(name)
    providers: list[TtsProvider] = []
    for name in order:
        try:
            provider = tts_class(name)(blocks.get(name), timeout_ms=timeout_ms)
        except ImportError as exc:
            log.info("tts provider %s unavailable: %s", name, exc)
            continue
        # Named providers are tried (and their failures reported); others only if usable for phones.
        if name in named or (provider.telephony and provider.configured()):
            providers.append(provider)
    return TtsChain(providers)
