"""A clock tests move by hand, put in force for the call domain (calls/clock.py) instead of waiting for real time."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.utils import timezone

from calls.clock import clock_source


class FakeClock:
    """Starts at the real time; only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or timezone.now()

    def __call__(self) -> datetime:
        return self.current

    def set(self, moment: datetime) -> None:
        self.current = moment

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@contextmanager
def fake_clock(start: datetime | None = None) -> Iterator[FakeClock]:
    clock = FakeClock(start)
    with clock_source(clock):
        yield clock
