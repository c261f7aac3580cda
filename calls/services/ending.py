"""Ending calls: hang up and finalize once, and the hang-up jobs the carrier is asked from the background."""
from __future__ import annotations

import time

from django.db import transaction

from core.errors import CallNotFound, CarrierError
from core.states import CallState

from .. import background
from ..amd_verdicts import amd_end_reason
from ..clock import now
from ..models import Call
from ..runtime import get_runtime
from ..selectors import call_find
from .common import CLAIM_TTL, carrier_request, finalize
from .dialing import DIAL_GRACE
from .hangup_retry import hangup_failed


def call_end(*, call_id: str, reason: str = CallState.HANGUP_BOT.value, error: str = "") -> None:
    """Hang up and finalize. Ending an ended call succeeds; concurrent ends hang up once.

    `error`: what went wrong, when that is why the call ends; kept as `last_error` before the hang-up,
    so it stays even when the carrier's end arrives first.
    """
    runtime = get_runtime()
    give_up = time.monotonic() + CLAIM_TTL.total_seconds()
    while True:
        with transaction.atomic():
            call = call_find(ref=call_id, for_update=True)
            if call is None:
                raise CallNotFound()
            if call.is_terminal:
                return
            reason = amd_end_reason(call, reason)  # a machine's call ends as voicemail, hang-up reason included
            if error and call.last_error != error:
                call.last_error = error
                call.save(update_fields=["last_error", "updated_at"])
            if not call.provider_call_id and (call.dial_requested_at is None or now() - call.dial_requested_at > DIAL_GRACE):
                # Still queued (no request to the carrier in flight; the dial job will find the call
                # ended and dial nothing), or a dial that never completed: nothing to hang up.
                finalize(call, reason)
                return
            claim = call.hangup_claimed_at
            if call.provider_call_id and (claim is None or now() - claim > CLAIM_TTL):
                call.hangup_claimed_at = now()
                # If the carrier's end webhook arrives before our request returns, it keeps this reason.
                call.hangup_reason = reason
                call.save(update_fields=["hangup_claimed_at", "hangup_reason"])
                break
        if time.monotonic() > give_up:
            raise CarrierError("end failed: another hang-up of this call did not finish")
        time.sleep(0.1)  # another request is hanging up this call (or the dial is in flight)

    try:
        # Not logged here: the caller's retry logs it with the attempt, or the requester gets the error.
        carrier_request("hangup", runtime.carrier.hangup_call, quiet=True, call_id=str(call.pk),
                        provider_call_id=call.provider_call_id, reason=reason)
    except CarrierError:
        Call.objects.filter(pk=call.pk).update(hangup_claimed_at=None)
        raise
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        call.hangup_claimed_at = None
        if not finalize(call, reason):
            call.save(update_fields=["hangup_claimed_at"])


@background.job("calls.reject_hangup")
def reject_hangup(*, call_id: str) -> None:
    """Hang up an inbound call the policy refused (its record is already terminal)."""
    carrier_hangup(call_id=call_id, reason=CallState.HANGUP_BOT.value)


@background.job("calls.carrier_hangup")
def carrier_hangup(*, call_id: str, reason: str) -> None:
    """Ask the carrier to hang up without touching the record (it is already final); retried with backoff."""
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is None or not call.provider_call_id:
        return
    try:
        carrier_request("hangup", runtime.carrier.hangup_call, quiet=True, call_id=str(call.pk),
                        provider_call_id=call.provider_call_id, reason=reason)
    except CarrierError as exc:
        hangup_failed(call.pk, reason, exc)


def call_end_or_retry(*, call_id: str, reason: str, error: str = "") -> None:
    """End the call; if the carrier fails the hang-up, it is tried again later with backoff."""
    try:
        call_end(call_id=call_id, reason=reason, error=error)
    except CarrierError as exc:
        hangup_failed(call_id, reason, exc)


@background.job("calls.end")
def end_job(*, call_id: str, reason: str) -> None:
    call_end_or_retry(call_id=call_id, reason=reason)


@background.job("calls.hangup_retry")
def hangup_retry(*, call_id: str) -> None:
    """The next try of a hang-up that failed: end a live call, or only hang up one that has ended."""
    call = call_find(ref=call_id)
    if call is None:
        return
    reason = call.hangup_reason or call.end_reason or CallState.HANGUP_BOT.value
    if call.is_terminal:
        carrier_hangup(call_id=str(call.pk), reason=reason)
    else:
        call_end_or_retry(call_id=str(call.pk), reason=reason)
