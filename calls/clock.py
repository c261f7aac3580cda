"""The call domain's clock: the current time and the epoch-millisecond form the reference's JSON uses."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

from django.utils import timezone


def now() -> datetime:
    return timezone.now()


def to_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=dt_timezone.utc)
