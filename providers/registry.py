"""Name → backend class registries, like Django's email backends: config names a provider, we import it."""
from __future__ import annotations

from django.utils.module_loading import import_string

CARRIERS: dict[str, str] = {
    "mock": "providers.carriers.mock.MockCarrier",
    "twilio": "providers.carriers.twilio.TwilioCarrier",
    "telnyx": "providers.carriers.telnyx.TelnyxCarrier",
    "plivo": "providers.carriers.plivo.PlivoCarrier",
}


def register_carrier(name: str, dotted_path: str) -> None:
    """Add or replace a carrier backend (tests and plugins)."""
    CARRIERS[name] = dotted_path


def carrier_class(name: str):
    """The backend class for a carrier name; KeyError names the unknown carrier."""
    try:
        return import_string(CARRIERS[name])
    except KeyError:
        raise KeyError(f"no carrier backend registered for {name!r} (known: {', '.join(sorted(CARRIERS))})") from None
