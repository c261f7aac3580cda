"""What a new call asks for beyond talking: answering-machine detection, recordings and their consent announcement, from its request, number route and the config."""
from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import InvalidRequest

if TYPE_CHECKING:
    from core.config import VoiceCallConfig
    from core.config.schema import NumberRoute

AMD_MODES = ("off", "detect", "voicemail")


def amd_mode_for(config: VoiceCallConfig, requested: object = None) -> str:
    """The request's amd (off, detect, voicemail), else the config's; InvalidRequest naming a bad value."""
    if requested is None:
        return config.amd
    if requested not in AMD_MODES:
        raise InvalidRequest(f"amd: expected off, detect or voicemail, got {requested!r}")
    return str(requested)


def recording_for(config: VoiceCallConfig, route: NumberRoute | None = None, requested: object = None) -> tuple[bool, bool]:
    """(carrier recording, local recording) for a new call.

    The number route's choices win over the config's; a request's `record` wins over both for the
    carrier recording, and `record: false` turns the local recording off as well (a caller asked
    for no recording at all). InvalidRequest when `requested` is not a boolean.
    """
    if requested is not None and not isinstance(requested, bool):
        raise InvalidRequest(f"record: expected true or false, got {requested!r}")
    carrier, local = config.recording.carrier, config.recording.local
    overrides = route.recording if route is not None else None
    if overrides is not None:
        carrier = overrides.carrier if overrides.carrier is not None else carrier
        local = overrides.local if overrides.local is not None else local
    if requested is True:
        carrier = True
    elif requested is False:
        carrier = local = False
    return carrier, local


def first_words(config: VoiceCallConfig, message: str, *, recorded: bool) -> str:
    """A new call's initial message: recording.consentMessage first when the call is recorded.

    The one place the announcement is added: every way a call's first words reach it (the dial's
    document, the answer webhook's, the greeting spoken by the carrier or on the media stream, the
    realtime model's opening turn) says the initial message, so they all say the consent first.
    """
    consent = (config.recording.consent_message or "").strip()
    if not (recorded and consent):
        return message
    return f"{consent} {message}" if message else consent


def consent_first(config: VoiceCallConfig, message: str) -> bool:
    """Whether `message` opens with the consent announcement (then no barge-in may cut it)."""
    consent = (config.recording.consent_message or "").strip()
    return bool(consent) and message.startswith(consent)
