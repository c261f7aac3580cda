"""Send times stamped into μ-law frames, so a frame's trip through the gateway is timed across processes.

The first 16 bytes of a frame carry a kind (one nibble) and `time.monotonic()` in microseconds (15
nibbles), each nibble as the byte 0xF0 | nibble. Those bytes decode to μ-law amplitudes of 120 or
less (of 32767: below -48 dBFS), near silence, so a stamp changes neither what a voice detector
hears nor the frame's size.
CLOCK_MONOTONIC is one clock for every process on a Linux machine, so a stamp made in one process
is compared with `time.monotonic()` read in another.
"""
from __future__ import annotations

import time

STAMP_BYTES = 16
CALLER = 1  # a caller's frame, stamped by the simulated carrier as it is sent
FIRST = 2  # the first frame of one model answer, stamped by the model's fake
STEADY = 3  # any later frame of that answer
KINDS = (CALLER, FIRST, STEADY)
MAX_AGE = 60.0  # seconds: an older "stamp" is audio that happens to look like one
_MASK = (1 << 60) - 1


def stamp(frame: bytes | bytearray, kind: int, at: float | None = None) -> bytes:
    """`frame` with its first 16 bytes replaced by the stamp (`at`, default now)."""
    value = (kind << 60) | (int((time.monotonic() if at is None else at) * 1_000_000) & _MASK)
    head = bytes(0xF0 | (value >> shift) & 0xF for shift in range(60, -4, -4))
    return head + bytes(frame[STAMP_BYTES:])


def read_stamp(frame: bytes | bytearray, now: float | None = None) -> tuple[int, float] | None:
    """(kind, monotonic seconds) of a stamped frame; None for a frame without a (plausible) stamp."""
    head = frame[:STAMP_BYTES]
    if len(head) < STAMP_BYTES:
        return None
    value = 0
    for byte in head:
        if byte < 0xF0:
            return None
        value = value << 4 | byte & 0xF
    kind, at = value >> 60, (value & _MASK) / 1_000_000
    age = (time.monotonic() if now is None else now) - at
    if kind not in KINDS or not -0.001 <= age <= MAX_AGE:
        return None
    return kind, at
