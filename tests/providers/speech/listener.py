"""A transcription listener for tests: it keeps every event it was told, in order, and can wait for one."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.waiting import await_stays, await_until, describe


class Recorder:
    """A TranscriptListener that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.errors: list[Exception] = []

    def on_speech_started(self) -> None:
        self.events.append(("start", ""))

    def on_partial(self, text: str) -> None:
        self.events.append(("partial", text))

    def on_final(self, text: str) -> None:
        self.events.append(("final", text))

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)
        self.events.append(("error", str(error)))

    def of(self, kind: str) -> list[str]:
        return [text for event, text in self.events if event == kind]

    @property
    def finals(self) -> list[str]:
        return self.of("final")

    @property
    def partials(self) -> list[str]:
        return self.of("partial")

    async def wait(self, condition: Callable[[Recorder], Any]) -> None:
        try:
            await await_until(lambda: condition(self), describe(condition))
        except AssertionError as exc:
            pytest.fail(f"{exc}; the listener heard {self.events}")

    async def only(self, condition: Callable[[Recorder], Any], seconds: float = 0.1) -> None:
        """Negative check: nothing more arrives (a duplicate final, a second error) for a while."""
        await await_stays(lambda: condition(self), describe(condition), seconds=seconds)
