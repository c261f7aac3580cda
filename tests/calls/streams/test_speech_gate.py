"""The local barge-in speech gate (calls/streams/speech_gate.py)."""
from __future__ import annotations

import numpy as np
import pytest

from calls.streams.speech_gate import SpeechGate
from core.audio import SILENCE_FRAME, samples_to_ulaw


def tone(amplitude: float) -> bytes:
    t = np.arange(160) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * 440 * t) * amplitude * 32767).astype(np.int16))


LOUD, SOFT = tone(0.3), tone(0.02)


def test_three_loud_frames_in_a_row_trigger_once():
    gate = SpeechGate()
    assert [gate.push(LOUD) for _ in range(5)] == [False, False, True, False, False]


def test_quiet_below_the_threshold_never_triggers():
    gate = SpeechGate()
    assert not any(gate.push(SOFT) for _ in range(50))
    assert not any(gate.push(SILENCE_FRAME) for _ in range(50))


def test_loud_frames_must_be_consecutive():
    gate = SpeechGate()
    pattern = [LOUD, LOUD, SILENCE_FRAME] * 10
    assert not any(gate.push(frame) for frame in pattern)


def test_twelve_quiet_frames_reset_for_the_next_utterance():
    gate = SpeechGate()
    assert any(gate.push(LOUD) for _ in range(3))
    for _ in range(11):
        gate.push(SILENCE_FRAME)
    assert not any(gate.push(LOUD) for _ in range(3))  # still the same utterance
    for _ in range(12):
        gate.push(SILENCE_FRAME)
    assert [gate.push(LOUD) for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("frames", [2, 4])
def test_trigger_length_is_configurable(frames):
    gate = SpeechGate(trigger_frames=frames)
    results = [gate.push(LOUD) for _ in range(frames)]
    assert results[-1] and not any(results[:-1])
