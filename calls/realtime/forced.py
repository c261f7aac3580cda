"""The forced consult for consultPolicy "always" (minimal: never forces one)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable


class ForcedConsult:
    """Fed final caller transcripts and consult tool calls; `inject` speaks a forced answer."""

    def __init__(self, *, config, call_id: str, inject: Callable[[str], Awaitable[None]]) -> None:
        self.enabled = config.realtime.consult_policy == "always"

    def on_input_transcript(self, text: str) -> None:
        """A final caller utterance."""

    def on_consult(self) -> None:
        """The model consulted by itself."""

    def close(self) -> None:
        """The call ended: cancel anything pending."""
