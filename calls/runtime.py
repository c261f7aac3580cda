"""The call runtime: the config in force plus the carrier built from it, or why there is none."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from core.config import LoadedConfig, VoiceCallConfig
from core.errors import SetupIncomplete, VoiceCallDisabled
from core.urls import webhook_url
from providers.carriers.base import CarrierBackend
from providers.registry import carrier_class

from .config import get_config, on_config_change

log = logging.getLogger(__name__)


@dataclass
class CallRuntime:
    loaded: LoadedConfig
    carrier: CarrierBackend

    @property
    def config(self) -> VoiceCallConfig:
        return self.loaded.config

    def webhook_url(self) -> str:
        return webhook_url(self.config)


_lock = threading.Lock()
_runtime: CallRuntime | None = None


def get_runtime() -> CallRuntime:
    """The runtime for the config in force; raises VoiceCallDisabled or SetupIncomplete."""
    global _runtime
    loaded = get_config()
    if not loaded.enabled:
        raise VoiceCallDisabled()
    if loaded.errors:
        raise SetupIncomplete(loaded.errors)
    runtime = _runtime
    if runtime is not None and runtime.loaded is loaded:
        return runtime
    with _lock:
        if _runtime is None or _runtime.loaded is not loaded:
            try:
                backend = carrier_class(loaded.config.provider)
            except KeyError as exc:
                raise SetupIncomplete([f"provider: {exc.args[0]}"]) from None
            from .documents import DatabaseDocuments, stream_token

            # What the carrier needs from the call domain is handed to it here, so providers never import calls.
            carrier = backend(loaded.config, documents=DatabaseDocuments(), stream_token=stream_token)
            _runtime = CallRuntime(loaded=loaded, carrier=carrier)
        return _runtime


def reset_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.carrier.close()
        _runtime = None


on_config_change(reset_runtime)
