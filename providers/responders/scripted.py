"""The scripted responder: configured replies in order, offline and deterministic (demos and tests)."""
from __future__ import annotations

from collections.abc import Iterator

from .base import Hangup, Responder, ResponderError, Turn

__all__ = ["HANGUP_MARK", "ScriptedResponder"]

HANGUP_MARK = "{hangup}"


class ScriptedResponder(Responder):
    """Says `replies[n]` on the n-th reply of a call, then repeats the last one.

    "{transcript}" in a reply is the caller's words. A reply that is exactly "{hangup}" ends the call
    without speaking; one ending in " {hangup}" says the rest first.
    """

    type = "scripted"
    follows_contract = False

    def respond(self, turn: Turn) -> Iterator[str | Hangup]:
        replies = list(getattr(self.settings, "replies", None) or ())
        if not replies:
            raise ResponderError("scripted responder: no replies configured")
        template = replies[min(max(turn.replies_so_far, 0), len(replies) - 1)]
        # the mark is read from the script before the transcript goes in, so a caller saying
        # "{hangup}" cannot end the call
        hangup = False
        if template == HANGUP_MARK:
            template, hangup = "", True
        elif template.endswith(" " + HANGUP_MARK):
            template, hangup = template[: -len(HANGUP_MARK)].rstrip(), True
        text = template.replace("{transcript}", turn.transcript)
        if text:
            yield text
        if hangup:
            yield Hangup()
