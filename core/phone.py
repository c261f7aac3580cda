"""Phone number and keypad text: the E.164 and DTMF patterns the config, the admin, dial lists and the services check against."""
from __future__ import annotations

import re

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
E164_MESSAGE = "Expected E.164 format, e.g. +15550001234"
DTMF_PATTERN = re.compile(r"^[0-9*#wWpP,]+$")
DTMF_MESSAGE = "digits may only contain digits, *, #, comma, w, p"
# sip:user@host[:port][;params], or sips: — what carriers accept as a transfer target besides a number.
SIP_URI = re.compile(r"^sips?:[A-Za-z0-9._~!$&'()*+,;=%-]+@[A-Za-z0-9.-]+(:\d{1,5})?(;[A-Za-z0-9._~=%-]+)*$")
TRANSFER_TARGET_MESSAGE = "Expected an E.164 number (+15550001234) or a SIP URI (sip:agent@example.com)"


def transfer_target(value: object) -> str:
    """`value` stripped when it is an E.164 number or a SIP URI; ValueError naming what is expected otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    if E164.match(text) or SIP_URI.match(text):
        return text
    raise ValueError(f"{value!r} is not a transfer target. {TRANSFER_TARGET_MESSAGE}")


def digits_only(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")
