"""Whole-number settings read from the environment, checked when the settings are read (a bad value names its variable)."""
from __future__ import annotations

import os


def positive_int_env(name: str, default: int) -> int:
    """The variable as a whole number of at least 1, or `default` when unset or empty."""
    raw = os.environ.get(name, "").strip()
    return positive_int(name, raw) if raw else default


def positive_int(name: str, raw: str) -> int:
    from django.core.exceptions import ImproperlyConfigured

    try:
        value = int(raw, 10)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a whole number of at least 1, got {raw!r}") from None
    if value < 1:
        raise ImproperlyConfigured(f"{name}: expected a whole number of at least 1, got {value}")
    return value
