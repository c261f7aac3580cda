"""Benchmark: the live media path per 20 ms frame, the gateway's codecs beside Pipecat's serializers.

Inbound, per carrier: a media JSON text frame → json.loads → the carrier's MediaCodec.parse →
μ-law decode and resampling to 16 kHz PCM16 (TelephonyDecoder, what the local STT worker feeds
PocketSphinx). Outbound: 20 ms of 24 kHz PCM16 from TTS → TelephonyEncoder (8 kHz μ-law) →
Framer (20 ms frames) → the carrier's JSON media message. Pipecat's Twilio, Telnyx and Plivo
serializers are timed on the same frames: `deserialize` of the inbound message to a 16 kHz
InputAudioRawFrame, `serialize` of a 24 kHz OutputAudioRawFrame. Both resample in bursts (soxr
works in blocks), so each figure is the total time over many frames divided by their number.
Time is the thread's CPU time, so on a shared machine the slices the scheduler gives other
processes are not counted (their effect on caches still is).

A quality row goes through each path too: a 1020 Hz tone at -6 dBFS, 2 s (SINAD against the
best-fitting sine; μ-law's own noise sets the ceiling, printed as the reference), how much
of the 2 s comes out, and, outbound, a 5 kHz tone that must not alias into the telephone band
(its level out relative to in).

Pipecat is never installed in the project's environment. For the comparison, make a venv of its
own at the repository root (git ignores it; not under bench/, whose files the tests read);
pipecat-ai 1.14 wants soxr 1.0.x, so that venv keeps pipecat's soxr and both sides use it:

    python3 -m venv .venv-compare
    .venv-compare/bin/pip install pipecat-ai==1.14.0 -r <(grep -v '^soxr==' requirements.txt)
    taskset -c 0 .venv-compare/bin/python bench/codecs.py

Without pipecat importable (`.venv/bin/python bench/codecs.py`) only the gateway's rows print.
Options: --frames N per timed run (default 5000), --repeat R runs (default 5; the table gives
the best and the median run).
"""
from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import figure, write_summary  # noqa: E402

from core.audio import (  # noqa: E402  (after the path setup above)
    FRAME_BYTES,
    AudioFormat,
    Framer,
    TelephonyDecoder,
    TelephonyEncoder,
    samples_to_ulaw,
    ulaw_to_samples,
)
from providers.carriers.plivo.media import PlivoMediaCodec  # noqa: E402
from providers.carriers.telnyx.media import TelnyxMediaCodec  # noqa: E402
from providers.carriers.twilio.media import TwilioMediaCodec  # noqa: E402

CARRIERS = ("twilio", "telnyx", "plivo")
STREAM_ID = "MZ" + "5" * 32
STT_RATE = 16000
TTS_RATE = 24000
TTS_CHUNK_BYTES = TTS_RATE * 20 // 1000 * 2  # 20 ms of PCM16
CYCLE = 50  # distinct frames (one second) cycled through, as a live stream would send
# The telephone test tone: 1 kHz exactly would hit the same 8 phases every period at 8 kHz, so
# μ-law's error would repeat and the SINAD would depend on the phase the path happens to add.
TEST_HZ = 1020


def tone(freq: float, rate: int, seconds: float, amplitude: float = 16384.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def inbound_message(carrier: str, sequence: int, ulaw: bytes) -> str:
    """One inbound media frame as each carrier sends it."""
    payload = base64.b64encode(ulaw).decode("ascii")
    media = {"track": "inbound", "chunk": str(sequence), "timestamp": str(sequence * 20), "payload": payload}
    if carrier == "twilio":
        return json.dumps({"event": "media", "sequenceNumber": str(sequence), "streamSid": STREAM_ID, "media": media})
    if carrier == "telnyx":
        return json.dumps({"event": "media", "sequence_number": str(sequence), "stream_id": STREAM_ID, "media": media})
    return json.dumps({"event": "media", "sequenceNumber": sequence, "streamId": STREAM_ID, "media": media})


def inbound_messages(carrier: str, signal: np.ndarray) -> list[str]:
    ulaw = samples_to_ulaw(signal)
    return [inbound_message(carrier, i + 1, ulaw[start:start + FRAME_BYTES])
            for i, start in enumerate(range(0, len(ulaw) - FRAME_BYTES + 1, FRAME_BYTES))]


def tts_chunks(signal: np.ndarray) -> list[bytes]:
    data = signal.astype("<i2").tobytes()
    return [data[i:i + TTS_CHUNK_BYTES] for i in range(0, len(data) - TTS_CHUNK_BYTES + 1, TTS_CHUNK_BYTES)]


def payload_of(message: str) -> bytes:
    return base64.b64decode(json.loads(message)["media"]["payload"])


# --- the two sides: each path is (make a fresh per-stream state) → step(item) → outputs -------


class Gateway:
    name = "gateway"
    is_async = False
    CODECS = {"twilio": TwilioMediaCodec, "telnyx": TelnyxMediaCodec, "plivo": PlivoMediaCodec}

    def inbound(self, carrier: str):
        codec = self.CODECS[carrier]()
        decoder = TelephonyDecoder(STT_RATE)

        def step(text: str) -> bytes:
            return decoder.decode(codec.parse(json.loads(text)).payload)

        return step, decoder.flush

    def outbound(self, carrier: str):
        frames = self.CODECS[carrier]().outbound(STREAM_ID)
        encoder = TelephonyEncoder(AudioFormat("pcm16", TTS_RATE))
        framer = Framer()

        def step(chunk: bytes) -> list[str]:
            return [frames.media(frame) for frame in framer.push(encoder.encode(chunk))]

        def finish() -> list[str]:
            out = [frames.media(frame) for frame in framer.push(encoder.flush())]
            tail = framer.flush()
            return out + ([frames.media(tail)] if tail else [])

        return step, finish


def run_now(coroutine):
    """Drive a coroutine that never waits (the serializers' audio paths) without an event loop.

    The timed loop is one such coroutine awaiting each frame, as a transport's receive loop would,
    so a frame costs Pipecat one await, not a trip through the event loop.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine waited for something; it needs an event loop")


class Pipecat:
    name = "pipecat"
    is_async = True  # its serializers are coroutines, awaited from the transport's

    def __init__(self) -> None:
        from pipecat.frames.frames import OutputAudioRawFrame
        from pipecat.serializers.plivo import PlivoFrameSerializer
        from pipecat.serializers.telnyx import TelnyxFrameSerializer
        from pipecat.serializers.twilio import TwilioFrameSerializer

        self.output_frame = OutputAudioRawFrame
        self.makers = {
            "twilio": lambda: TwilioFrameSerializer(
                STREAM_ID, params=TwilioFrameSerializer.InputParams(sample_rate=STT_RATE, auto_hang_up=False)),
            "telnyx": lambda: TelnyxFrameSerializer(
                STREAM_ID, outbound_encoding="PCMU", inbound_encoding="PCMU",
                params=TelnyxFrameSerializer.InputParams(sample_rate=STT_RATE, auto_hang_up=False)),
            "plivo": lambda: PlivoFrameSerializer(
                STREAM_ID, params=PlivoFrameSerializer.InputParams(sample_rate=STT_RATE, auto_hang_up=False)),
        }

    def serializer(self, carrier: str):
        serializer = self.makers[carrier]()
        run_now(serializer.setup(SimpleNamespace(audio_in_sample_rate=STT_RATE)))
        return serializer

    def inbound(self, carrier: str):
        serializer = self.serializer(carrier)

        async def step(text: str) -> bytes:
            frame = await serializer.deserialize(text)
            return frame.audio if frame is not None else b""

        return step, lambda: b""  # the serializer keeps no way to drain its resampler

    def outbound(self, carrier: str):
        serializer = self.serializer(carrier)

        async def step(frame) -> list[str]:
            message = await serializer.serialize(frame)
            return [message] if message else []

        return step, lambda: []

    def tts_items(self, chunks: list[bytes]) -> list:
        return [self.output_frame(audio=chunk, sample_rate=TTS_RATE, num_channels=1) for chunk in chunks]


# --- timing ------------------------------------------------------------------------------------


def feed(step, items: list) -> None:
    for item in items:
        step(item)


async def feed_awaiting(step, items: list) -> None:
    for item in items:
        await step(item)


def time_path(make, items: list, frames: int, repeat: int, is_async: bool) -> tuple[float, float]:
    """µs per frame: (best run, median run), each run on a fresh stream after a warm-up second."""
    run = (lambda step, items: run_now(feed_awaiting(step, items))) if is_async else feed
    runs = []
    for _ in range(repeat):
        step, _ = make()
        run(step, items)
        cycle = (items * (frames // len(items) + 1))[:frames]
        started = time.thread_time_ns()
        run(step, cycle)
        runs.append((time.thread_time_ns() - started) / frames / 1000)
    return min(runs), statistics.median(runs)


# --- quality -----------------------------------------------------------------------------------


def sinad_db(samples: np.ndarray, freq: float, rate: int) -> float:
    """Signal to noise-and-distortion against the best-fitting sine at `freq`, over the middle half."""
    y = samples[samples.size // 4: -samples.size // 4].astype(np.float64)
    t = np.arange(y.size) / rate
    basis = np.column_stack((np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)))
    fit, *_ = np.linalg.lstsq(basis, y, rcond=None)
    residual = y - basis @ fit
    return float(10 * np.log10(np.sum((basis[:, :2] @ fit[:2]) ** 2) / np.sum(residual ** 2)))


def level_db(samples: np.ndarray, reference: np.ndarray) -> float:
    middle = samples[samples.size // 4: -samples.size // 4].astype(np.float64)
    out = np.sqrt(np.mean(middle ** 2)) if middle.size else 0.0
    return float(20 * np.log10(max(out, 1e-3) / np.sqrt(np.mean(reference.astype(np.float64) ** 2))))


def collect(side, step, items: list) -> list:
    if side.is_async:
        return [run_now(step(item)) for item in items]
    return [step(item) for item in items]


def inbound_audio(side, carrier: str, signal: np.ndarray) -> np.ndarray:
    step, finish = side.inbound(carrier)
    pcm = b"".join(collect(side, step, inbound_messages(carrier, signal))) + finish()
    return np.frombuffer(pcm, dtype="<i2")


def outbound_audio(side, carrier: str, signal: np.ndarray) -> np.ndarray:
    step, finish = side.outbound(carrier)
    chunks = tts_chunks(signal)
    items = side.tts_items(chunks) if hasattr(side, "tts_items") else chunks
    messages = [message for batch in collect(side, step, items) for message in batch] + finish()
    return ulaw_to_samples(b"".join(payload_of(message) for message in messages))


def quality(side, carrier: str) -> dict[str, float]:
    inbound = inbound_audio(side, carrier, tone(TEST_HZ, 8000, 2.0))
    outbound = outbound_audio(side, carrier, tone(TEST_HZ, TTS_RATE, 2.0))
    above = tone(5000, TTS_RATE, 2.0)
    return {
        "in_sinad": sinad_db(inbound, TEST_HZ, STT_RATE),
        "in_ms": inbound.size / STT_RATE * 1000,
        "out_sinad": sinad_db(outbound, TEST_HZ, 8000),
        "out_ms": outbound.size / 8000 * 1000,
        "out_alias": level_db(outbound_audio(side, carrier, above), above),
    }


# --- report ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    args = parser.parse_args()

    sides = [Gateway()]
    try:
        sides.append(Pipecat())
    except ImportError:
        print("pipecat is not importable here: the gateway's numbers only (see this file's docstring)\n")

    speech_in = tone(440, 8000, CYCLE * 0.02, amplitude=8000)
    speech_out = tone(440, TTS_RATE, CYCLE * 0.02, amplitude=8000)
    print(f"{args.repeat} runs × {args.frames} frames each; µs per 20 ms frame (best run / median run)\n")
    print(f"| path | carrier | {' | '.join(f'{side.name} µs best / median' for side in sides)} | "
          f"{' | '.join(f'{side.name} frames/s per core' for side in sides)} |")
    print("|---|---|" + "---:|" * (2 * len(sides)))
    figures = []
    for path in ("inbound", "outbound"):
        for carrier in CARRIERS:
            cells, rates = [], []
            for side in sides:
                if path == "inbound":
                    items = inbound_messages(carrier, speech_in)
                else:
                    chunks = tts_chunks(speech_out)
                    items = side.tts_items(chunks) if hasattr(side, "tts_items") else chunks
                best, median = time_path(lambda: getattr(side, path)(carrier), items, args.frames, args.repeat,
                                         side.is_async)
                cells.append(f"{best:.1f} / {median:.1f}")
                rates.append(f"{1e6 / best:,.0f}")
            print(f"| {path} | {carrier} | {' | '.join(cells)} | {' | '.join(rates)} |")
            ours = float(cells[0].split(" / ")[0])
            theirs = float(cells[1].split(" / ")[0]) if len(cells) > 1 else None
            figures.append(figure(f"{path} {carrier}: µs per frame", ours,
                                  target=f"<= Pipecat's {theirs:.1f}" if theirs else "<= Pipecat's (not installed here)",
                                  met=ours <= theirs if theirs else None))
    write_summary(args.summary, figures)

    reference = sinad_db(ulaw_to_samples(samples_to_ulaw(tone(TEST_HZ, 8000, 2.0))), TEST_HZ, 8000)
    print("\nQuality: 1020 Hz tone at -6 dBFS, 2 s (SINAD dB; audio out in ms), and a 5 kHz tone out (dB);"
          f" the tone through μ-law alone: {reference:.1f} dB SINAD\n")
    print("| side | carrier | inbound SINAD | inbound ms | outbound SINAD | outbound ms | 5 kHz out |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for side in sides:
        for carrier in CARRIERS:
            q = quality(side, carrier)
            print(f"| {side.name} | {carrier} | {q['in_sinad']:.1f} | {q['in_ms']:.0f} | {q['out_sinad']:.1f} | "
                  f"{q['out_ms']:.0f} | {q['out_alias']:.1f} |")


if __name__ == "__main__":
    main()
