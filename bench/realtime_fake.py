"""The OpenAI Realtime fake, answering at once and timing frames, in its own process, for bench/realtime_bridge.py.

Runs the test suite's FakeOpenAIRealtime on 127.0.0.1 with a script of one greeting and one answer
(about 2 s of audio each) delivered at real time in 20 ms deltas, and reads the send-time stamps
(bench/stamps.py) of the caller frames that reach it: how long after the simulated carrier sent a
frame the fake received it as `input_audio_buffer.append`. It stamps every 160-byte frame of its
own audio deltas just before sending them, so the caller can time the other direction.

Prints one JSON line with its URL and key, then answers each `collect` line on stdin with one JSON
line of what it measured since the last one (and forgets it); stops when stdin closes.
Run: `.venv/bin/python bench/realtime_fake.py` (the benchmark starts it itself).
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stamps import CALLER, FIRST, STAMP_BYTES, STEADY, read_stamp, stamp  # noqa: E402

API_KEY = "bench-openai-realtime-key"
FRAME = 160  # 20 ms of μ-law
GREETING_REPLY = "Hello, thanks for calling the clinic, how can I help?"  # 2.1 s at the fake's 40 ms a character
ANSWER_MS = 2000
AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
LOOP_TICK = 0.01  # the fake's own loop lateness is sampled this often


def timed_fake():
    """A FakeOpenAIRealtime that reads the caller's stamps and stamps its own audio."""
    from tests.fakes.ai.realtime_openai import FakeOpenAIRealtime, Script, Turn

    class TimedFake(FakeOpenAIRealtime):
        def __init__(self) -> None:
            super().__init__(api_key=API_KEY, script=Script(
                turns=[Turn(transcript="i would like to book an appointment", reply="Of course, which day suits you?",
                            reply_ms=ANSWER_MS)],
                instructed_reply=GREETING_REPLY))
            # Real time, in whole frames: the gateway's framer keeps the fake's frame boundaries.
            self.delta_ms = FRAME // 8
            self.delta_gap = self.delta_ms / 1000
            self.forget()

        def forget(self) -> None:
            self.connections.clear()
            self.utterances = 0
            self.errors.clear()
            self.inbound_ms: list[float] = []  # caller frame sent → append received, per frame
            self.early_frames = 0  # stamped before the session was set up: they waited for it by design
            self.frames_out = 0
            self.answers = 0
            self.started_items: set[str] = set()
            self.loop_late_ms: list[float] = []

        async def _session_update(self, conn, message) -> None:
            await super()._session_update(conn, message)
            conn.ready_at = time.monotonic()

        async def _append(self, conn, message) -> None:
            audio = message.get("audio")
            if isinstance(audio, str):
                now = time.monotonic()
                # 24 base64 characters are the frame's first 18 bytes: the stamp without decoding the rest.
                found = read_stamp(base64.b64decode(audio[:24]), now)
                if found is not None and found[0] == CALLER:
                    if found[1] < getattr(conn, "ready_at", now):
                        self.early_frames += 1
                    else:
                        self.inbound_ms.append((now - found[1]) * 1000)
            await super()._append(conn, message)

        async def _emit(self, conn, message) -> None:
            if message.get("type") in AUDIO_DELTAS and message.get("delta"):
                audio = base64.b64decode(message["delta"])
                item = message.get("item_id")
                now = time.monotonic()
                frames = []
                for start in range(0, len(audio), FRAME):
                    kind = STEADY if item in self.started_items else FIRST
                    if kind == FIRST:
                        self.started_items.add(item)
                        self.answers += 1
                    chunk = audio[start:start + FRAME]
                    frames.append(stamp(chunk, kind, now) if len(chunk) >= STAMP_BYTES else chunk)
                    self.frames_out += 1
                message["delta"] = base64.b64encode(b"".join(frames)).decode("ascii")
            await super()._emit(conn, message)

        def report(self) -> dict:
            found = {"inboundMs": [round(ms, 3) for ms in self.inbound_ms], "earlyFrames": self.early_frames,
                     "framesIn": len(self.inbound_ms) + self.early_frames, "framesOut": self.frames_out,
                     "answers": self.answers, "connections": len(self.connections), "errors": self.errors[:5],
                     "loopLateMs": [round(ms, 3) for ms in self.loop_late_ms]}
            self.forget()
            return found

    return TimedFake()


async def watch_loop(fake) -> None:
    """How late the fake's own loop wakes: when it is late, the figures include its queueing, not only the gateway's."""
    while True:
        due = time.monotonic() + LOOP_TICK
        await asyncio.sleep(LOOP_TICK)
        fake.loop_late_ms.append(max(0.0, time.monotonic() - due) * 1000)


async def serve() -> None:
    fake = await timed_fake().start()
    watcher = asyncio.create_task(watch_loop(fake))
    print(json.dumps({"url": fake.http_url, "apiKey": API_KEY}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:  # the benchmark closed our stdin: stop
            break
        if line.strip() == "collect":
            print(json.dumps(fake.report()), flush=True)
    watcher.cancel()
    await fake.stop()


if __name__ == "__main__":
    asyncio.run(serve())
