"""Reads of dials that are not calls yet: a scheduled call's status, a dial list's progress and per-row outcome."""
from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.states import CallState

from .clock import to_ms
from .dial_time import iso
from .models import Call, DialList, PendingDial, PendingDialStatus

# What a dial that is not a call shows as its state in a status record.
SCHEDULED_STATE = {
    PendingDialStatus.PENDING: "scheduled",
    PendingDialStatus.CANCELLED: "cancelled",
    PendingDialStatus.FAILED: "failed",
    PendingDialStatus.REJECTED: "rejected",
}


def pending_dial_find(*, ref: str | None) -> PendingDial | None:
    """A dial not admitted as a call (yet), by the call id it was given."""
    try:
        key = uuid.UUID(str(ref))
    except ValueError:
        return None
    return PendingDial.objects.filter(pk=key).exclude(status=PendingDialStatus.ADMITTED).first()


def pending_dial_summary(dial: PendingDial) -> dict[str, Any]:
    """A dial that is not a call, in the shape of a call's status summary (state "scheduled", "cancelled", ...)."""
    summary: dict[str, Any] = {
        "callId": str(dial.pk),
        "direction": "outbound",
        "state": SCHEDULED_STATE.get(dial.status, dial.status),
        "to": dial.to_number,
        "scheduledAt": to_ms(dial.due_at),
        "dialListId": str(dial.dial_list_id) if dial.dial_list_id else None,
        "row": dial.row,
        "error": dial.error or None,
    }
    return {key: value for key, value in summary.items() if value is not None}


@dataclass(frozen=True)
class RowOutcome:
    row: int | None
    to: str
    status: str  # waiting, refused, cancelled, failed, queued, dialed, ended
    detail: str
    call_id: str | None
    dialed_at: datetime | None


@dataclass(frozen=True)
class DialListProgress:
    dial_list: DialList
    counts: dict[str, int]
    rows: list[RowOutcome]

    @property
    def settled(self) -> bool:
        """Every row is dialed, ended, refused, failed or cancelled: nothing is waiting or queued."""
        return not (self.counts["waiting"] or self.counts["queued"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "dialListId": str(self.dial_list.pk),
            "name": self.dial_list.name,
            "createdAt": iso(self.dial_list.created_at),
            "counts": self.counts,
            "settled": self.settled,
        }


def dial_list_progress(*, dial_list: DialList) -> DialListProgress:
    """Counts and one outcome per row (two queries, however long the list)."""
    dials = list(PendingDial.objects.filter(dial_list=dial_list).order_by("row"))
    calls = {call.pk: call for call in Call.objects.filter(pk__in=[d.pk for d in dials if d.status == PendingDialStatus.ADMITTED])}
    rows = [_outcome(dial, calls.get(dial.pk)) for dial in dials]
    counts = Counter(row.status for row in rows)
    return DialListProgress(
        dial_list=dial_list,
        counts={"rows": len(rows), **{status: counts.get(status, 0) for status in OUTCOMES}},
        rows=rows,
    )


OUTCOMES = ("waiting", "queued", "dialed", "ended", "failed", "cancelled", "refused")


def _outcome(dial: PendingDial, call: Call | None) -> RowOutcome:
    def outcome(status: str, detail: str = "", dialed_at: datetime | None = None) -> RowOutcome:
        return RowOutcome(dial.row, dial.to_number, status, detail, str(dial.pk) if call else None, dialed_at)

    if dial.status == PendingDialStatus.REJECTED:
        return outcome("refused", dial.error)
    if dial.status == PendingDialStatus.CANCELLED:
        return outcome("cancelled")
    if dial.status == PendingDialStatus.FAILED:
        return outcome("failed", dial.error)
    if dial.status == PendingDialStatus.PENDING:
        return outcome("waiting", f"due {iso(dial.due_at)}" if dial.due_at else "")
    if call is None:
        return outcome("queued", "admitted; the call is being written")
    dialed_at = call_dialed_at(call)
    if call.is_terminal:
        if dialed_at is None:
            if call.state == CallState.FAILED.value:
                return outcome("failed", call.last_error)
            return outcome("cancelled", f"ended before it was dialed ({call.end_reason or call.state})")
        return outcome("ended", ", ".join(filter(None, [call.state, call.last_error])), dialed_at)
    if dialed_at is None:
        return outcome("queued", "waiting for the carrier's rate limit or a worker")
    return outcome("dialed", call.state, dialed_at)


def call_dialed_at(call: Call) -> datetime | None:
    """When the carrier accepted the call's dial (None: not yet, or never)."""
    return call.dialed_at
