"""Failed carrier hang-ups: counted on the call, tried again with exponential backoff, given up after a cap."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from core.states import END_REASONS, CallState

from .. import background
from ..clock import now
from ..log_limit import warn_limited
from ..models import Call
from .common import finalize, log

# 5 s after the first failure, then twice as long each time, never more than 5 minutes apart:
# ten tries span about 25 minutes, long enough to outlast a carrier incident without flooding it.
FIRST_RETRY_DELAY = timedelta(seconds=5)
MAX_RETRY_DELAY = timedelta(seconds=300)
MAX_HANGUP_ATTEMPTS = 10


def retry_delay(attempt: int) -> timedelta:
    """How long to wait after failed attempt number `attempt` (1 for the first) before the next."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    # The exponent is bounded so a large attempt number never builds a huge integer.
    return min(FIRST_RETRY_DELAY * 2 ** min(attempt - 1, 32), MAX_RETRY_DELAY)


def hangup_failed(call_id, reason: str, error: Exception) -> datetime | None:
    """Count a failed hang-up of the call and schedule the next try; give up after the last one.

    A live call that is given up on ends with state and reason `error`; a call that had already
    ended keeps its state (terminal states never change) and only records the error. Returns
    the time of the next try, or None when there is none.
    """
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id).first()
        if call is None:
            return None
        call.end_attempts += 1
        attempt = call.end_attempts
        if attempt >= MAX_HANGUP_ATTEMPTS:
            call.end_retry_at = None
            message = f"the carrier hang-up failed {attempt} times, giving up: {error}"
            ended_before = call.is_terminal
            if ended_before:
                call.last_error = message
                call.save(update_fields=["end_attempts", "end_retry_at", "last_error", "updated_at"])
            else:
                finalize(call, CallState.ERROR.value, error=message)
            warn_limited(log, _line_key(attempt, error), "call %s: hang-up attempt %d of %d failed: %s; giving up, %s",
                         call.pk, attempt, MAX_HANGUP_ATTEMPTS, error,
                         "the call had already ended" if ended_before else "the call ends with error")
            return None
        retry_at = now() + retry_delay(attempt)
        call.end_retry_at = retry_at
        # The retry asks with the same reason (and, for a live call, ends it with it).
        if reason in END_REASONS:
            call.hangup_reason = reason
        call.save(update_fields=["end_attempts", "end_retry_at", "hangup_reason", "updated_at"])
        background.deadline_set(retry_at)
    warn_limited(log, _line_key(attempt, error), "call %s: hang-up attempt %d of %d failed: %s; next try at %s",
                 call.pk, attempt, MAX_HANGUP_ATTEMPTS, error, retry_at.isoformat(timespec="seconds"))
    return retry_at


def _line_key(attempt: int, error: Exception) -> tuple:
    """Lines are limited per attempt number and kind of failure: a carrier that is down fails every
    call's hang-up, and one line a minute stands for them all, while one call's tries each show."""
    return ("hangup", attempt, type(error.__cause__ or error).__name__)


def retries_due(*, at: datetime) -> list[str]:
    """Claim the calls whose next hang-up try has come (once, across sweepers); their ids."""
    claimed = []
    for call_id in list(Call.objects.filter(end_retry_at__lte=at).values_list("pk", flat=True)):
        if Call.objects.filter(pk=call_id, end_retry_at__lte=at).update(end_retry_at=None):
            claimed.append(str(call_id))
    return claimed
