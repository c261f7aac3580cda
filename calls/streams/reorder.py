"""Inbound media put back in sequence order within a small window (carriers that do not promise order)."""
from __future__ import annotations

from collections.abc import Callable

from providers.carriers.media import StreamMedia

from .stats import StreamStats

# A sequence number this far behind the next expected one is not a late frame but a carrier that
# started counting again (a reconnect on the same socket): the order restarts from it.
RESTART_BEHIND = 500


class Reorder:
    """Frames in sequence order to `deliver`, each once.

    An in-order frame goes straight through (no added latency, no allocation). A frame that comes
    early waits in a fixed ring of `window` slots for the missing ones; once a frame arrives that
    does not fit the window, the gap is given up: the frames held are delivered in order and the
    missing ones skipped. A frame already delivered or given up (a duplicate, or later than the
    window) is dropped. Frames without a sequence number pass as they come.

    Telnyx numbers all its messages in one sequence: a number a mark or DTMF message used is
    `skip`ped, so it is not a gap the media waits for.
    """

    __slots__ = ("window", "deliver", "stats", "slots", "next", "held")

    def __init__(self, window: int, deliver: Callable[[StreamMedia], None], stats: StreamStats) -> None:
        if window < 1:
            raise ValueError("the reorder window holds at least one frame")
        self.window = window
        self.deliver = deliver
        self.stats = stats
        # Slot i holds the frame numbered next + 1 + k with (next + 1 + k) % (window + 1) == i; the
        # slot of `next` itself is always empty (that frame is the one awaited).
        self.slots: list[StreamMedia | None] = [None] * (window + 1)
        self.next: int | None = None  # the sequence number delivered next
        self.held = 0

    def push(self, frame: StreamMedia) -> None:
        sequence = frame.sequence
        if sequence is None:
            self.deliver(frame)
            return
        expected = self.next
        if expected is None or sequence < expected - RESTART_BEHIND:
            if expected is not None:
                self.flush()
            expected = self.next = sequence
        if sequence == expected and not self.held:
            self.next = sequence + 1  # the usual case: in order, nothing waiting
            if frame.payload:
                self.deliver(frame)
            return
        if sequence < expected:
            self.stats.drop("duplicate" if sequence >= expected - self.window - 1 else "late")
            return
        if sequence - expected > self.window:
            self._give_up_until(sequence - self.window)
        index = sequence % len(self.slots)
        waiting = self.slots[index]
        if waiting is not None:  # the same number again while it waits
            self.stats.drop("duplicate")
            return
        self.slots[index] = frame
        self.held += 1
        if sequence != self.next and frame.payload:
            self.stats.counters["reordered"] += 1
        self._release()

    def skip(self, sequence: int) -> None:
        """A number another kind of message used: the media goes on past it without waiting."""
        if self.next is not None and self.next <= sequence:
            self.push(StreamMedia(b"", sequence))  # held like a frame, never delivered (media has audio)

    def flush(self) -> None:
        """Deliver whatever is held, in order (the stream is stopping)."""
        while self.held:
            self._step()

    def _release(self) -> None:
        """Deliver held frames from `next` on while there is no gap."""
        slots, size = self.slots, len(self.slots)
        while self.held:
            index = self.next % size
            frame = slots[index]
            if frame is None:
                return
            slots[index] = None
            self.held -= 1
            self.next += 1
            if frame.payload:
                self.deliver(frame)

    def _give_up_until(self, first: int) -> None:
        """Move `next` up to `first`: held frames before it are delivered, missing ones counted as lost."""
        while self.next < first:
            if not self.held:
                self.stats.counters["frames_missing"] += first - self.next
                self.next = first
                break
            self._step()
        self._release()

    def _step(self) -> None:
        """Past the awaited position: its frame delivered if held, else counted as lost."""
        index = self.next % len(self.slots)
        frame = self.slots[index]
        self.next += 1
        if frame is None:
            self.stats.counters["frames_missing"] += 1
            return
        self.slots[index] = None
        self.held -= 1
        if frame.payload:
            self.deliver(frame)
