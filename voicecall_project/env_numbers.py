"""Number settings read from the environment, checked when the settings are read (a bad value names its variable)."""
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


def seconds_env(name: str, default: float) -> float:
    """The variable as a finite number of seconds above 0, or `default` when unset or empty."""
    from django.core.exceptions import ImproperlyConfigured

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):  # also refuses NaN
        raise ImproperlyConfigured(f"{name}: expected a finite number of seconds above 0, got {raw!r}")
    return value
