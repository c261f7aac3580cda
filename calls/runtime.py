"""The call runtime: the config in force plus the carrier built from it, or why there is none.

The Gateway (calls/gateway.py) keeps the one runtime of the process and rebuilds it when the
config in force is replaced; `get_runtime()` is the accessor the services use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import SetupIncomplete, VoiceCallDisabled
from core.urls import webhook_url
from providers.carriers.base import CarrierBackend
from providers.registry import carrier_class

from .gateway import get_gateway

if TYPE_CHECKING:
    from core.config import LoadedConfig, VoiceCallConfig


@dataclass
class CallRuntime:
    loaded: LoadedConfig
    carrier: CarrierBackend

    @property
    def config(self) -> VoiceCallConfig:
        return self.loaded.config

    def webhook_url(self, *, reachable: bool = False) -> str:
        """The webhook URL carriers are given. `reachable`: refuse (SetupIncomplete) while the configured
        tunnel is not up, rather than hand the carrier a local address it cannot call."""
        if reachable:
            from .exposure import exposure_problem

            problem = exposure_problem(self.config)
            if problem:
                raise SetupIncomplete([problem])
        return webhook_url(self.config)


def build_runtime(loaded: LoadedConfig) -> CallRuntime:
    """The runtime for `loaded`; raises VoiceCallDisabled or SetupIncomplete when it cannot run."""
    if not loaded.enabled:
        raise VoiceCallDisabled()
    if loaded.errors:
        raise SetupIncomplete(loaded.errors)
    try:
        backend = carrier_class(loaded.config.provider)
    except KeyError as exc:
        raise SetupIncomplete([f"provider: {exc.args[0]}"]) from None
    from .documents import DatabaseDocuments, stream_token

    # What the carrier needs from the call domain is handed to it here, so providers never import calls.
    carrier = backend(loaded.config, documents=DatabaseDocuments(), stream_token=stream_token)
    from .services.realtime import realtime_token_issue

    carrier.realtime_token = realtime_token_issue
    return CallRuntime(loaded=loaded, carrier=carrier)


def webhook_gate() -> tuple[VoiceCallConfig, type[CarrierBackend]] | None:
    """The config and the carrier class a webhook's head is checked against; None when calls cannot run.

    Without building the runtime: on a server's event loop, the first request after a config change
    would otherwise build it there (the carrier's HTTP client and its TLS context are too much for it).
    """
    gateway = get_gateway()
    runtime = gateway.current_runtime()
    if runtime is not None:
        return runtime.config, type(runtime.carrier)
    loaded = gateway.config()
    if not loaded.enabled or loaded.errors:
        return None
    try:
        return loaded.config, carrier_class(loaded.config.provider)
    except KeyError:
        return None


def get_runtime() -> CallRuntime:
    """The runtime for the config in force; raises VoiceCallDisabled or SetupIncomplete."""
    return get_gateway().runtime()


def reset_runtime() -> None:
    """Close the carrier and build the runtime again on next use."""
    get_gateway().reset_runtime()
