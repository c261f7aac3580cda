"""Call states and the one transition rule every state change goes through (docs/compatibility.md, States and transitions)."""
from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"
    LISTENING = "listening"
    COMPLETED = "completed"
    HANGUP_USER = "hangup-user"
    HANGUP_BOT = "hangup-bot"
    TIMEOUT = "timeout"
    ERROR = "error"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    TRANSFERRED = "transferred"  # handed to another number or SIP address; the gateway is out of it


# Non-terminal states in their forward order; speaking and listening alternate at the end.
FORWARD_ORDER = (
    CallState.INITIATED,
    CallState.RINGING,
    CallState.ANSWERED,
    CallState.ACTIVE,
    CallState.SPEAKING,
    CallState.LISTENING,
)
TERMINAL_STATES = frozenset(
    {
        CallState.COMPLETED,
        CallState.HANGUP_USER,
        CallState.HANGUP_BOT,
        CallState.TIMEOUT,
        CallState.ERROR,
        CallState.FAILED,
        CallState.NO_ANSWER,
        CallState.BUSY,
        CallState.VOICEMAIL,
        CallState.TRANSFERRED,
    }
)
# End reasons are exactly the terminal state names.
END_REASONS = frozenset(TERMINAL_STATES)
CONVERSATION_STATES = frozenset({CallState.SPEAKING, CallState.LISTENING})
_RANK = {state: index for index, state in enumerate(FORWARD_ORDER)}


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


def next_state(current: str, target: str) -> CallState:
    """The state a call is in after asking to move from `current` to `target`.

    Same state or already terminal: unchanged. Terminal target: always taken.
    speaking <-> listening: taken both ways. Otherwise only forward moves are taken;
    backward requests are ignored.
    """
    current, target = CallState(current), CallState(target)
    if current == target or current in TERMINAL_STATES:
        return current
    if target in TERMINAL_STATES:
        return target
    if current in CONVERSATION_STATES and target in CONVERSATION_STATES:
        return target
    return target if _RANK[target] > _RANK[current] else current
