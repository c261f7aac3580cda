"""Connecting calls: outbound admission and dial, and answering an inbound call at the carrier."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction

from core.errors import CallFailed, CapacityReached, InvalidRequest
from core.phone import E164, E164_MESSAGE
from core.states import CallState

from .. import background
from ..call_options import amd_mode_for, first_words, recording_for
from ..clock import now
from ..models import Call, CallMode, Direction, GatewayLock
from ..runtime import get_runtime
from ..selectors import call_find
from ..session_keys import explicit_session_key, session_key_for_call
from .common import carrier_request, log
from .dial_job import dial_outcome_wait, dial_status
from .dtmf import DTMF_MESSAGE, DTMF_PATTERN

MODES = tuple(CallMode.values)
# A call still without a carrier id this long after it was written is a dial that never finished.
DIAL_GRACE = timedelta(seconds=60)
IDEMPOTENCY_KEY_MAX = 255


def call_initiate(
    *,
    to: str,
    message: str | None = None,
    mode: str | None = None,
    dtmf_sequence: str | None = None,
    session_key: str | None = None,
    requester_session_key: str | None = None,
    agent_id: str | None = None,
    idempotency_key: str | None = None,
    call_id: str | None = None,
    wait: float | None = None,
    amd: str | None = None,
    record: bool | None = None,
) -> Call:
    """Place an outbound call: the record is written (and counted), the dial job queued, its outcome awaited.

    `idempotency_key`: a request repeated with the same key returns the call the first one wrote and
    places nothing. `call_id`: the id the new call gets (a scheduled or listed dial chose it before).
    `wait`: seconds to wait for the carrier to accept the dial (settings.VOICECALL_DIAL_WAIT_SECONDS
    when None); the call returned may still be queued (see dial_job.dial_status). With 0 it returns
    the call as written, once the job is queued, and never raises CallFailed. `amd` (off, detect,
    voicemail) and `record` (carrier recording) override the config for this call (calls/call_options.py). Raises InvalidRequest,
    CapacityReached, SetupIncomplete..., or CallFailed when the dial failed within the wait (record
    kept, failed). Background jobs run inline (the CLI's standalone runtime, tests): the dial is
    done before this returns.
    """
    runtime = get_runtime()
    config = runtime.config
    mode = mode if mode in MODES else config.outbound.default_mode
    if dtmf_sequence is not None:
        if not DTMF_PATTERN.fullmatch(dtmf_sequence):
            raise InvalidRequest(f"dtmfSequence: {DTMF_MESSAGE}")
        if mode != "conversation":
            raise InvalidRequest("dtmfSequence requires conversation mode")
    if not to or not E164.fullmatch(to):
        raise InvalidRequest(f"to: {E164_MESSAGE}")
    amd_mode = amd_mode_for(config, amd)
    record_carrier, record_local = recording_for(config, None, record)  # outbound calls have no number route
    opening = first_words(config, message or "", recorded=record_carrier or record_local)
    key = idempotency_key_checked(idempotency_key)
    new_id = call_id_checked(call_id)
    wait = dial_wait_checked(wait)
    runtime.webhook_url(reachable=True)  # a gateway without a usable webhook URL refuses now, not in the job
    from_number = config.effective_from_number()
    if not from_number:
        raise InvalidRequest("fromNumber not configured")
    agent = agent_id or config.resolved_agent_id()
    explicit_key = explicit_session_key(session_key, agent_id=agent) if session_key is not None else None
    inline = background.mode() == "inline"

    with transaction.atomic():
        # One admission at a time across processes: count and insert under the same lock.
        GatewayLock.objects.select_for_update().get_or_create(name="admission")
        existing = _already_requested(key, new_id, to)
        if existing is not None:
            log.info("outbound call %s: a repeated request (same idempotency key); nothing placed", existing.pk)
            call = existing
        else:
            if Call.objects.live().count() >= config.max_concurrent_calls:
                raise CapacityReached(config.max_concurrent_calls)
            call = Call(
                provider=runtime.carrier.name, direction=Direction.OUTBOUND, from_number=from_number, to_number=to,
                agent_id=agent, mode=mode, initial_message=opening, requester_session_key=requester_session_key or "",
                idempotency_key=key, dial_queued_at=now(),
                amd_mode=amd_mode, record_carrier=record_carrier, record_local=record_local,
                # Digits travel with the dial where the carrier can; otherwise they are sent once the call is answered.
                dial_dtmf=dtmf_sequence or "" if runtime.carrier.dials_with_dtmf else "",
                pending_dtmf="" if runtime.carrier.dials_with_dtmf else dtmf_sequence or "",
            )
            if new_id is not None:
                call.pk = new_id
            call.session_key = explicit_key or session_key_for_call(
                scope=config.session_scope, agent_id=agent, direction="outbound",
                from_number=from_number, to_number=to, call_id=str(call.pk),
            )
            call.save(force_insert=True)
            log.info("outbound call %s to %s queued (%s)", call.pk, to, mode)
            if not inline:
                background.submit("calls.dial", call_id=str(call.pk))
    if existing is None and inline:
        # The standalone CLI and tests: the dial runs here and now, even inside a caller's transaction.
        background.run_job("calls.dial", {"call_id": str(call.pk)})
    elif transaction.get_connection().in_atomic_block:
        # Inside the caller's transaction the job starts only at its commit: nothing to wait for here.
        wait = 0
    if wait <= 0:
        return call
    call = dial_outcome_wait(str(call.pk), wait)
    if call.state == CallState.FAILED.value and dial_status(call) == "ended" and call.last_error:
        raise CallFailed(call.last_error, call_id=str(call.pk))
    return call


def idempotency_key_checked(value: str | None) -> str | None:
    """The key as given, or InvalidRequest naming idempotencyKey."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("idempotencyKey: must be a non-empty string")
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise InvalidRequest(f"idempotencyKey: at most {IDEMPOTENCY_KEY_MAX} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise InvalidRequest("idempotencyKey: control characters are not allowed")
    return value


def call_id_checked(value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRequest(f"callId: not a call id (a UUID): {str(value)[:64]!r}") from None


def dial_wait_checked(value: float | None) -> float:
    if value is None:
        return settings.VOICECALL_DIAL_WAIT_SECONDS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidRequest("wait: must be a number of seconds, 0 or more")
    return float(value)


def _already_requested(key: str | None, new_id: uuid.UUID | None, to: str) -> Call | None:
    """The call an earlier request with the same idempotency key wrote; InvalidRequest if it does not match."""
    if key is not None:
        existing = Call.objects.filter(idempotency_key=key).first()
        if existing is not None:
            if existing.to_number != to:
                raise InvalidRequest("idempotencyKey: already used for a call to another number")
            if new_id is not None and existing.pk != new_id:
                raise InvalidRequest("idempotencyKey: already used for another callId")
            return existing
    if new_id is not None and Call.objects.filter(pk=new_id).exists():
        raise InvalidRequest(f"callId: a call with id {new_id} already exists")
    return None


@background.job("calls.answer")
def answer_inbound(*, call_id: str) -> None:
    """Pick up an inbound call at the carrier (carriers that need an explicit answer)."""
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is not None and not call.is_terminal and call.provider_call_id:
        carrier_request("answer", runtime.carrier.answer_call, call_id=call_id, provider_call_id=call.provider_call_id)
