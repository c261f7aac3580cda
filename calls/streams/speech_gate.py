"""The local barge-in speech gate: loud μ-law frames in a row mean the caller talks over the model."""
from __future__ import annotations

from core.audio import rms, ulaw_to_samples

THRESHOLD = 0.035  # of full scale
TRIGGER_FRAMES = 3  # loud 20 ms frames in a row that start speech (the reference uses 2 to 4)
RESET_FRAMES = 12  # quiet frames in a row after which speech has ended
FULL_SCALE = 32768.0


class SpeechGate:
    """Fed each inbound frame; `push` returns True once per utterance, when speech starts."""

    def __init__(self, *, threshold: float = THRESHOLD, trigger_frames: int = TRIGGER_FRAMES,
                 reset_frames: int = RESET_FRAMES) -> None:
        if not 1 <= trigger_frames:
            raise ValueError("trigger_frames must be at least 1")
        self.level = threshold * FULL_SCALE
        self.trigger_frames = trigger_frames
        self.reset_frames = reset_frames
        self.loud = 0
        self.quiet = 0
        self.speaking = False

    def push(self, ulaw: bytes) -> bool:
        loud = rms(ulaw_to_samples(ulaw)) >= self.level
        if loud:
            self.loud += 1
            self.quiet = 0
            if not self.speaking and self.loud >= self.trigger_frames:
                self.speaking = True
                return True
            return False
        self.quiet += 1
        if not self.speaking:
            self.loud = 0  # loud frames must follow each other
        elif self.quiet >= self.reset_frames:
            self.speaking = False
            self.loud = 0
        return False

    def reset(self) -> None:
        self.loud = self.quiet = 0
        self.speaking = False
