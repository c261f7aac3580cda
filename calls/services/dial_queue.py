"""Dials that are not calls yet: scheduled calls and dial lists, admitted in order as lines free up.

Each pending dial has the id its call gets and an idempotency key, so admitting it twice (two
sweeps at once, a retried sweep) writes one call. Admission is `call_initiate(wait=0)`: the call
is written and its dial job queued; the carrier's rate limit is applied by the dial job itself.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from core.errors import CallFailed, CapacityReached, InvalidRequest, VoiceCallError

from ..clock import now, to_ms
from ..dial_rows import dial_problems, dial_rows_read
from ..dial_time import iso
from ..models import Call, DialList, PendingDial, PendingDialStatus
from ..runtime import get_runtime
from .common import log
from .dialing import MODES, call_initiate, idempotency_key_checked

# Rows written per INSERT when a dial list is stored.
BATCH = 500


@dataclass(frozen=True)
class CallScheduled:
    """A call that will be placed later: its id now, the time it is due."""

    call_id: str
    due_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "callId": self.call_id, "initiated": False, "scheduled": True, "scheduledAt": to_ms(self.due_at),
            "status": f"scheduled for {iso(self.due_at)}",
        }


def call_schedule(
    *,
    to: str,
    due_at: datetime,
    message: str | None = None,
    mode: str | None = None,
    dtmf_sequence: str | None = None,
    session_key: str | None = None,
    requester_session_key: str | None = None,
    agent_id: str | None = None,
    idempotency_key: str | None = None,
) -> PendingDial:
    """Place a call at `due_at`. The inputs are checked now, not when it is due.

    The same idempotency key again returns the dial already scheduled with it.
    """
    config = get_runtime().config
    due = due_at
    mode = mode if mode in MODES else ""
    problems = dial_problems(
        to=to or "", message=message or "", mode=mode, dtmf_sequence=dtmf_sequence or "",
        default_mode=config.outbound.default_mode, message_required=False,
    )
    if problems:
        raise InvalidRequest(problems[0])
    if not config.effective_from_number():
        raise InvalidRequest("fromNumber not configured")
    idempotency_key = idempotency_key_checked(idempotency_key)
    if idempotency_key:
        existing = PendingDial.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    dial_id = uuid.uuid4()
    dial = PendingDial(
        id=dial_id, idempotency_key=idempotency_key or f"scheduled:{dial_id}", due_at=due, to_number=to,
        message=message or "", mode=mode, dtmf_sequence=dtmf_sequence or "", session_key=session_key or "",
        requester_session_key=requester_session_key or "", agent_id=agent_id or "",
    )
    try:
        with transaction.atomic():
            dial.save(force_insert=True)
    except IntegrityError:
        existing = PendingDial.objects.filter(idempotency_key=dial.idempotency_key).first()
        if existing is None:
            raise
        return existing  # the same request, scheduled by a concurrent retry
    log.info("call %s to %s scheduled for %s", dial.pk, to, iso(due))
    return dial


def dial_list_create(*, name: str, data: bytes | str) -> DialList:
    """Store a CSV dial list (calls/dial_rows.py): its good rows wait for their turn, bad ones are kept with their error.

    Raises DialListRefused (nothing stored) when the file itself is wrong.
    """
    config = get_runtime().config
    created = now()
    rows = dial_rows_read(data, now=created, default_mode=config.outbound.default_mode)
    if not config.effective_from_number():
        raise InvalidRequest("fromNumber not configured")
    with transaction.atomic():
        dial_list = DialList.objects.create(
            name=(name or "dial list")[:255], created_at=created, rows_total=len(rows),
            rows_rejected=sum(1 for row in rows if row.error),
        )
        PendingDial.objects.bulk_create(
            [
                PendingDial(
                    dial_list=dial_list, row=row.row, idempotency_key=f"dial-list:{dial_list.pk}:{row.row}",
                    status=PendingDialStatus.REJECTED if row.error else PendingDialStatus.PENDING,
                    due_at=None if row.error else row.at or created, to_number=row.to, message=row.message,
                    mode=row.mode, dtmf_sequence=row.dtmf_sequence, error=row.error, created_at=created,
                )
                for row in rows
            ],
            batch_size=BATCH,
        )
    log.info("dial list %s (%s): %d rows, %d refused", dial_list.pk, dial_list.name, dial_list.rows_total, dial_list.rows_rejected)
    return dial_list


def dial_cancel(*, call_id: str) -> bool:
    """Cancel a dial that is still waiting. True when `call_id` names a dial with no call to end.

    False when it names no pending dial, or one already admitted: then the call itself is ended.
    """
    try:
        key = uuid.UUID(str(call_id))
    except ValueError:
        return False
    if PendingDial.objects.filter(pk=key, status=PendingDialStatus.PENDING).update(status=PendingDialStatus.CANCELLED):
        log.info("scheduled dial %s cancelled", key)
        return True
    status = PendingDial.objects.filter(pk=key).values_list("status", flat=True).first()
    return status is not None and status != PendingDialStatus.ADMITTED


def dial_list_cancel(*, dial_list_id) -> int:
    """Cancel every row of a dial list still waiting; returns how many. Calls already placed go on."""
    cancelled = PendingDial.objects.filter(dial_list_id=dial_list_id, status=PendingDialStatus.PENDING).update(
        status=PendingDialStatus.CANCELLED
    )
    log.info("dial list %s: %d waiting rows cancelled", dial_list_id, cancelled)
    return cancelled


def dials_advance() -> int:
    """Admit the dials that are due, in order, while maxConcurrentCalls allows; returns how many calls were written.

    The rest wait for the next advance (the sweeper's next tick, or when a call ends).
    """
    limit = get_runtime().config.max_concurrent_calls
    admitted = 0
    while True:
        # Most sweeps find nothing due: that costs one indexed query, not a count of live calls.
        if not PendingDial.objects.due(now()).exists():
            return admitted
        free = limit - Call.objects.live().count()
        if free <= 0:
            return admitted
        batch = list(PendingDial.objects.due(now()).values_list("pk", flat=True)[:free])
        moved = False
        for pk in batch:
            outcome = _admit(pk)
            if outcome == "full":
                return admitted
            admitted += outcome == "admitted"
            moved = moved or outcome != "skipped"
        if not moved:
            return admitted  # another process holds these rows: it admits them


def _admit(pk) -> str:
    """Write the call of one due dial: "admitted", "failed" (refused, recorded on the row), "full" or "skipped"."""
    with transaction.atomic():
        # The claim and the call commit together: a cancel that loses this race finds the call and ends it.
        if not PendingDial.objects.filter(pk=pk, status=PendingDialStatus.PENDING).update(
            status=PendingDialStatus.ADMITTED, admitted_at=now()
        ):
            return "skipped"  # cancelled, or admitted by another process meanwhile
        dial = PendingDial.objects.get(pk=pk)
        try:
            # Its own writes are atomic (a savepoint here): a refusal leaves nothing of the call behind.
            call_initiate(
                to=dial.to_number, message=dial.message or None, mode=dial.mode or None,
                dtmf_sequence=dial.dtmf_sequence or None, session_key=dial.session_key or None,
                requester_session_key=dial.requester_session_key or None, agent_id=dial.agent_id or None,
                call_id=str(dial.pk), idempotency_key=dial.idempotency_key, wait=0,
            )
        except CapacityReached:
            transaction.set_rollback(True)  # the row waits for a free line
            return "full"
        except CallFailed:
            return "admitted"  # the call was written and failed: its record says why
        except VoiceCallError as exc:
            # Inputs were checked when the dial was stored; what fails now (e.g. the setup changed) is final.
            PendingDial.objects.filter(pk=pk).update(status=PendingDialStatus.FAILED, error=exc.message, admitted_at=None)
            log.warning("scheduled dial %s refused: %s", pk, exc.message)
            return "failed"
    return "admitted"
