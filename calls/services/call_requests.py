"""The call requests the RPC, the agent tool and the CLI share: required inputs checked, then the service, a small result.

Each takes the values a surface received (None or blank when missing), checks its required inputs
with the reference's messages (InputRejected, the reference's INVALID_REQUEST) and runs the call
service; any other VoiceCallError is an operational failure (UNAVAILABLE). Results serialize to
the reference's JSON shapes with `as_dict()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone as dt_timezone
from typing import Any

from core.errors import CallNotFound, InvalidRequest, VoiceCallError
from ..clock import now
from ..dial_time import due_time_parse
from ..runtime import get_runtime
from ..selectors import call_find
from .dial_job import dial_status
from .dial_queue import CallScheduled, call_schedule, dial_cancel
from .dialing import call_initiate
from .dtmf import call_send_dtmf
from .ending import call_end
from .speech import call_speak
from .transfer import TransferResult, call_transfer
from .turns import call_continue

CALL_AND_MESSAGE = "callId and message required"


class InputRejected(InvalidRequest):
    """A required input is missing, or the call is not active: the caller must change the request."""


@dataclass(frozen=True)
class CallPlaced:
    """A call written and its dial queued; `initiated` only once the carrier accepted the dial."""

    call_id: str
    dial: str = "placed"  # dial_job.dial_status: placed, dialing, retrying, queued or ended

    @property
    def initiated(self) -> bool:
        return self.dial == "placed"

    def as_dict(self) -> dict[str, Any]:
        if self.initiated:
            return {"callId": self.call_id, "initiated": True}
        return {"callId": self.call_id, "initiated": False, "queued": self.dial != "ended", "status": self.status_text()}

    def status_text(self) -> str:
        return DIAL_STATUS_TEXTS[self.dial]


DIAL_STATUS_TEXTS = {
    "placed": "the carrier accepted the dial",
    "queued": "queued: the dial waits for a worker or a rate-limit slot; the call's status shows when it is placed",
    "dialing": "queued: the carrier has not answered the dial request yet; the call's status shows when it is placed",
    "retrying": "queued: the carrier refused the dial for now (rate limit or server error); it is tried again with backoff",
    "ended": "ended before it was dialed",
}


@dataclass(frozen=True)
class TurnHeard:
    transcript: str

    def as_dict(self) -> dict[str, Any]:
        return {"success": True, "transcript": self.transcript}


@dataclass(frozen=True)
class ActionResult:
    success: bool = True
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"success": self.success}
        if self.error is not None:
            result["error"] = self.error
        return result


def input_required(value: str | None, *, message: str) -> str:
    """The value, or InputRejected(message) when it is missing or blank."""
    if not value:
        raise InputRejected(message)
    return value


def runtime_ready() -> None:
    """Raise the setup/disabled error now, before any work (the tool checks this first)."""
    get_runtime()


def failure_message(error: Exception, fallback: str) -> str:
    """The text an operational failure is reported with (the reference's fallback when empty)."""
    text = str(error) if isinstance(error, VoiceCallError) else ""
    return text or fallback


def call_active_id(*, call_id: str | None, message: str | None, missing: str = CALL_AND_MESSAGE) -> str:
    """Our id of a live call (given ours or the carrier's), or why it is not live."""
    input_required(call_id, message=missing)
    input_required(message, message=missing)
    get_runtime()
    call = call_find(ref=call_id)
    if call is None:
        raise InputRejected("Call not found")
    if call.is_terminal:
        details = [f"last state={call.state}"]
        if call.end_reason:
            details.append(f"endReason={call.end_reason}")
        if call.ended_at:
            ended = call.ended_at.astimezone(dt_timezone.utc)
            details.append("endedAt=" + ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        raise InputRejected(f"call is not active ({', '.join(details)})")
    return str(call.pk)


def call_initiate_request(
    *, to: str | None = None, missing_to: str = "to required", at: str | None = None, **options: Any,
) -> CallPlaced | CallScheduled:
    """Place a call to `to`, or to the configured toNumber when none is given; at `at` when given (a scheduled call).

    `options` are call_initiate's other keywords (message, mode, dtmf_sequence, session keys, agent_id,
    idempotency_key, call_id, wait, record, amd).
    """
    config = get_runtime().config
    to = input_required(to or config.to_number, message=missing_to)
    if at and options.get("amd") is not None:
        raise InputRejected("amd: a scheduled call (at) uses the configured amd; leave amd out")
    options = {name: value for name, value in options.items() if not (name == "amd" and value is None)}
    if at:
        try:
            due_at = due_time_parse(at, now=now(), param="at")
        except InvalidRequest as exc:
            raise InputRejected(exc.message) from None
        options.pop("wait", None)  # nothing is dialed now: there is no dial to wait for
        if options.pop("record", None) is not None:
            raise InputRejected("record: not available with at (a scheduled call records as the config and route say)")
        dial = call_schedule(to=to, due_at=due_at, **options)
        return CallScheduled(call_id=str(dial.pk), due_at=dial.due_at)
    call = call_initiate(to=to, **options)
    return CallPlaced(call_id=str(call.pk), dial=dial_status(call))


def call_continue_request(*, call_id: str | None, message: str | None) -> TurnHeard:
    resolved = call_active_id(call_id=call_id, message=message)
    return TurnHeard(transcript=call_continue(call_id=resolved, prompt=message))


def call_speak_request(*, call_id: str | None, message: str | None, allow_twiml_fallback: bool = True) -> ActionResult:
    resolved = call_active_id(call_id=call_id, message=message)
    if get_runtime().config.realtime.enabled:
        if _realtime_stream_open(resolved):
            from ..streams.commands import stream_inject

            if stream_inject(resolved, message):
                return ActionResult()
        if not allow_twiml_fallback:
            # Speaking through a realtime model needs its bridge attached to this call; none is, and
            # the caller asked not to fall back to the carrier's own TTS.
            return ActionResult(success=False, error="Realtime bridge is not active")
    call_speak(call_id=resolved, text=message)
    return ActionResult()


def _realtime_stream_open(call_id: str) -> bool:
    from ..models import MediaStream

    return MediaStream.objects.open().filter(call_id=call_id).exists()


def call_send_dtmf_request(*, call_id: str | None, digits: str | None) -> ActionResult:
    input_required(call_id, message="callId and digits required")
    input_required(digits, message="callId and digits required")
    get_runtime()
    call_send_dtmf(call_id=call_id, digits=digits)
    return ActionResult()


def call_end_request(*, call_id: str | None) -> ActionResult:
    input_required(call_id, message="callId required")
    get_runtime()
    if dial_cancel(call_id=call_id):
        return ActionResult()  # a scheduled call or dial-list row not placed yet: cancelled, nothing to hang up
    call_end(call_id=call_id)
    return ActionResult()


def call_transfer_request(*, call_id: str | None, to: str | None = None, mode: str | None = None,
                          summary: str | None = None, requested_by: str = "") -> TransferResult:
    """Hand a live call to `to` (else its route's or agent's transferTo); a bad request is the caller's to change."""
    input_required(call_id, message="callId required")
    get_runtime()
    try:
        return call_transfer(call_id=call_id, to=to, mode=mode, summary=summary, requested_by=requested_by)
    except InputRejected:
        raise
    except (InvalidRequest, CallNotFound) as exc:
        raise InputRejected(exc.message) from None
