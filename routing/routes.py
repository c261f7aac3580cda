"""Per-number routes: which route a dialed number matches, and the config a routed call runs with."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.config.merge import deep_merge
from core.phone import digits_only

from .models import NumberRoute as NumberRouteRow

if TYPE_CHECKING:
    from core.config.schema import NumberRoute, VoiceCallConfig

FALLBACK_GREETING = "Hello! How can I help you today?"
VOICE_KEYS = ("speakerVoice", "speakerVoiceId", "voice", "voiceId")


def all_routes(config: VoiceCallConfig) -> dict[str, NumberRoute]:
    """Config routes, overlaid by enabled admin routes for the same number."""
    # The schema is imported where it is used: the admin and the CLI import this module without a config.
    from core.config.schema import NumberRoute

    routes = dict(config.numbers)
    for row in NumberRouteRow.objects.filter(enabled=True):
        routes[row.number] = NumberRoute.model_validate(row.as_route_config())
    return routes


def match_route(config: VoiceCallConfig, dialed: str | None, *, routes: dict[str, NumberRoute] | None = None,
                ) -> tuple[str, NumberRoute] | None:
    """Exact key first, else the first key whose digits equal the dialed number's digits.

    `routes`: all_routes(config) when the caller already read them (one read for many calls).
    """
    if not dialed:
        return None
    routes = all_routes(config) if routes is None else routes
    if dialed in routes:
        return dialed, routes[dialed]
    wanted = digits_only(dialed)
    for key, route in routes.items():
        if wanted and digits_only(key) == wanted:
            return key, route
    return None


def route_for_key(config: VoiceCallConfig, key: str | None) -> NumberRoute | None:
    """The route a call matched (its route key), looked up again by its key."""
    if not key:
        return None
    return all_routes(config).get(key)


def route_snapshot(route: NumberRoute) -> dict[str, Any]:
    """What a call stores of its matched route (beside its key): the overrides as they were when it came in.

    The route's tts is not copied (it may hold credentials, which never go into call records);
    it is read from the route by its key.
    """
    return route.model_dump(by_alias=True, exclude_none=True, exclude={"tts"})


def call_route(config: VoiceCallConfig, call: Any) -> NumberRoute | None:
    """The route an inbound call matched: edits made to it mid-call do not change the call."""
    if getattr(call, "direction", None) != "inbound":
        return None  # routes apply to inbound calls only
    from core.config.schema import NumberRoute

    live = route_for_key(config, call.route_key)
    if call.route is None:
        return live  # no snapshot (a call from before routes were snapshotted)
    route = NumberRoute.model_validate(call.route)
    return route.model_copy(update={"tts": live.tts if live else None})


def greeting_for(config: VoiceCallConfig, route: NumberRoute | None) -> str:
    """Route greeting → global inboundGreeting → the fallback text."""
    return (route and route.inbound_greeting) or config.inbound_greeting or FALLBACK_GREETING


def effective_tts(config: VoiceCallConfig, route: NumberRoute | None) -> dict[str, Any]:
    """The global tts with the route's tts deep-merged over it (camelCase dict)."""
    base = config.tts.model_dump(by_alias=True, exclude_none=True) if config.tts else {}
    if route and route.tts:
        base = deep_merge(base, route.tts.model_dump(by_alias=True, exclude_none=True))
    return base


def preferred_voice(tts: dict[str, Any]) -> str | None:
    """The voice for a call: providers[provider] → first of speakerVoice, speakerVoiceId, voice, voiceId."""
    provider = tts.get("provider")
    block = (tts.get("providers") or {}).get(provider) if provider else None
    if not isinstance(block, dict):
        return None
    for key in VOICE_KEYS:
        if block.get(key):
            return block[key]
    return None


def validate_route_tts(data: Any) -> list[str]:
    """Errors for a route's tts JSON (used by the admin form), in config path form."""
    from core.config.loader import format_validation_errors
    from core.config.schema import TtsConfig
    from pydantic import ValidationError

    try:
        TtsConfig.model_validate(data or {})
    except ValidationError as exc:
        return format_validation_errors(exc, "tts.")
    return []
