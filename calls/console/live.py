"""What the live calls page shows, read from the database: the rows of calls in progress, and what changed since the last look.

A `LiveView` belongs to one console socket. It remembers the rows it sent, the newest change it
has seen (`Call.updated_at`, which every write of a call, of its transcript or of its state bumps)
and the last transcript line per call, so each look is one indexed query for the calls changed
since, plus the new lines of those calls and the open streams of the calls on the page. Its
messages follow the socket protocol (docs/console.md, Live calls).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from core.states import FORWARD_ORDER

from ..models import Call, MediaStream, TranscriptEntry

LIVE_STATES = [state.value for state in FORWARD_ORDER]
# Changes are read again from this far before the newest seen: a transaction that stamped its row
# a moment before another committed after it, and clocks of other hosts a little behind, are caught.
OVERLAP = timedelta(seconds=2)
# Every so often the whole set of live calls is read (by state: indexed) and the page set right,
# whatever a missed change would have left on it.
RECONCILE_EVERY = 10
# Transcript lines of a call shown when it first appears on the page; later ones all arrive.
FIRST_LINES = 50
_FIELDS = ("id", "direction", "from_number", "to_number", "route_key", "agent_id", "state", "provider",
           "started_at", "answered_at", "ended_at", "end_reason", "updated_at")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def call_row(call: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """One call as the page shows it; times in ISO 8601 (the browser counts the duration)."""
    inbound = call["direction"] == "inbound"
    return {
        "callId": str(call["id"]),
        "number": call["from_number"] if inbound else call["to_number"],  # the other party
        "direction": call["direction"],
        "route": call["route_key"],
        "agent": call["agent_id"],
        "state": call["state"],
        "carrier": call["provider"],
        "startedAt": iso(call["started_at"]),
        "answeredAt": iso(call["answered_at"]),
        "stream": stream,
    }


def line(entry: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry["id"], "speaker": entry["speaker"], "text": entry["text"], "at": iso(entry["timestamp"])}


def calls_in_progress() -> list[dict[str, Any]]:
    """Rows of every call not ended yet, oldest first (what the page renders before its socket connects)."""
    calls = list(Call.objects.filter(state__in=LIVE_STATES).order_by("started_at").values(*_FIELDS))
    streams = _open_streams([call["id"] for call in calls])
    return [call_row(call, stream=str(call["id"]) in streams) for call in calls]


def _open_streams(call_ids: list) -> set[str]:
    """The ids (as text) of those calls that have an open media stream."""
    if not call_ids:
        return set()
    return {str(pk) for pk in MediaStream.objects.open().filter(call_id__in=call_ids).values_list("call_id", flat=True)}


class LiveView:
    """One socket's view of the live calls: `snapshot()` first, then `changes()` on every look."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}  # call id -> the row as last sent
        self.versions: dict[str, datetime] = {}  # call id -> its updated_at when last read
        self.last_line: dict[str, int] = {}  # call id -> id of the last transcript line sent
        self.mark: datetime | None = None  # the newest updated_at seen
        self.looks = 0

    def snapshot(self) -> list[dict[str, Any]]:
        """The first messages: every live call, and each one's transcript so far."""
        newest = Call.objects.order_by("-updated_at").values_list("updated_at", flat=True).first()
        calls = list(Call.objects.filter(state__in=LIVE_STATES).order_by("started_at").values(*_FIELDS))
        self.mark = newest
        streams = _open_streams([call["id"] for call in calls])
        for call in calls:
            self._keep(call, streams)
        messages: list[dict[str, Any]] = [
            {"type": "snapshot", "calls": list(self.rows.values()), "serverTime": iso(timezone.now())},
        ]
        return messages + self._lines(list(self.rows))

    def changes(self) -> list[dict[str, Any]]:
        """Messages for what changed since the last look (none when nothing did)."""
        self.looks += 1
        query = Call.objects.order_by("updated_at")
        if self.mark is not None:
            query = query.filter(updated_at__gte=self.mark - OVERLAP)
        changed = list(query.values(*_FIELDS))
        if self.looks % RECONCILE_EVERY == 0:
            changed += self._missed({call["id"] for call in changed})
        messages: list[dict[str, Any]] = []
        fresh: list[dict[str, Any]] = []
        for call in changed:
            if self.mark is None or call["updated_at"] > self.mark:
                self.mark = call["updated_at"]
            key = str(call["id"])
            if self.versions.get(key) == call["updated_at"] and key in self.rows:
                continue
            if call["state"] not in LIVE_STATES:
                if key in self.rows:
                    messages.append(self._gone(key, call["state"], call["end_reason"]))
                continue
            fresh.append(call)
        streams = _open_streams([call["id"] for call in fresh] + list(self.rows))
        touched: list[str] = []
        for call in fresh:
            key = str(call["id"])
            before = self.rows.get(key)
            self._keep(call, streams)
            touched.append(key)
            if self.rows[key] != before:
                messages.append({"type": "call", "call": self.rows[key]})
        kept = set(touched)
        for key, row in self.rows.items():  # a stream opened or closed without the call row changing
            if key not in kept and row["stream"] != (key in streams):
                row["stream"] = not row["stream"]
                messages.append({"type": "call", "call": row})
        return messages + self._lines(touched)

    def _missed(self, seen: set) -> list[dict[str, Any]]:
        """Live calls the change query did not bring, and calls on the page that are no longer live."""
        live = list(Call.objects.filter(state__in=LIVE_STATES).values(*_FIELDS))
        missed = [call for call in live if call["id"] not in seen and str(call["id"]) not in self.rows]
        live_keys = {str(call["id"]) for call in live}
        ended = [key for key in self.rows if key not in live_keys]
        if ended:
            missed += list(Call.objects.filter(pk__in=ended).values(*_FIELDS))
        for call in missed:  # read outside the change window: never skipped as already seen
            self.versions.pop(str(call["id"]), None)
        return missed

    def _keep(self, call: dict[str, Any], streams: set) -> None:
        key = str(call["id"])
        self.rows[key] = call_row(call, stream=key in streams)
        self.versions[key] = call["updated_at"]

    def _gone(self, key: str, state: str, end_reason: str) -> dict[str, Any]:
        self.rows.pop(key, None)
        self.versions.pop(key, None)
        self.last_line.pop(key, None)
        return {"type": "gone", "callId": key, "state": state, "endReason": end_reason or None}

    def _lines(self, keys: list[str]) -> list[dict[str, Any]]:
        """New transcript lines of these calls, one message per call."""
        if not keys:
            return []
        since = min(self.last_line.get(key, 0) for key in keys)
        entries = (
            TranscriptEntry.objects.filter(call_id__in=keys, id__gt=since).order_by("id")
            .values("id", "call_id", "speaker", "text", "timestamp")
        )
        by_call: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            key = str(entry["call_id"])
            if entry["id"] > self.last_line.get(key, 0):
                by_call.setdefault(key, []).append(line(entry))
        messages = []
        for key, lines in by_call.items():
            if key not in self.last_line:
                lines = lines[-FIRST_LINES:]
            self.last_line[key] = lines[-1]["id"]
            messages.append({"type": "transcript", "callId": key, "lines": lines})
        for key in keys:
            self.last_line.setdefault(key, 0)
        return messages
