"""Pieces every call service shares: state changes, finalize, transcript lines, carrier requests, turn wake-ups."""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Case, F, Value, When

from core.errors import CarrierError, VoiceCallError
from core.states import TERMINAL_STATES, CallState, next_state

from .. import background
from ..amd_verdicts import amd_end_reason
from ..clock import now
from ..log_limit import warn_limited
from ..models import Call, CallTurn, Speaker, TranscriptEntry, TurnStatus

_UNREAD = object()

# A hang-up or greeting claim older than this is treated as abandoned (its process died).
CLAIM_TTL = timedelta(seconds=30)

log = logging.getLogger("calls.services")


def carrier_request(action: str, func, *, quiet: bool = False, **kwargs):
    """Run a carrier request; any failure becomes CarrierError with the carrier's message.

    `quiet`: the caller logs the failure itself (with what it does next), so it is not logged here.
    """
    try:
        return func(**kwargs)
    except VoiceCallError:
        raise
    except Exception as exc:  # carriers raise their own errors; surfaces need one shape
        if not quiet:
            # Per kind of failure, not per call: a carrier that is down fails every call's request.
            warn_limited(log, ("carrier", action, type(exc).__name__), "carrier %s failed: %s", action, exc)
        raise CarrierError(str(exc) or f"{action} failed") from exc


def move_to(call: Call, target: str) -> bool:
    """Apply the transition rule; True when the state changed."""
    new = next_state(call.state, target)
    changed = new != call.state
    call.state = new.value
    return changed


def back_to_listening(call: Call, *, touch: bool = False) -> None:
    """Back to listening once speech is over (unless the call moved on, e.g. ended), in one statement.

    Every live state moves on to listening (the transition rule). `touch`: updated_at changes even
    when the state does not (a transcript line was just added without touching the call).
    """
    calls = Call.objects.filter(pk=call.pk)
    if touch:
        calls.update(
            state=Case(When(state__in=TERMINAL_STATES, then=F("state")), default=Value(CallState.LISTENING.value)),
            updated_at=now(),
        )
    else:
        calls.exclude(state__in=TERMINAL_STATES).exclude(state=CallState.LISTENING).update(
            state=CallState.LISTENING.value, updated_at=now())


def set_answered(call: Call, answered_at: datetime, max_duration_seconds: int) -> None:
    """Record the answer time (once) and arm the max-duration deadline from it."""
    if call.answered_at is not None:
        return
    call.answered_at = answered_at
    call.max_duration_deadline = answered_at + timedelta(seconds=max_duration_seconds)
    background.deadline_set(call.max_duration_deadline)


def finalize(
    call: Call, reason: str, *, ended_at: datetime | None = None, error: str = "", turn_error: str | None = None,
    save: bool = True,
) -> bool:
    """End the call record: terminal state, end reason, deadlines cleared, waiting turn failed.

    `error` is the carrier or dial error that ended the call, if one did (kept as `last_error`).
    Saves the call unless `save` is False (the caller saves it in the same transaction). Returns
    False when the call had already ended.
    """
    if call.is_terminal:
        return False
    reason = amd_end_reason(call, reason)
    call.state = next_state(call.state, reason).value
    call.end_reason = reason
    if error:
        call.last_error = error
    call.ended_at = ended_at or now()
    call.max_duration_deadline = None
    call.notify_hangup_at = None
    call.stream_grace_deadline = None
    # Whoever ends the call now hangs it up (or the carrier ended it): an earlier hang-up's retry is moot.
    call.end_retry_at = None
    if save:
        call.save()
    _close_streams_on_commit(str(call.pk))
    # A call read with its pending turn (calls/selectors.py, call_find_locked) may be known to have none.
    if getattr(call, "pending_turn_id", _UNREAD) is not None:
        failed = CallTurn.objects.filter(call=call, status=TurnStatus.PENDING).update(
            status=TurnStatus.FAILED, error=turn_error or f"Call ended: {reason}", completed_at=now()
        )
        call.pending_turn_id = None
        if failed:
            turn_changed()
    log.info("call %s ended: %s", call.pk, reason)
    return True


def finalize_by_id(call_id, reason: str, *, error: str = "") -> None:
    """Finalize the call with this primary key, under its row lock."""
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        finalize(call, reason, error=error)


def _close_streams_on_commit(call_id: str) -> None:
    """An ended call's media stream (in whichever process holds it) is closed."""
    from ..config import get_config

    if not get_config().config.streaming.enabled:
        return
    from ..streams.commands import stream_send

    transaction.on_commit(lambda: stream_send(call_id, {"type": "stream.close", "reason": "call ended"}))


def transcript_add(
    *, call: Call, speaker: str, text: str, at: datetime | None = None, touch: bool = True,
) -> TranscriptEntry:
    """A final transcript line of the call (the bot's words once played, the caller's once heard).

    `touch` False: the caller saves the call row in the same transaction, which bumps updated_at.
    """
    # Part of the caller's transaction when there is one: no savepoint, one round trip less.
    with transaction.atomic(savepoint=False):
        entry = TranscriptEntry.objects.create(
            call=call, speaker=Speaker(speaker), text=text, is_final=True, timestamp=at or now()
        )
        if touch:
            # The record changed: followers of updated_at (tail) must see the new line.
            Call.objects.filter(pk=call.pk).update(updated_at=now())
    return entry


# --- waiting for a turn to finish --------------------------------------------------------
# Turn results are in the database; this condition only wakes waiters in this process early.
# Waiters also re-read the row on a short interval so results written elsewhere are seen.
_turn_condition = threading.Condition()
TURN_POLL_SECONDS = 0.2


def turn_changed() -> None:
    """Wake local turn waiters after the current transaction commits."""

    def notify() -> None:
        with _turn_condition:
            _turn_condition.notify_all()

    transaction.on_commit(notify)


def wait_for_turn_change(timeout: float) -> None:
    with _turn_condition:
        _turn_condition.wait(timeout=min(timeout, TURN_POLL_SECONDS))
