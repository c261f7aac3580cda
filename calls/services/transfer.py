"""Handing a live call to another number or SIP address (cold, or warm with a spoken summary), and how it went."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from core.errors import CallNotFound, CarrierError, InvalidRequest, UnsupportedByCarrier, VoiceCallError
from core.events import CallTransfer
from core.phone import transfer_target
from core.states import CallState
from routing.routes import call_route

from .. import background
from ..clock import now
from ..models import Call, Transfer, TransferKind, TransferStatus
from ..runtime import get_runtime
from ..selectors import call_find
from .common import CLAIM_TTL, carrier_request, finalize

log = logging.getLogger("calls.transfer")

TRANSFER_MODES = ("cold", "warm")
NO_TARGET = "to required: the call's route and agent name no transferTo"
SUMMARY_REQUIRED = "summary required: a warm transfer says it to the person answering first"


class CallNotTransferable(InvalidRequest):
    """The call cannot be handed off as it is (ended, not answered yet, or a transfer already under way)."""


@dataclass(frozen=True)
class TransferResult:
    """A transfer the carrier accepted: the target's phone rings; its outcome arrives later."""

    transfer_id: str
    call_id: str
    target: str
    kind: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": True, "transferId": self.transfer_id, "callId": self.call_id, "to": self.target,
            "mode": self.kind, "status": self.status,
        }


def transfer_default_target(call: Call) -> str | None:
    """Where this call may be handed off when the request names nobody: its route's transferTo, else its agent's."""
    config = get_runtime().config
    route = call_route(config, call)
    if route is not None and route.transfer_to:
        return route.transfer_to
    agent = config.agents.get(call.agent_id or config.resolved_agent_id())
    return agent.transfer_to if agent is not None else None


def call_transfer(*, call_id: str, to: str | None = None, mode: str | None = None, summary: str | None = None,
                  requested_by: str = "") -> TransferResult:
    """Hand the answered call `call_id` to `to` (default: the route's or agent's transferTo).

    Every check runs before anything is stored. The Transfer row is committed (requested) before
    the carrier is asked, so a transfer that reached the carrier is never without its record; then
    it is dialing (the carrier accepted) and the gateway's part of the call ends (`transferred`),
    or failed with the carrier's error (the call goes on as before). Raises InvalidRequest,
    CallNotFound, CallNotTransferable, UnsupportedByCarrier or CarrierError.
    """
    kind = _mode(mode)
    if summary is not None and not isinstance(summary, str):
        raise InvalidRequest("summary: expected text")
    text = (summary or "").strip()
    if kind == TransferKind.WARM and not text:
        raise InvalidRequest(SUMMARY_REQUIRED)
    runtime = get_runtime()
    carrier = runtime.carrier
    with transaction.atomic():
        call = call_find(ref=call_id, for_update=True)
        if call is None:
            raise CallNotFound()
        _check_transferable(call)
        target = to.strip() if isinstance(to, str) and to.strip() else transfer_default_target(call)
        if not target:
            raise InvalidRequest(NO_TARGET)
        try:
            target = transfer_target(target)
        except ValueError as exc:
            raise InvalidRequest(f"to: {exc}") from None
        if not carrier.supports_transfer:
            raise UnsupportedByCarrier(f"transfer is not supported by {carrier.name}")
        if kind == TransferKind.WARM and not carrier.supports_warm_transfer:
            raise UnsupportedByCarrier(f"warm transfer is not supported by {carrier.name}")
        transfer = Transfer.objects.create(call=call, target=target, kind=kind, requested_by=requested_by[:150],
                                           summary=text if kind == TransferKind.WARM else "")
        # If the carrier's end of the call arrives before our request returns, it ends as transferred.
        call.hangup_claimed_at, call.hangup_reason = now(), CallState.TRANSFERRED.value
        call.save(update_fields=["hangup_claimed_at", "hangup_reason", "updated_at"])
    log.info("call %s: %s transfer %s to %s requested by %s", call.pk, kind, transfer.pk, target, requested_by or "-")
    request = dict(call_id=str(call.pk), provider_call_id=call.provider_call_id, target=target, transfer_id=str(transfer.pk))
    try:
        if kind == TransferKind.WARM:
            reference = carrier_request("transfer", carrier.warm_transfer, summary=text, **request)
        else:
            reference = carrier_request("transfer", carrier.transfer_call, **request)
    except VoiceCallError as exc:
        _refused(call, transfer, exc)
        raise
    except Exception as exc:  # not a carrier's answer: the transfer still did not happen
        _refused(call, transfer, exc)
        raise CarrierError(f"transfer failed ({type(exc).__name__})") from exc
    with transaction.atomic():
        call = Call.objects.select_for_update().get(pk=call.pk)
        # An outcome may already be in (a fast carrier): it is not overwritten.
        reference = (reference or "")[:128]
        Transfer.objects.filter(pk=transfer.pk, status=TransferStatus.REQUESTED).update(
            status=TransferStatus.DIALING, provider_ref=reference)
        Transfer.objects.filter(pk=transfer.pk, provider_ref="").update(provider_ref=reference)
        call.hangup_claimed_at = None
        if not finalize(call, CallState.TRANSFERRED.value):
            call.save(update_fields=["hangup_claimed_at"])
    transfer.refresh_from_db()
    return TransferResult(transfer_id=str(transfer.pk), call_id=str(call.pk), target=target, kind=kind,
                          status=transfer.status)


def _mode(mode: object) -> str:
    """cold (also when unset or blank) or warm; InvalidRequest naming anything else."""
    text = mode.strip().lower() if isinstance(mode, str) else mode
    if text in (None, ""):
        return TransferKind.COLD.value
    if text not in TRANSFER_MODES:
        raise InvalidRequest(f"mode: expected cold or warm, got {mode!r}")
    return text


def _check_transferable(call: Call) -> None:
    if call.is_terminal:
        raise CallNotTransferable(f"call {call.pk} has already ended ({call.end_reason or call.state}): nothing was transferred")
    if call.answered_at is None or not call.provider_call_id:
        raise CallNotTransferable(f"call {call.pk} is not answered yet (state {call.state}): only an answered call can be transferred")
    if call.hangup_claimed_at is not None and now() - call.hangup_claimed_at < CLAIM_TTL:
        raise CallNotTransferable(f"call {call.pk} is being hung up or handed over by another request")
    # A transfer the carrier took ends the call; one still asking is recent. An older unanswered row
    # is a request whose process died before the carrier answered: it does not block a new one.
    if call.transfers.filter(status=TransferStatus.REQUESTED, requested_at__gt=now() - CLAIM_TTL).exists():
        raise CallNotTransferable(f"call {call.pk} already has a transfer under way")


def _refused(call: Call, transfer: Transfer, error: Exception) -> None:
    """The carrier did not take the transfer: the row says why, and the call goes on untouched."""
    message = str(error) if isinstance(error, VoiceCallError) else f"internal error ({type(error).__name__})"
    with transaction.atomic():
        Transfer.objects.filter(pk=transfer.pk).update(status=TransferStatus.FAILED, error=message, finished_at=now())
        Call.objects.filter(pk=call.pk, hangup_reason=CallState.TRANSFERRED.value).update(
            hangup_claimed_at=None, hangup_reason="")
    log.warning("call %s: transfer %s to %s refused: %s", call.pk, transfer.pk, transfer.target, message)


def transfer_outcome_apply(call: Call, event: CallTransfer) -> None:
    """The carrier's word on a transfer of `call` (in the webhook's transaction); applied to an ended call too.

    A transfer's outcome is final once: connected stays connected (its later hang-up is the
    conversation's end, not a failure), failed stays failed. An outcome for a transfer this call
    does not have is logged and changes nothing.
    """
    try:
        transfer_pk = uuid.UUID(event.transfer_id)
    except (ValueError, AttributeError):
        transfer_pk = None
    transfer = Transfer.objects.select_for_update().filter(pk=transfer_pk, call_id=call.pk).first() if transfer_pk else None
    if transfer is None:
        log.warning("transfer outcome %s for unknown transfer %r of call %s ignored", event.outcome, event.transfer_id, call.pk)
        return
    if transfer.status in (TransferStatus.CONNECTED, TransferStatus.FAILED):
        return
    transfer.finished_at = now()
    if event.outcome == "connected":
        transfer.status = TransferStatus.CONNECTED
        transfer.save(update_fields=["status", "finished_at"])
        log.info("call %s: transfer %s to %s connected", call.pk, transfer.pk, transfer.target)
        return
    transfer.status = TransferStatus.FAILED
    transfer.error = event.error or "the transfer failed"
    transfer.save(update_fields=["status", "error", "finished_at"])
    log.info("call %s: transfer %s to %s failed: %s", call.pk, transfer.pk, transfer.target, transfer.error)
    if event.hangup_caller:
        # The caller's leg is still up at the carrier with no one on it (held for a warm transfer, or
        # left by a failed cold one): it is hung up, the record stays as it is.
        background.submit("calls.carrier_hangup", call_id=str(call.pk), reason=CallState.TRANSFERRED.value)
