"""Which realtime provider a call's model session uses, and what stops it from running (setup and startup)."""
from __future__ import annotations

from core.config.schema import VoiceCallConfig
from providers.realtime.base import RealtimeError, RealtimeProvider
from providers.registry import REALTIME, realtime_class


def _blocks(config: VoiceCallConfig) -> dict[str, dict]:
    return {name: block.model_dump(by_alias=True, exclude_none=True) for name, block in config.realtime.providers.items()}


def realtime_provider(config: VoiceCallConfig, environ=None) -> RealtimeProvider:
    """realtime.provider, or the first registered provider that is ready (a key set); RealtimeError names what to fix."""
    blocks = _blocks(config)
    name = config.realtime.provider
    if name:
        try:
            provider = realtime_class(name)(blocks.get(name), environ=environ)
        except KeyError:
            raise RealtimeError(
                f"realtime.provider {name!r} is not a registered realtime provider (known: {', '.join(REALTIME)})"
            ) from None
        except ImportError as exc:
            raise RealtimeError(f"realtime.provider {name!r} cannot be loaded: {exc}") from None
        problems = provider.problems()
        if problems:
            raise RealtimeError("; ".join(problems))
        return provider
    tried: list[str] = []
    for candidate in REALTIME:
        try:
            provider = realtime_class(candidate)(blocks.get(candidate), environ=environ)
        except ImportError:
            continue
        if not provider.problems():
            return provider
        tried.append(f"realtime.providers.{candidate}.apiKey")
    hint = f" (set realtime.provider and its key, e.g. {' or '.join(tried)})" if tried else ""
    raise RealtimeError(f"realtime.provider is unset and no realtime provider is configured{hint}")


def realtime_problem(config: VoiceCallConfig, environ=None) -> str | None:
    """Why realtime voice cannot run with this config (None: it can, or it is off)."""
    if not config.realtime.enabled:
        return None
    try:
        realtime_provider(config, environ=environ)
    except RealtimeError as exc:
        return str(exc)
    return None
