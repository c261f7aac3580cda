"""Start-up work that would otherwise land on the event loop: first imports and TLS contexts, once per process."""
from __future__ import annotations

import logging

from django.utils.module_loading import import_string

log = logging.getLogger(__name__)


def warm() -> None:
    """Import every provider backend and build the TLS contexts now, off the event loop.

    Backends are imported by name on first use, which is a media stream's connect or its first
    utterance: tens of ms of imports the loop would spend while every other call waits.
    """
    from providers import registry, tls

    tls.warm()
    from channels.layers import get_channel_layer

    get_channel_layer()  # builds the configured layer now: importing channels_redis takes tens of ms
    import httpcore  # noqa: F401  (httpx imports it when the first client is made)
    from django.urls import reverse

    reverse("healthz")  # builds the URL resolver now: the first request would import every admin page's views

    for backends in (registry.CARRIERS, registry.TRANSCRIPTION, registry.TTS):
        for name, path in backends.items():
            try:
                import_string(path)
            except ImportError as exc:  # an optional dependency; its first use reports it
                log.debug("provider %s not importable: %s", name, exc)
