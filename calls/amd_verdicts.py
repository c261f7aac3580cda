"""Answering-machine verdicts: which mean a machine, whether a call's start is still held, and how such a call ended."""
from __future__ import annotations

from core.states import CallState

from .models import Call, Direction

AMD_MODES_ON = ("detect", "voicemail")
MACHINE_START = "machine_start"  # a machine, its greeting still playing
MACHINE_END = ("machine_end_beep", "machine_end_silence", "machine_end_other")
FAX = "fax"
# No verdict within amdTimeoutMs of the answer: the call goes on as with a person (Twilio says the same).
TIMED_OUT = "unknown"
# Voicemail mode: a machine whose greeting's end was not reported within twice amdTimeoutMs of the answer.
GREETING_TIMED_OUT = "machine_end_timeout"
# Ends of a call a machine answered that mean it simply finished: recorded as voicemail.
PLAIN_ENDS = (CallState.COMPLETED.value, CallState.HANGUP_BOT.value, CallState.HANGUP_USER.value)


def amd_on(call: Call) -> bool:
    """The call asked for answering-machine detection (outbound calls only)."""
    return call.amd_mode in AMD_MODES_ON and call.direction == Direction.OUTBOUND


def is_machine(verdict: str) -> bool:
    return verdict == FAX or verdict.startswith("machine")


def amd_holds(call: Call) -> bool:
    """Whether the call's start (greeting, stream, listening) waits: no verdict yet, or a machine (never started)."""
    if not amd_on(call) or call.is_terminal:
        return False
    return not call.answered_by or is_machine(call.answered_by)


def amd_end_reason(call: Call, reason: str) -> str:
    """A call a machine answered that simply finished ended at voicemail; any other end keeps its reason."""
    if reason in PLAIN_ENDS and amd_on(call) and is_machine(call.answered_by):
        return CallState.VOICEMAIL.value
    return reason
