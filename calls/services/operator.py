"""Actions an operator takes on a live call from the console (speak, DTMF, transfer, end), each kept as an audit event."""
from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from core.errors import CallHasEnded, CallNotFound, VoiceCallError

from ..clock import now
from ..models import Call, CallEvent
from ..selectors import call_find
from .call_requests import call_end_request, call_send_dtmf_request, call_speak_request, call_transfer_request, input_required

log = logging.getLogger("calls.operator")

OPERATOR_ACTIONS = ("speak", "dtmf", "transfer", "end")
# The form field each action takes, and the payload key its value is kept under.
ACTION_FIELDS = {"speak": "text", "dtmf": "digits", "transfer": "to", "end": None}
# Further form fields an action takes (kept in the payload too); transfer's target may be left empty
# for the call's configured transferTo.
ACTION_EXTRA_FIELDS = {"transfer": ("mode", "summary")}
TEXT_REQUIRED = "message required"  # call_speak's own wording
DIGITS_REQUIRED = "digits required"


class CallAlreadyEnded(CallHasEnded):
    """The call ended before the operator's action reached it."""

    def __init__(self, call: Call) -> None:
        VoiceCallError.__init__(self, f"Call {call.pk} has already ended ({call.end_reason or call.state})")


def operator_action(*, call_id: str, action: str, user: Any, value: str | None = None,
                    extra: dict[str, str | None] | None = None) -> str:
    """Run `action` on the call for `user` through the call requests; returns what was done, in words.

    The attempt is stored (an `operator.<action>` event naming the user) before anything is sent to
    the carrier, then its outcome is written onto it: an action that reached the call is never
    without its record, even when this process dies before the carrier answers (`ok` stays null:
    the outcome is unknown). Raises CallNotFound (nothing stored: no call to store it on),
    CallAlreadyEnded, or the request's own error (InputRejected, InvalidRequest, CarrierError, ...).
    """
    if action not in OPERATOR_ACTIONS:
        raise ValueError(f"unknown operator action {action!r}")
    call = call_find(ref=call_id)
    if call is None:
        raise CallNotFound()
    field = ACTION_FIELDS[action]
    payload: dict[str, Any] = {"user": user.get_username(), "userId": user.pk}
    if field:
        payload[field] = (value or "").strip()
    for name in ACTION_EXTRA_FIELDS.get(action, ()):
        payload[name] = ((extra or {}).get(name) or "").strip()
    event = _attempt_store(call, action, payload)
    try:
        done = _run(call, action, payload.get(field) if field else None, payload, user)
    except Exception as exc:
        error = _ended_error(call) or exc
        _outcome_store(event, payload, error=_error_text(error))
        if error is exc:
            raise
        raise error from None
    _outcome_store(event, payload)
    return done


def _attempt_store(call: Call, action: str, payload: dict[str, Any]) -> CallEvent:
    """The attempt, committed now (on its own, whatever the request's transaction), before the action runs."""
    with transaction.atomic():
        # The row lock keeps the call from being deleted under the insert (then: not found).
        if not Call.objects.select_for_update().filter(pk=call.pk).exists():
            raise CallNotFound()
        event = CallEvent.objects.create(call_id=call.pk, type=f"operator.{action}", payload={**payload, "ok": None},
                                         occurred_at=now())
    log.info("operator %s: %s on call %s", payload["user"], action, call.pk)
    return event


def _run(call: Call, action: str, value: str | None, payload: dict[str, Any], user: Any) -> str:
    if call.is_terminal:
        # Ending an ended call is a no-op success for the RPC; an operator must hear it was over already.
        raise CallAlreadyEnded(call)
    call_id = str(call.pk)
    if action == "speak":
        text = input_required(value, message=TEXT_REQUIRED)
        result = call_speak_request(call_id=call_id, message=text)
        if not result.success:
            raise VoiceCallError(result.error or "speak failed")
        return f"Said on the call: {text}"
    if action == "dtmf":
        digits = input_required(value, message=DIGITS_REQUIRED)
        call_send_dtmf_request(call_id=call_id, digits=digits)
        return f"Sent DTMF {digits}"
    if action == "transfer":
        result = call_transfer_request(call_id=call_id, to=value or None, mode=payload.get("mode") or None,
                                       summary=payload.get("summary") or None, requested_by=user.get_username())
        payload["transferId"] = result.transfer_id
        how = "warm transfer (the summary first)" if result.kind == "warm" else "transfer"
        return f"Call handed to {result.target}: {how} dialing; the call record shows how it goes"
    call_end_request(call_id=call_id)
    return "Call ended"


def _ended_error(call: Call) -> CallAlreadyEnded | None:
    """The clear error for a call found ended after the action failed (it ended meanwhile), else None."""
    current = Call.objects.filter(pk=call.pk).only("state", "end_reason").first()
    if current is not None and current.is_terminal:
        return CallAlreadyEnded(current)
    return None


def _error_text(error: Exception) -> str:
    return str(error) if isinstance(error, VoiceCallError) else f"internal error ({type(error).__name__})"


def _outcome_store(event: CallEvent, payload: dict[str, Any], *, error: str | None = None) -> None:
    outcome = {**payload, "ok": error is None}
    if error is not None:
        outcome["error"] = error
    if not CallEvent.objects.filter(pk=event.pk).update(payload=outcome):
        # The call's record was deleted meanwhile (its events with it): the log keeps the audit line.
        log.warning("operator %s: %s on call %s: %s (the call's record is gone: not stored)",
                    payload["user"], event.type, event.call_id, error or "ok")
        return
    if error is not None:
        log.info("operator %s: %s on call %s failed: %s", payload["user"], event.type, event.call_id, error)
