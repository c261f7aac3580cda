"""Agent session keys for calls (docs/compatibility.md, Session keys)."""
from __future__ import annotations

from core.phone import digits_only

from core.errors import InvalidRequest


def session_key_for_call(*, scope: str, agent_id: str, direction: str, from_number: str, to_number: str, call_id: str) -> str:
    """The session a call's conversation belongs to, by `sessionScope`."""
    if scope == "main":
        return f"agent:{agent_id}:main".lower()
    if scope == "per-call":
        return f"agent:{agent_id}:voice:call:{call_id}".lower()
    other_party = to_number if direction == "outbound" else from_number
    return f"agent:{agent_id}:voice:{digits_only(other_party) or call_id}".lower()


def explicit_session_key(key: str, *, agent_id: str) -> str:
    """Normalize a caller-supplied sessionKey: keep global/unknown and our agent's keys, wrap the rest."""
    key = (key or "").strip()
    if not key:
        raise InvalidRequest("sessionKey must not be empty")
    if key in ("global", "unknown"):
        return key
    prefix = f"agent:{agent_id}:".lower()
    if key.lower().startswith(prefix):
        rest = key[len(prefix):]
        return prefix + ("main" if rest.lower() in ("main", "default") else rest)
    return prefix + key
