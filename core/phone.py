"""Phone number and keypad text: the E.164 and DTMF patterns the config, the admin, dial lists and the services check against."""
from __future__ import annotations

import re

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
E164_MESSAGE = "Expected E.164 format, e.g. +15550001234"
DTMF_PATTERN = re.compile(r"^[0-9*#wWpP,]+$")
DTMF_MESSAGE = "digits may only contain digits, *, #, comma, w, p"


def digits_only(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")
