"""The call domain's clock: the current time (replaceable, so tests can move it) and the epoch-millisecond form the reference's JSON uses."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone as dt_timezone

from django.utils import timezone

_source: Callable[[], datetime] = timezone.now


def now() -> datetime:
    return _source()


@contextmanager
def clock_source(source: Callable[[], datetime]) -> Iterator[None]:
    """Read the time from `source` meanwhile (a test moves time forward instead of waiting for it)."""
    global _source
    previous, _source = _source, source
    try:
        yield
    finally:
        _source = previous


def to_ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=dt_timezone.utc)
