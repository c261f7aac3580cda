"""Connecting calls: outbound admission and dial, and answering an inbound call at the carrier."""
from __future__ import annotations

from datetime import timedelta

from django.db import transaction

from core.errors import CallFailed, CapacityReached, CarrierError, InvalidRequest
from core.phone import E164, E164_MESSAGE
from core.states import CallState
from providers.carriers.base import DialRequest

from .. import background
from ..models import Call, CallMode, Direction, GatewayLock
from ..runtime import get_runtime
from ..selectors import call_find, call_voice
from ..session_keys import explicit_session_key, session_key_for_call
from .common import carrier_request, finalize, log
from .dtmf import DTMF_MESSAGE, DTMF_PATTERN

MODES = tuple(CallMode.values)
# A call still without a carrier id this long after it was written is a dial that never finished.
DIAL_GRACE = timedelta(seconds=60)


def call_initiate(
    *,
    to: str,
    message: str | None = None,
    mode: str | None = None,
    dtmf_sequence: str | None = None,
    session_key: str | None = None,
    requester_session_key: str | None = None,
    agent_id: str | None = None,
) -> Call:
    """Place an outbound call. The record is written (and counted) before the carrier is asked.

    Raises InvalidRequest, CapacityReached, SetupIncomplete..., or CallFailed (record kept, failed).
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
    webhook_url = runtime.webhook_url()
    from_number = config.effective_from_number()
    if not from_number:
        raise InvalidRequest("fromNumber not configured")
    agent = agent_id or config.resolved_agent_id()
    explicit_key = explicit_session_key(session_key, agent_id=agent) if session_key is not None else None

    with transaction.atomic():
        # One admission at a time across processes: count and insert under the same lock.
        GatewayLock.objects.select_for_update().get_or_create(name="admission")
        if Call.objects.live().count() >= config.max_concurrent_calls:
            raise CapacityReached(config.max_concurrent_calls)
        call = Call(
            provider=runtime.carrier.name, direction=Direction.OUTBOUND, from_number=from_number, to_number=to, agent_id=agent,
            mode=mode, initial_message=message or "", requester_session_key=requester_session_key or "",
            # Digits the carrier cannot dial with are sent as soon as the call is answered.
            pending_dtmf="" if runtime.carrier.dials_with_dtmf else dtmf_sequence or "",
        )
        call.session_key = explicit_key or session_key_for_call(
            scope=config.session_scope, agent_id=agent, direction="outbound",
            from_number=from_number, to_number=to, call_id=str(call.pk),
        )
        call.save()

    dial = DialRequest(
        call_id=str(call.pk), from_number=from_number, to_number=to, webhook_url=webhook_url,
        mode=mode, initial_message=message, voice=call_voice(call=call), dtmf_sequence=dtmf_sequence,
    )
    try:
        result = carrier_request("initiate", runtime.carrier.initiate_call, dial=dial)
    except CarrierError as exc:
        with transaction.atomic():
            failed = Call.objects.select_for_update().get(pk=call.pk)
            finalize(failed, CallState.FAILED, error=exc.message)
        raise CallFailed(exc.message, call_id=str(call.pk)) from exc

    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        call.provider_call_id = call.provider_call_id or result.provider_call_id
        call.save()
        ended_meanwhile = call.is_terminal
    if ended_meanwhile:
        # Ended while we were dialing (e.g. `end` raced the dial): do not leave the line up.
        background.submit("calls.carrier_hangup", call_id=str(call.pk), reason=call.end_reason or "hangup-bot")
    log.info("outbound call %s to %s placed (%s, %s)", call.pk, to, result.provider_call_id, mode)
    return call


@background.job("calls.answer")
def answer_inbound(*, call_id: str) -> None:
    """Pick up an inbound call at the carrier (carriers that need an explicit answer)."""
    runtime = get_runtime()
    call = call_find(ref=call_id)
    if call is not None and not call.is_terminal and call.provider_call_id:
        carrier_request("answer", runtime.carrier.answer_call, call_id=call_id, provider_call_id=call.provider_call_id)
