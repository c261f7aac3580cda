"""A realtime provider that only exists for tests: registered under "tiny", ready when it has a key."""
from __future__ import annotations

from contextlib import contextmanager

from providers import registry
from providers.realtime.base import RealtimeProvider

TINY_KEY_ENV = "TINY_REALTIME_KEY"
# Keys the built-in providers read from the environment: unset in tests, so "no key" is the truth.
PROVIDER_KEY_ENVS = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", TINY_KEY_ENV)


class TinyRealtime(RealtimeProvider):
    name = "tiny"
    api_key_env = TINY_KEY_ENV
    default_base_url = "ws://127.0.0.1:9"
    default_model = "tiny-voice"


@contextmanager
def tiny_registered():
    before = dict(registry.REALTIME)
    registry.register_realtime("tiny", f"{__name__}.TinyRealtime")
    try:
        yield
    finally:
        registry.REALTIME.clear()
        registry.REALTIME.update(before)
