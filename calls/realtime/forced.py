"""The forced consult (consultPolicy always): when the model answers a caller without consulting, the host consults for it."""
from __future__ import annotations

from dataclasses import dataclass

# After the caller's final words, the model has this long to call the consult tool itself.
FORCED_DELAY_S = 0.2
# A consult (the model's or a forced one) within this window covers the caller's words.
DEDUPE_WINDOW_S = 2.0
MAX_ANSWER_CHARS = 1800


@dataclass
class _Pending:
    text: str
    heard_at: float


class ForcedConsult:
    """Decides when the host consults on the model's behalf; pure bookkeeping, times passed in (monotonic seconds).

    Feed it `on_final_transcript` and `on_consult_called`; ask `due(now)` (or wait `delay(now)`
    seconds first). `take(now)` returns the caller's words to consult on, once.
    """

    def __init__(self, *, delay: float = FORCED_DELAY_S, window: float = DEDUPE_WINDOW_S) -> None:
        self.delay = delay
        self.window = window
        self._pending: _Pending | None = None
        self._last_consult: float | None = None  # when the model last called the consult tool
        self._last_forced: tuple[str, float] | None = None  # the words and time of the last forced consult

    def on_final_transcript(self, text: str, now: float) -> None:
        """The caller finished an utterance; blank text starts nothing."""
        text = text.strip()
        if not text:
            return
        if self._pending is not None:
            # Several final pieces before the consult: one consult on all of them.
            self._pending = _Pending(f"{self._pending.text} {text}", self._pending.heard_at)
        else:
            self._pending = _Pending(text, now)

    def on_consult_called(self, now: float) -> None:
        """The model called the consult tool itself: nothing is owed for what the caller said."""
        self._last_consult = now
        self._pending = None

    def delay_left(self, now: float) -> float | None:
        """Seconds until a forced consult is due, 0 when due now, None when none is owed."""
        if self._pending is None:
            return None
        return max(0.0, self._pending.heard_at + self.delay - now)

    def due(self, now: float) -> bool:
        """Whether the host should consult now (a final caller transcript, no consult for `delay`, none in the window)."""
        if self._pending is None or now < self._pending.heard_at + self.delay:
            return False
        if self._last_consult is not None and now - self._last_consult < self.window:
            # The model consulted moments ago (the caller's transcript often arrives after the
            # model already acted on the audio): those words were part of it.
            self._pending = None
            return False
        if (self._last_forced is not None and self._last_forced[0] == self._pending.text
                and now - self._last_forced[1] < self.window):
            self._pending = None  # the same words again (a repeated transcript): consulted already
            return False
        return True

    def take(self, now: float) -> str | None:
        """The words to consult on when due (and the consult counted as started), else None."""
        if not self.due(now):
            return None
        assert self._pending is not None
        text = self._pending.text
        self._pending = None
        self._last_forced = (text, now)
        return text


def forced_answer_text(answer: str) -> str:
    """A forced consult's answer cut to what can be injected as speech (1800 characters)."""
    answer = " ".join(answer.split())
    if len(answer) <= MAX_ANSWER_CHARS:
        return answer
    cut = answer[: MAX_ANSWER_CHARS - 1]
    space = cut.rfind(" ")
    if space > MAX_ANSWER_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"
