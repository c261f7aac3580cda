"""The inbound decision: may this caller reach us under the configured inboundPolicy, and if not, why."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from core.phone import digits_only

from .models import AllowedCaller

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundDecision:
    allowed: bool
    # Why not (recorded on the call as its rejection reason); "pairing" means: let the
    # caller in to enter a one-time code, nothing else.
    reason: str = ""

    @property
    def pairing(self) -> bool:
        return self.allowed and self.reason == "pairing"


def is_allowlisted(caller: str | None, allow_from: list[str]) -> bool:
    """The caller's digits equal an entry of allowFrom or an enabled admin allowlist entry's digits.

    Empty entries (and a caller without digits) never match.
    """
    wanted = digits_only(caller)
    if not wanted:
        return False
    if wanted in {digits_only(number) for number in allow_from}:
        return True
    return any(digits_only(number) == wanted
               for number in AllowedCaller.objects.filter(enabled=True).values_list("number", flat=True))


def inbound_decision(*, policy: str, allow_from: list[str], caller: str | None) -> InboundDecision:
    """disabled → no; open → yes; allowlist → allowlisted callers; pairing → those, or a pairing attempt."""
    if policy == "open":
        return InboundDecision(True)
    if policy not in ("allowlist", "pairing"):
        return InboundDecision(False, "inbound-disabled")
    if not digits_only(caller):
        return InboundDecision(False, "no-caller-id")
    if is_allowlisted(caller, allow_from):
        return InboundDecision(True)
    if policy == "pairing":
        return InboundDecision(True, "pairing")
    return InboundDecision(False, "not-allowlisted")


def inbound_allowed(*, policy: str, allow_from: list[str], caller: str | None) -> bool:
    """Whether the caller is let in as a caller (a pairing attempt is not)."""
    decision = inbound_decision(policy=policy, allow_from=allow_from, caller=caller)
    return decision.allowed and not decision.pairing
