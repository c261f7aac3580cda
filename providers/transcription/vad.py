"""A small energy voice-activity detector on 8 kHz μ-law, for providers that cannot find turn ends themselves."""
from __future__ import annotations

from typing import Literal

import numpy as np

from core.audio import BYTES_PER_MS, ULAW_TO_PCM

# RMS of 16-bit samples. Phone line noise sits well under 100 (about −50 dBFS); speech
# is usually 1000 or more, so −38 dBFS leaves room on both sides.
DEFAULT_THRESHOLD = 400.0
DEFAULT_SILENCE_MS = 800
DEFAULT_START_FRAMES = 3

VadEvent = Literal["start", "end"]

# The square of every μ-law byte's sample: a frame's energy is one table lookup and one sum, with
# no decoding to samples, no float conversion and no square root (the threshold is squared instead).
_SQUARES = ULAW_TO_PCM.astype(np.float64) ** 2


class EnergyVad:
    """Speech starts after `start_frames` loud frames in a row and ends after `silence_ms` of quiet.

    Feed it the caller's audio in any chunk size (normally 20 ms frames); quiet is measured by
    the duration of the chunks, so timing does not depend on how fast audio is fed.
    """

    def __init__(self, silence_ms: int = DEFAULT_SILENCE_MS, threshold: float = DEFAULT_THRESHOLD,
                 start_frames: int = DEFAULT_START_FRAMES) -> None:
        if silence_ms <= 0 or threshold <= 0 or start_frames <= 0:
            raise ValueError("silence_ms, threshold and start_frames must be positive")
        self.silence_ms = silence_ms
        self.threshold = threshold
        self._threshold_squared = threshold * threshold
        self.start_frames = start_frames
        self._speaking = False
        self._loud_run = 0
        self._quiet_ms = 0.0

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def quiet_ms(self) -> float:
        """How long the caller has been quiet within the current utterance (0 outside one)."""
        return self._quiet_ms

    def loud(self, ulaw: bytes) -> bool:
        """Whether a chunk's RMS level reaches the threshold."""
        energy = _SQUARES[np.frombuffer(ulaw, dtype=np.uint8)].sum()
        return bool(energy >= self._threshold_squared * len(ulaw))

    def feed(self, ulaw: bytes) -> VadEvent | None:
        """One chunk of μ-law audio; returns "start" or "end" when the state changes."""
        if not ulaw:
            return None
        loud = self.loud(ulaw)
        if not self._speaking:
            # A single click or pop must not count as speech, hence the run of loud frames.
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= self.start_frames:
                self._speaking = True
                self._quiet_ms = 0.0
                return "start"
            return None
        if loud:
            self._quiet_ms = 0.0
            return None
        self._quiet_ms += len(ulaw) / BYTES_PER_MS
        if self._quiet_ms >= self.silence_ms:
            self.reset()
            return "end"
        return None

    def reset(self) -> None:
        self._speaking = False
        self._loud_run = 0
        self._quiet_ms = 0.0
