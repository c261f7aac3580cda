"""Keypad digits: what a digit string may contain, and sending digits on a live call."""
from __future__ import annotations

from core.errors import InvalidRequest, UnsupportedByCarrier
from core.phone import DTMF_MESSAGE, DTMF_PATTERN
from ..runtime import get_runtime
from ..selectors import call_connected
from .common import carrier_request


def call_send_dtmf(*, call_id: str, digits: str) -> None:
    """Press `digits` on a live call (the carrier must support outbound DTMF)."""
    if not digits or not DTMF_PATTERN.fullmatch(digits):
        raise InvalidRequest(DTMF_MESSAGE)
    runtime = get_runtime()
    call = call_connected(ref=call_id)
    if not runtime.carrier.supports_dtmf_send:
        raise UnsupportedByCarrier(f"{runtime.carrier.name} does not support outbound DTMF")
    carrier_request("dtmf", runtime.carrier.send_dtmf, call_id=str(call.pk), provider_call_id=call.provider_call_id, digits=digits)
