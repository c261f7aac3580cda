"""Pairing: an unknown caller keys in or says a one-time code from the admin and joins the allowlist."""
from __future__ import annotations

import re

from django.db import transaction
from django.utils import timezone

from core.phone import E164

from .models import PAIRING_CODE_DIGITS, AllowedCaller, PairingCode

# How people say digits; speech recognizers also hear homophones ("for", "to", "oh").
SPOKEN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "owe": "0",
    "one": "1", "won": "1",
    "two": "2", "to": "2", "too": "2",
    "three": "3", "tree": "3",
    "four": "4", "for": "4", "fore": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8", "ate": "8",
    "nine": "9",
}
MULTIPLIERS = {"double": 2, "triple": 3}
_TOKENS = re.compile(r"[a-z]+|\d")


def digits_in(text: str) -> str:
    """The digits a caller said or keyed ("four one double two" → "4122"); other words are ignored."""
    digits: list[str] = []
    repeat = 1
    for token in _TOKENS.findall(text.lower()):
        if token in MULTIPLIERS:
            repeat = MULTIPLIERS[token]
            continue
        digit = token if token.isdigit() else SPOKEN_DIGITS.get(token)
        if digit is not None:
            digits.append(digit * repeat)
        repeat = 1
    return "".join(digits)


def redeem(code: str, *, caller: str) -> PairingCode | None:
    """Use a pairing code for `caller` (E.164): the code is spent and the caller allowlisted.

    None when the code is unknown, used or expired, or the caller's number cannot be stored.
    """
    if len(code) != PAIRING_CODE_DIGITS or not E164.fullmatch(caller or ""):
        return None
    with transaction.atomic():
        # Locked: two calls saying the same code at once spend it once.
        found = PairingCode.objects.select_for_update().usable().filter(code=code).first()
        if found is None:
            return None
        found.used_at = timezone.now()
        found.used_by = caller
        found.save(update_fields=["used_at", "used_by"])
        label = found.label or f"paired with code {found.code}"
        allowed, created = AllowedCaller.objects.get_or_create(number=caller, defaults={"label": label})
        if not created and not allowed.enabled:
            allowed.enabled = True
            allowed.save(update_fields=["enabled"])
    return found
