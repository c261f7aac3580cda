"""When a scheduled call or a dial-list row is due: an ISO 8601 time with its UTC offset, or "+15m" from now."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone as dt_timezone

from core.errors import InvalidRequest

# How far ahead a dial may be scheduled: a year covers any real campaign, and a typo'd year is caught.
MAX_AHEAD = timedelta(days=365)
RELATIVE = re.compile(r"\+(?:\d+[dhms])+")
RELATIVE_PART = re.compile(r"(\d+)([dhms])")
UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
FORMS = "an ISO 8601 time with its UTC offset (e.g. 2026-12-05T10:30:00+01:00 or 2026-12-05T09:30:00Z) or a delay like +90s, +15m, +2h, +1d, +1h30m"


def due_time_parse(text: str, *, now: datetime, param: str = "at") -> datetime:
    """The moment `text` names, in UTC; InvalidRequest naming `param` when it is unreadable, past or too far ahead."""
    value = text.strip()
    if RELATIVE.fullmatch(value):
        try:
            when = now + sum((timedelta(**{UNITS[unit]: int(amount)}) for amount, unit in RELATIVE_PART.findall(value)), timedelta())
        except OverflowError:
            raise InvalidRequest(f"{param}: {value!r} is more than {MAX_AHEAD.days} days ahead") from None
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(f"{param}: cannot read {value!r}; give {FORMS}") from None
        if when.tzinfo is None:
            # A time without an offset means a different moment on every server: refuse to guess.
            raise InvalidRequest(f"{param}: {value!r} has no UTC offset; add one, e.g. {value}Z or {value}+01:00")
    when = when.astimezone(dt_timezone.utc)
    if when < now:
        raise InvalidRequest(f"{param}: {value!r} is in the past (it is now {iso(now)})")
    if when - now > MAX_AHEAD:
        raise InvalidRequest(f"{param}: {value!r} is more than {MAX_AHEAD.days} days ahead")
    return when


def iso(moment: datetime) -> str:
    """A moment as the results and messages show it: UTC, seconds, with a Z."""
    return moment.astimezone(dt_timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
