"""The operations the RPC, the agent tool and the CLI share, in the reference's result shapes.

Each takes already-typed values, checks its required inputs (CommandInputError, the reference's
INVALID_REQUEST) and calls the services; any other VoiceCallError is an operational failure
(UNAVAILABLE). Results are plain JSON-ready dicts.
"""
from __future__ import annotations

from datetime import timezone as dt_timezone
from typing import Any

from core.errors import InvalidRequest, VoiceCallError
from .runtime import get_runtime
from .selectors import call_find, call_summary, live_calls
from .services import call_continue, call_end, call_initiate, call_send_dtmf, call_speak
from .services.common import call_lookup


class CommandInputError(InvalidRequest):
    """A required input is missing, or the call is not active: the caller must change the request."""


def require(value: str | None, message: str) -> str:
    if not value:
        raise CommandInputError(message)
    return value


def runtime_ready() -> None:
    """Raise the setup/disabled error now, before any work (the tool checks this first)."""
    get_runtime()


def initiate(
    *,
    to: str | None = None,
    message: str | None = None,
    mode: str | None = None,
    dtmf_sequence: str | None = None,
    session_key: str | None = None,
    requester_session_key: str | None = None,
    agent_id: str | None = None,
    missing_to: str = "to required",
) -> dict[str, Any]:
    config = get_runtime().config
    to = require(to or config.to_number, missing_to)
    call = call_initiate(
        to=to, message=message, mode=mode, dtmf_sequence=dtmf_sequence,
        session_key=session_key, requester_session_key=requester_session_key, agent_id=agent_id,
    )
    return {"callId": str(call.pk), "initiated": True}


def active_call_id(call_id: str | None, message: str | None, missing: str = "callId and message required") -> str:
    """Our id of a live call (given ours or the carrier's), or why it is not live."""
    require(call_id, missing)
    require(message, missing)
    get_runtime()
    call = call_lookup(call_id)
    if call is None:
        raise CommandInputError("Call not found")
    if call.is_terminal:
        details = [f"last state={call.state}"]
        if call.end_reason:
            details.append(f"endReason={call.end_reason}")
        if call.ended_at:
            ended = call.ended_at.astimezone(dt_timezone.utc)
            details.append("endedAt=" + ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        raise CommandInputError(f"call is not active ({', '.join(details)})")
    return str(call.pk)


def continue_call(call_id: str | None, message: str | None) -> dict[str, Any]:
    resolved = active_call_id(call_id, message)
    transcript = call_continue(call_id=resolved, prompt=message)
    return {"success": True, "transcript": transcript}


def speak(call_id: str | None, message: str | None, *, allow_twiml_fallback: bool = True) -> dict[str, Any]:
    resolved = active_call_id(call_id, message)
    if get_runtime().config.realtime.enabled and not allow_twiml_fallback:
        # Speaking through a realtime model needs its bridge attached to this call; none is, and
        # the caller asked not to fall back to the carrier's own TTS.
        return {"success": False, "error": "Realtime bridge is not active"}
    call_speak(call_id=resolved, text=message)
    return {"success": True}


def send_dtmf(call_id: str | None, digits: str | None) -> dict[str, Any]:
    require(call_id, "callId and digits required")
    require(digits, "callId and digits required")
    get_runtime()
    call_send_dtmf(call_id=call_id, digits=digits)
    return {"success": True}


def end(call_id: str | None) -> dict[str, Any]:
    require(call_id, "callId required")
    get_runtime()
    call_end(call_id=call_id)
    return {"success": True}


def status(call_id: str | None = None) -> dict[str, Any]:
    get_runtime()
    if not call_id:
        return {"found": True, "calls": [call_summary(call) for call in live_calls()]}
    call = call_find(call_id)
    return {"found": True, "call": call_summary(call)} if call else {"found": False}


def failure_message(error: Exception, fallback: str) -> str:
    """The text an operational failure is reported with (the reference's fallback when empty)."""
    text = str(error) if isinstance(error, VoiceCallError) else ""
    return text or fallback
