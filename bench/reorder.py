"""Benchmark: what putting Telnyx's inbound frames back in sequence order costs per 20 ms frame.

`Reorder.push` (calls/streams/reorder.py) is timed over many frames as CPU time of one thread,
against handing each frame straight on (what carriers that promise order get), for three arrival
patterns: all in order; every 10th pair swapped (a frame waits in the ring for the one before it);
every 25th frame lost (the window fills and the gap is given up). Nothing else runs: the
consumer's own work on a frame is measured by codecs.py and media_streams.py.

    taskset -c 0 .venv/bin/python bench/reorder.py              # --frames N per run, --repeat R
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.streams.reorder import Reorder  # noqa: E402
from calls.streams.stats import StreamStats  # noqa: E402
from providers.carriers.media import StreamMedia  # noqa: E402

PAYLOAD = b"\xff" * 160
WINDOW = 4  # the Telnyx codec's reorder_window


def frames(count: int, pattern: str) -> list[StreamMedia]:
    numbers = list(range(1, count + 1))
    if pattern == "swapped":
        for i in range(0, count - 1, 10):
            numbers[i], numbers[i + 1] = numbers[i + 1], numbers[i]
    elif pattern == "lost":
        numbers = [n for n in numbers if n % 25]
    return [StreamMedia(PAYLOAD, sequence=n) for n in numbers]


def per_frame_us(count: int, pattern: str, *, direct: bool = False) -> float:
    batch = frames(count, pattern)
    delivered = []
    deliver = delivered.append
    push = deliver if direct else Reorder(WINDOW, deliver, StreamStats()).push
    started = time.thread_time()
    for frame in batch:
        push(frame)
    spent = time.thread_time() - started
    assert len(delivered) >= len(batch) - WINDOW  # the last few may still wait in the ring
    return spent / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [("straight on (no reorder)", "in-order", True), ("reorder, all in order", "in-order", False),
            ("reorder, every 10th pair swapped", "swapped", False), ("reorder, every 25th frame lost", "lost", False)]
    print("| arrival | best (µs/frame) | median (µs/frame) |")
    print("|---|---|---|")
    for label, pattern, direct in rows:
        runs = [per_frame_us(args.frames, pattern, direct=direct) for _ in range(args.repeat)]
        print(f"| {label} | {min(runs):.3f} | {statistics.median(runs):.3f} |")


if __name__ == "__main__":
    main()
