"""The inbound decision: may this caller reach us under the configured inboundPolicy?"""
from __future__ import annotations

import logging

from .models import AllowedCaller
from .validators import digits_only

log = logging.getLogger(__name__)


def inbound_allowed(*, policy: str, allow_from: list[str], caller: str | None) -> bool:
    """disabled → no; open → yes; allowlist/pairing → caller's digits equal an allowed entry's digits.

    Allowed entries are the config's allowFrom plus enabled AllowedCaller rows. Empty entries
    (and a caller without digits) never match.
    """
    if policy == "open":
        return True
    if policy not in ("allowlist", "pairing"):
        return False
    wanted = digits_only(caller)
    if not wanted:
        log.info("inbound call rejected: no caller id")
        return False
    configured = {digits_only(number) for number in allow_from}
    if wanted in configured:
        return True
    for number in AllowedCaller.objects.filter(enabled=True).values_list("number", flat=True):
        if digits_only(number) == wanted:
            return True
    return False
