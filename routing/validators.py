"""Phone number validation for the routing models and the admin (the pattern itself is core's), and reading
the common ways people write a number into E.164."""
from __future__ import annotations

import re

from django.core.exceptions import ValidationError

from core.phone import E164, E164_MESSAGE

EXAMPLE = "+15550003333"
INTERNATIONAL_FORM = f"Enter the number in international form, with its country code: {EXAMPLE}"
# What people put between digits: spaces, dashes, dots, slashes, brackets around an area code.
SEPARATORS = re.compile(r"[\s\-./()\u00a0\u2010-\u2015]")
# "+44 (0)20 7946 0000": the trunk 0 dialed only from inside the country, never part of the international number.
TRUNK_ZERO = re.compile(r"\(\s*0\s*\)")


def validate_e164(value: str) -> None:
    if not isinstance(value, str) or not E164.fullmatch(value):
        raise ValidationError(E164_MESSAGE, code="e164")


def to_e164(text: str) -> str:
    """`+1 (555) 000-3333`, `+1 555-000-3333`, `+1.555.000.3333` and `0015550003333` as `+15550003333`;
    `+44 (0)20 7946 0000` as `+442079460000` (the bracketed trunk 0 is dropped).

    A number needs its country code, after a + or the international prefix 00. Digits without
    either are refused rather than guessed: `15550003333` is a US number with its country code, but
    `13812345678` is a Chinese mobile number, and `0113 496 0000` a UK one dialed nationally.
    """
    raw = text.strip()
    compact = SEPARATORS.sub("", TRUNK_ZERO.sub("", raw))
    if not compact:
        raise ValidationError(INTERNATIONAL_FORM, code="e164")
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.isdigit():
        raise ValidationError(
            f"{raw} has no country code marked: write a + before it, e.g. +{compact} if it begins with its "
            f"country code ({INTERNATIONAL_FORM}).", code="e164")
    else:
        digits = compact
    if not digits.isdigit():
        raise ValidationError(
            f"{raw} is not a phone number: only digits, a leading +, spaces, dashes, dots and brackets are "
            f"understood. {INTERNATIONAL_FORM}", code="e164")
    number = "+" + digits
    if not E164.fullmatch(number):
        raise ValidationError(
            f"{raw} is not an international number: after the + come the country code (not starting with 0) "
            f"and the number, 15 digits at most. {INTERNATIONAL_FORM}", code="e164")
    return number
