"""Phone number validation for the routing models and the admin (the pattern itself is core's)."""
from __future__ import annotations

from django.core.exceptions import ValidationError

from core.phone import E164, E164_MESSAGE


def validate_e164(value: str) -> None:
    if not isinstance(value, str) or not E164.fullmatch(value):
        raise ValidationError(E164_MESSAGE, code="e164")
