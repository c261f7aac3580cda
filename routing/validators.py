"""Phone number validation shared by the admin, the config and the CLI."""
from __future__ import annotations

import re

from django.core.exceptions import ValidationError

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
E164_MESSAGE = "Expected E.164 format, e.g. +15550001234"


def validate_e164(value: str) -> None:
    if not isinstance(value, str) or not E164.fullmatch(value):
        raise ValidationError(E164_MESSAGE, code="e164")


def digits_only(value: str | None) -> str:
    return re.sub(r"\D", "", value or "")
