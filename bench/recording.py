"""Benchmark: what the local recording of a streamed call costs, per 20 ms frame and per second written.

On the loop, every 20 ms of a recorded call adds one caller frame (`StreamRecording.inbound`, with
its carrier timestamp) and one gateway frame (`outbound`); once a second the buffered audio is
handed to the writer thread. That is timed over many frames with the row services left out (no
database), as CPU time of the loop's thread, and divided by the frames. The writer thread's side
(μ-law to PCM16 for both channels, interleaving, the samples and the two header sizes written)
is timed per one-second chunk on a real file. For comparison, the same file written frame by
frame on the loop (what the buffering avoids): a decode, an interleave and three writes per
frame.

    taskset -c 0 .venv/bin/python bench/recording.py              # --seconds N of call per run, --repeat R
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_project.settings")

import django  # noqa: E402

django.setup()

from bench.report import figure, write_summary  # noqa: E402
from calls.streams import recording  # noqa: E402
from core.audio import FRAME_BYTES, samples_to_ulaw  # noqa: E402


def speech_like(frames: int) -> list[bytes]:
    """Frames of a noisy tone (the μ-law values vary like speech, so nothing is artificially cheap)."""
    rng = np.random.default_rng(7)
    t = np.arange(frames * FRAME_BYTES) / 8000
    signal = np.sin(2 * np.pi * 440 * t) * 8000 + rng.normal(0, 2000, t.size)
    audio = samples_to_ulaw(signal.astype(np.int16))
    return [audio[i:i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]


async def _no_rows(func, **kwargs) -> None:
    return None


async def on_loop(frames: list[bytes], directory: str) -> float:
    """CPU seconds of the loop's thread per frame pair (one in, one out), the writer's work excluded."""
    config = SimpleNamespace(recording=SimpleNamespace(directory=directory))
    clock = SimpleNamespace(now=0.0)
    rec = recording.StreamRecording(config=config, call_id="bench", stream_id="bench", clock=lambda: clock.now)
    await rec.opened
    started = time.thread_time()
    for n, frame in enumerate(frames):
        clock.now += 0.02
        rec.inbound(frame, n * 20)
        rec.outbound(frame)
    spent = time.thread_time() - started
    await rec.close()
    return spent / len(frames)


def writer_chunk(frames: list[bytes], directory: str) -> float:
    """Seconds of the writer thread per one-second chunk (both channels), on a real file."""
    wav = recording.WavFile(Path(directory) / "writer.wav")
    assert wav.open() == ""
    audio = b"".join(frames)
    chunks = [audio[i:i + 8000] for i in range(0, len(audio) - 7999, 8000)]
    started = time.thread_time()
    for chunk in chunks:
        wav.append(chunk, chunk)
    spent = time.thread_time() - started
    wav.close()
    return spent / len(chunks)


def per_frame_writes(frames: list[bytes], directory: str) -> float:
    """Seconds per frame pair when each frame is written as it comes (decode, interleave, three writes)."""
    wav = recording.WavFile(Path(directory) / "per-frame.wav")
    assert wav.open() == ""
    started = time.thread_time()
    for frame in frames:
        wav.append(frame, frame)
    spent = time.thread_time() - started
    wav.close()
    return spent / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="seconds of call per timed run (default 600)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--summary", help="write the headline figures here (make bench)")
    args = parser.parse_args()
    recording.services_call = _no_rows
    logging.getLogger("calls").setLevel(logging.WARNING)
    frames = speech_like(args.seconds * 50)
    runs: dict[str, list[float]] = {"loop": [], "writer": [], "per_frame": []}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.repeat):
            runs["loop"].append(asyncio.run(on_loop(frames, directory)))
            runs["writer"].append(writer_chunk(frames, directory))
            runs["per_frame"].append(per_frame_writes(frames, directory))
    us = {key: [v * 1e6 for v in values] for key, values in runs.items()}
    print(f"{args.seconds} s of call per run, {args.repeat} runs; CPU time of the thread doing the work, best / median")
    print("| work | unit | best (µs) | median (µs) |")
    print("|---|---|---|---|")
    rows = [
        ("on the loop: caller frame + gateway frame, hand-over included", "per 20 ms", us["loop"]),
        ("writer thread: decode, interleave, write, header sizes", "per 1 s chunk", us["writer"]),
        ("writer, spread over the call", "per 20 ms", [v / 50 for v in us["writer"]]),
        ("instead: written frame by frame on the loop", "per 20 ms", us["per_frame"]),
    ]
    for work, unit, values in rows:
        print(f"| {work} | {unit} | {min(values):.2f} | {statistics.median(values):.2f} |")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f}")
    write_summary(args.summary, [
        figure("local recording: loop cost per 20 ms frame pair", statistics.median(us["loop"]), unit="µs"),
        figure("local recording: writer cost per second of call", statistics.median(us["writer"]), unit="µs"),
    ])


if __name__ == "__main__":
    main()
