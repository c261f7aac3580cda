"""The dial job: claim the queued call, wait for a rate-limit slot, ask the carrier, retry what may pass later.

At most once: every request to the carrier is marked on the row first (`dial_requested_at`) and the
mark is cleared only when the carrier's answer shows nothing was placed. A claim whose process died
while the mark was set is never dialed again (the carrier may have the call: its webhooks carry our
call id and link it); calls/services/resume.py fails such a dial after DIAL_GRACE if nothing came.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from django.db import transaction
from django.db.models import F, Q

from core.errors import CarrierError, CarrierUnreachable
from core.states import TERMINAL_STATES, CallState
from providers.carriers.base import DialRequest

from .. import background, dial_rate
from ..clock import now
from ..gateway import get_gateway
from ..models import Call, Direction
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_voice
from .common import CLAIM_TTL, carrier_request, finalize, log

# Requests per dial at most (the first and three retries), and the waits between them: doubled
# from the first, capped; a carrier's Retry-After is honoured up to RETRY_AFTER_MAX.
DIAL_TRIES = 4
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 60.0

LIVE = ~Q(state__in=[state.value for state in TERMINAL_STATES])


def undialed() -> Q:
    """Outbound calls the carrier has not accepted yet, with no request to it in flight."""
    return Q(direction=Direction.OUTBOUND, provider_call_id__isnull=True, dialed_at__isnull=True,
             dial_requested_at__isnull=True) & LIVE


@background.job("calls.dial")
def dial_job(*, call_id: str) -> None:
    dial_run(call_id=call_id)


def dial_run(*, call_id: str, sleep: Callable[[float], None] = time.sleep) -> str:
    """Dial the call if no one else is dialing or has dialed it. Returns what happened, in a word:

    placed, failed, ended (before its request), skipped (not ours to dial: claimed, dialed, ended or
    a request of a dead process may have placed it), or lost (the claim was taken over meanwhile).
    """
    runtime = get_runtime()  # setup incomplete or calls disabled: the dial stays queued, unclaimed
    at = now()
    token = uuid.uuid4()
    claimed = (
        Call.objects.filter(undialed(), pk=call_id)
        .filter(Q(dial_claimed_at__isnull=True) | Q(dial_claimed_at__lte=at - CLAIM_TTL))
        .update(dial_claimed_at=at, dial_claim_token=token)
    )
    if not claimed:
        return "skipped"
    # Held as a lease while it runs (the rate-limit wait and the backoff included): renewed, so only
    # the claim of a process that died expires.
    with get_gateway().leases.hold("dial_claimed_at", call_id, at):
        try:
            return _dial_tries(runtime, call_id, token, sleep)
        finally:
            dial_changed()


def _dial_tries(runtime: CallRuntime, call_id: str, token: uuid.UUID, sleep: Callable[[float], None]) -> str:
    call = Call.objects.get(pk=call_id)
    dial = DialRequest(
        call_id=str(call.pk), from_number=call.from_number, to_number=call.to_number,
        webhook_url=runtime.webhook_url(), mode=call.mode, initial_message=call.initial_message or None,
        voice=call_voice(call=call), dtmf_sequence=call.dial_dtmf or None,
        amd=call.amd_mode or "off", amd_timeout_ms=runtime.config.amd_timeout_ms, record=call.record_carrier,
    )
    for attempt in range(1, DIAL_TRIES + 1):
        dial_rate.slot_wait(runtime.config, runtime.carrier, sleep=sleep)
        # The mark: from here the carrier may place the call, so no other claim may dial it again.
        marked = (
            Call.objects.filter(undialed(), pk=call_id, dial_claim_token=token)
            .update(dial_requested_at=now(), dial_attempts=F("dial_attempts") + 1)
        )
        if not marked:
            return _released(call_id, token)
        try:
            result = carrier_request("initiate", runtime.carrier.initiate_call, quiet=True, dial=dial)
        except CarrierError as exc:
            delay = retry_delay(exc, attempt) if attempt < DIAL_TRIES else None
            if delay is None:
                _failed(call_id, token, exc, attempt)
                return "failed"
            # Nothing was placed: the mark goes, and the next try may dial (this claim only).
            Call.objects.filter(pk=call_id, dial_claim_token=token).update(dial_requested_at=None)
            log.warning("call %s: dial try %d of %d failed (%s); trying again in %.1f s",
                        call_id, attempt, DIAL_TRIES, exc.message, delay)
            sleep(delay)
            continue
        _placed(call_id, token, result.provider_call_id)
        return "placed"
    raise AssertionError("unreachable")


def retry_delay(error: CarrierError, attempt: int) -> float | None:
    """Seconds before the next try after `error` on try `attempt`, or None when trying again cannot help.

    Retried: the carrier's rate limit (429), its server errors (5xx), and connections that never
    reached it. Any other refusal (a 4xx: a bad number, bad credentials) will not change.
    """
    status = getattr(error, "status", None)
    if not (isinstance(error, CarrierUnreachable) or status == 429 or (status is not None and 500 <= status < 600)):
        return None
    delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
    return delay


def _placed(call_id: str, token: uuid.UUID, provider_call_id: str) -> None:
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        # The carrier's first webhook may have linked its id already.
        call.provider_call_id = call.provider_call_id or provider_call_id
        call.dialed_at = now()
        if call.dial_claim_token == token:
            call.dial_claimed_at = None
            call.dial_claim_token = None
        call.save()
        ended_meanwhile = call.is_terminal
    if ended_meanwhile:
        # Ended while we were dialing (e.g. `end` raced the dial): do not leave the line up.
        background.submit("calls.carrier_hangup", call_id=str(call.pk), reason=call.end_reason or "hangup-bot")
    log.info("outbound call %s to %s placed (%s, %s)", call.pk, call.to_number, call.provider_call_id, call.mode)


def _failed(call_id: str, token: uuid.UUID, error: CarrierError, attempt: int) -> None:
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call_id)
        if call.dial_claim_token == token:
            call.dial_claimed_at = None
            call.dial_claim_token = None
        finalize(call, CallState.FAILED, error=error.message, save=False)  # nothing when it ended meanwhile
        call.save()
    tries = f" after {attempt} tries" if attempt > 1 else ""
    log.warning("call %s: the dial failed%s: %s", call_id, tries, error.message)


def _released(call_id: str, token: uuid.UUID) -> str:
    """The call ended before its request, or the claim is no longer ours: let go of it, dial nothing."""
    Call.objects.filter(pk=call_id, dial_claim_token=token).update(dial_claimed_at=None, dial_claim_token=None)
    call = Call.objects.filter(pk=call_id).only("state").first()
    if call is not None and call.is_terminal:
        log.info("call %s ended before it was dialed; not dialing it", call_id)
        return "ended"
    log.warning("call %s: its dial claim was taken over meanwhile; leaving the dial to the new holder", call_id)
    return "lost"


# --- waiting for a dial's outcome ----------------------------------------------------------
# Outcomes are in the database; this condition only wakes waiters in this process early.
_dial_condition = threading.Condition()
DIAL_POLL_SECONDS = 0.25


def dial_changed() -> None:
    """Wake local waiters for a dial outcome (after the current transaction commits)."""

    def notify() -> None:
        with _dial_condition:
            _dial_condition.notify_all()

    transaction.on_commit(notify)


def dial_outcome_wait(call_id: str, timeout: float) -> Call:
    """The call once its dial is over (placed, failed or ended), or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        call = Call.objects.get(pk=call_id)
        remaining = deadline - time.monotonic()
        if dial_settled(call) or remaining <= 0:
            return call
        with _dial_condition:
            _dial_condition.wait(min(remaining, pause))
        pause = min(pause * 2, DIAL_POLL_SECONDS)


def dial_settled(call: Call) -> bool:
    return bool(call.provider_call_id or call.dialed_at or call.is_terminal)


def dial_status(call: Call) -> str:
    """Where a call's dial is, for whoever placed it: placed, dialing, retrying (after a try that may pass
    later), queued (waiting for a worker or a rate-limit slot) or ended."""
    if call.provider_call_id or call.dialed_at:
        return "placed"
    if call.is_terminal:
        return "ended"
    if call.dial_requested_at is not None:
        return "dialing"
    return "retrying" if call.dial_attempts else "queued"

