"""Phone number text: the E.164 pattern the config, the admin and the services check against."""
from __future__ import annotations

import re

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
E164_MESSAGE = "Expected E.164 format, e.g. +15550001234"


def digits_only(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")
