"""The responder interface: one conversation turn in, the reply's text out as it is made.

A responder is built from its `agents.<id>.responder` block (`ResponderConfig`); `respond(turn)`
returns an iterator that yields the reply as it is generated — text pieces (`str`) in order, and
optionally one `Hangup()` to end the call after the reply is spoken. It runs in a worker thread,
may block on I/O, must give up by `turn.deadline` (monotonic seconds) and raise ResponderError
with a message naming the responder for every failure (timeouts, HTTP errors, bad bodies).

`follows_contract` says whether the text is raw model output under the spoken-output contract
(extracted by providers/responders/spoken.py; docs/compatibility.md, Spoken-output contract) or already the exact words to say.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from core.config.models import ResolvedModel
from core.redact import RedactedError


class ResponderError(RedactedError):
    """A reply could not be made; the message names the responder and the cause (never secrets)."""


@dataclass(frozen=True)
class HistoryMessage:
    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class Hangup:
    """Yielded by a responder that wants the call ended once its reply was spoken."""

    reason: str = "hangup-bot"


@dataclass(frozen=True)
class Turn:
    """Everything a responder may use to answer the caller's latest words."""

    call_id: str
    agent_id: str
    session_key: str
    direction: str  # inbound | outbound
    from_number: str
    to_number: str
    transcript: str  # what the caller just said
    # The session's earlier messages (oldest first), not including this turn's transcript.
    history: tuple[HistoryMessage, ...] = ()
    # The full system prompt (base prompt, opening-context policy, output contract).
    system_prompt: str = ""
    # The user message to send: the transcript, wrapped with the call's opening when first.
    user_message: str = ""
    model: ResolvedModel | None = None
    deadline: float = field(default_factory=lambda: time.monotonic() + 30.0)
    replies_so_far: int = 0  # automatic replies already made on this call
    agent_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds left before the turn's deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())


class Responder:
    """Base class. Subclasses set `type` and implement `respond`."""

    type: ClassVar[str] = ""
    follows_contract: ClassVar[bool] = False

    def __init__(self, settings: Any) -> None:
        # A ResponderConfig (or None for the default llm responder).
        self.settings = settings

    def respond(self, turn: Turn) -> Iterator[str | Hangup]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (responders are kept and reused across turns)."""
