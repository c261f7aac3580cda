"""How a call's duration and short id are written, the same in the CLI and the admin (no Django: the CLI starts fast)."""
from __future__ import annotations

SHORT_ID = 8  # a UUID's first group: enough to tell calls apart on a screen, and accepted back by --call-id


def short_id(call_id: str) -> str:
    return call_id[:SHORT_ID]


def duration(seconds: float) -> str:
    """`4s`, `1m 04s`, `2h 03m 09s`."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
