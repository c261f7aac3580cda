"""The media stream's TTS playback queue (calls/streams/playback.py; docs/compatibility.md, Playback and pacing).

`Playback` is driven directly on the test's event loop: `send` is a fake carrier that records
every frame (parsed JSON) with its send time and may echo marks like Twilio; `frames` is the real
TwilioFrames builder; synthesizers are async generators yielding μ-law.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from calls.streams import playback as playback_module
from calls.streams.playback import (
    MAX_PENDING,
    Outcome,
    Playback,
    PlaybackQueueFull,
    PlaybackResult,
    heard_text,
)
from calls.streams.stats import StreamStats
from core.audio import FRAME_BYTES, SILENCE_FRAME, Pacer
from providers.carriers.twilio.media import TwilioFrames
from tests.waiting import await_stays, await_until, forever

STREAM = "MZ" + "ab" * 16
MARK = re.compile(r"^tts-(\d+)-(\d+|end)$")
AUDIO = 0x10  # a loud μ-law byte (decodes to about -16000), never silence


class Carrier:
    """The fake `send`: records frames, may echo marks at once, may fail."""

    def __init__(self, *, echo: bool = False, fail_after: int | None = None) -> None:
        self.echo = echo
        self.fail_after = fail_after
        self.sent: list[tuple[float, dict]] = []
        self.playback: Playback | None = None
        self.attempts = 0

    async def __call__(self, text: str) -> None:
        self.attempts += 1
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("the stream is closed")
        message = json.loads(text)
        assert message["streamSid"] == STREAM
        self.sent.append((time.monotonic(), message))
        if self.echo and message["event"] == "mark":
            asyncio.get_running_loop().call_soon(self.playback.on_mark, message["mark"]["name"])

    # --- views ---------------------------------------------------------------------------------

    def events(self) -> list[str]:
        return [m["event"] for _, m in self.sent]

    def media(self) -> list[tuple[float, bytes]]:
        return [(t, base64.b64decode(m["media"]["payload"])) for t, m in self.sent if m["event"] == "media"]

    def audio(self) -> list[tuple[float, bytes]]:
        return [(t, p) for t, p in self.media() if p != SILENCE_FRAME]

    def silence(self) -> list[float]:
        return [t for t, p in self.media() if p == SILENCE_FRAME]

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for _, m in self.sent if m["event"] == "mark"]

    def clears(self) -> int:
        return self.events().count("clear")

    def script(self) -> list[str]:
        """Audio frames as "A", marks by name, clears as "clear" (silence left out)."""
        out = []
        for _, m in self.sent:
            if m["event"] == "media":
                if base64.b64decode(m["media"]["payload"]) != SILENCE_FRAME:
                    out.append("A")
            elif m["event"] == "mark":
                out.append(m["mark"]["name"])
            else:
                out.append(m["event"])
        return out


def speech(frames: int, *, fill: int = AUDIO, extra: int = 0, starts_when: Callable[[], Any] | None = None,
           chunk: int = FRAME_BYTES * 5, next_chunk_when: Callable[[int], Any] | None = None):
    """A synthesizer producing `frames` × 160 bytes (+ `extra`) of `fill`, in `chunk`-byte pieces.

    `starts_when`: a slow synthesizer, whose first audio comes only once that condition holds.
    `next_chunk_when(frames_so_far)`: each later chunk comes only once that condition holds.
    """

    async def synthesize(text: str, voice: str | None):
        if starts_when is not None:
            await await_until(starts_when, "the synthesizer's moment to start")
        data = bytes([fill]) * (frames * FRAME_BYTES + extra)
        for start in range(0, len(data), chunk):
            if start and next_chunk_when is not None:
                await await_until(lambda: next_chunk_when(start // FRAME_BYTES), "the next chunk's moment")
            yield data[start:start + chunk]

    return synthesize


def by_text(**behaviours):
    """A synthesizer choosing its behaviour by the text (keyword = text)."""

    def synthesize(text: str, voice: str | None):
        return behaviours[text](text, voice)

    return synthesize


async def stall(text: str, voice: str | None):
    await forever()
    yield b""  # pragma: no cover


async def nothing(text: str, voice: str | None):
    if False:  # pragma: no cover
        yield b""


async def empty_chunks(text: str, voice: str | None):
    for _ in range(3):
        yield b""


def failing(message: str, *, frames_before: int = 0, fails_when: Callable[[], Any] | None = None):
    """A synthesizer that yields `frames_before` frames of audio, then raises once `fails_when` holds."""

    async def synthesize(text: str, voice: str | None):
        if frames_before:
            yield bytes([AUDIO]) * (frames_before * FRAME_BYTES)
        if fails_when is not None:
            await await_until(fails_when, "the synthesizer's moment to fail")
        raise RuntimeError(message)

    return synthesize


async def settle(future, timeout: float = 5.0) -> PlaybackResult:
    return await asyncio.wait_for(asyncio.shield(future), timeout)


@pytest.fixture
async def make():
    """make(synthesizer, carrier=None, timeout=8.0) → (playback, carrier, stats); closed at the end."""
    made: list[Playback] = []

    def factory(synthesize, carrier: Carrier | None = None, *, timeout: float = 8.0, first_audio: float | None = None):
        carrier = carrier or Carrier()
        stats = StreamStats()
        playback = Playback(send=carrier, frames=TwilioFrames(STREAM), synthesize=synthesize, stats=stats,
                            synthesis_timeout=timeout, first_audio_timeout=first_audio)
        carrier.playback = playback
        made.append(playback)
        return playback, carrier, stats

    yield factory
    for playback in made:
        await playback.close()


@pytest.fixture
def fast_pacing(monkeypatch):
    """1 ms frames instead of 20 ms, for tests about order and bookkeeping rather than timing."""
    monkeypatch.setattr(playback_module, "Pacer", lambda: Pacer(0.001))


def entry_id(carrier: Carrier) -> int:
    return int(MARK.match(carrier.marks()[0]).group(1))


# --- silence pre-roll and pacing ------------------------------------------------------------------


@pytest.fixture
def pacer_slots(monkeypatch):
    """The 20 ms slots the player's pacer released, in order: a frame must never leave before its slot.

    Checking against the pacer's own schedule keeps these tests exact on a busy machine, where a
    late frame (and the shorter gap after it, as the absolute clock catches up) is allowed.
    """
    from core.audio import Pacer
    from calls.streams import playback as playback_module

    slots: list[float] = []

    class RecordingPacer(Pacer):
        async def wait(self) -> float:
            if self._due is None:
                self.start()
            slots.append(self._due)
            return await super().wait()

    monkeypatch.setattr(playback_module, "Pacer", RecordingPacer)
    return slots


def assert_on_schedule(times, slots) -> None:
    """Frame k left at or after slot k, and the slots are 20 ms apart (no burst, no drift)."""
    assert len(slots) >= len(times)
    released = np.array(slots[: len(times)])
    assert (np.array(times) >= released - 0.001).all(), np.array(times) - released
    assert np.allclose(np.diff(released), 0.020, atol=1e-6), np.diff(released)


async def test_silence_goes_out_at_once_and_every_20_ms_until_speech_arrives(make, pacer_slots):
    carrier = Carrier(echo=True)
    # The synthesizer takes about 300 ms: its first audio comes after 15 silence frames.
    playback, carrier, _ = make(speech(5, starts_when=lambda: len(carrier.silence()) >= 15), carrier)
    started = time.monotonic()
    future = playback.enqueue("Hello")
    await await_until(lambda: carrier.sent, timeout=0.2)
    first_time, first = carrier.sent[0]
    assert first_time - started < 0.05
    assert first == {"event": "media", "streamSid": STREAM,
                     "media": {"payload": base64.b64encode(SILENCE_FRAME).decode()}}
    result = await settle(future)
    assert result.outcome == Outcome.PLAYED
    silence = carrier.silence()
    first_audio = carrier.audio()[0][0]
    assert all(t < first_audio for t in silence)  # no silence once speech has started
    # about 300 ms of synthesis: about 15 silence frames, paced 20 ms apart
    assert 12 <= len(silence) <= 19, len(silence)
    assert_on_schedule(silence, pacer_slots)
    assert len(carrier.audio()) == 5


async def test_instant_synthesis_sends_audio_at_once_with_no_silence_first(make, pacer_slots):
    """A reply's first audio frame leaves as soon as it is synthesized: no silence frame, no slot wait."""
    playback, carrier, stats = make(speech(3), Carrier(echo=True))
    result = await settle(playback.enqueue("Hello"))
    assert result.outcome == Outcome.PLAYED
    media = carrier.media()
    assert len(media) == 3 and SILENCE_FRAME not in [payload for _, payload in media]
    assert_on_schedule([t for t, _ in media], pacer_slots)


async def test_speech_arriving_between_silence_slots_goes_out_at_once(make, monkeypatch):
    """Silence covers a slow synthesis, but its first audio does not wait for the next silence slot.

    Slots of half a second make the difference plain: the audio arrives just after the first
    silence frame, and leaves long before the next slot would have come.
    """
    from calls.streams import playback as playback_module

    monkeypatch.setattr(playback_module, "Pacer", lambda: Pacer(0.5))
    carrier = Carrier(echo=True)
    arrived: list[float] = []

    async def slow(text, voice):
        await await_until(lambda: carrier.silence(), "the first silence frame")
        arrived.append(time.monotonic())
        yield bytes([AUDIO]) * FRAME_BYTES * 2

    playback, carrier, stats = make(slow, carrier)
    result = await settle(playback.enqueue("Hello"))
    assert result.outcome == Outcome.PLAYED
    assert len(carrier.silence()) == 1
    first_audio = carrier.audio()[0][0]
    assert first_audio - carrier.silence()[0] < 0.25, first_audio - carrier.silence()[0]
    assert first_audio >= arrived[0]


# Regression guard: the first silence frame used to go out before `pacer.start()`, so the first
# `pacer.wait()` was due at once and a second silence frame followed immediately (40 ms in 0 ms),
# leaving the carrier a frame ahead for the whole utterance.
async def test_second_silence_frame_waits_its_20_ms_slot(make):
    carrier = Carrier(echo=True)
    playback, carrier, _ = make(speech(3, starts_when=lambda: len(carrier.silence()) >= 4), carrier)
    await settle(playback.enqueue("Hello"))
    silence = carrier.silence()
    assert len(silence) >= 3
    assert silence[1] - silence[0] > 0.015, [round((t - silence[0]) * 1000, 1) for t in silence[:4]]


async def test_audio_frames_are_160_bytes_paced_20_ms_apart(make, pacer_slots):
    data = bytes(i % 0x7E for i in range(60 * FRAME_BYTES))

    async def synthesize(text, voice):
        yield data  # all of it at once: the player, not the synthesizer, sets the pace

    playback, carrier, stats = make(synthesize, Carrier(echo=True))
    result = await settle(playback.enqueue("Sixty frames of speech"))
    assert result.outcome == Outcome.PLAYED
    audio = carrier.audio()
    assert len(audio) == 60
    assert all(len(payload) == FRAME_BYTES for _, payload in audio)
    assert b"".join(p for _, p in audio) == data  # in order, nothing lost or repeated
    # Every media frame (the first silence frame, then the 60 of speech) left in its own slot.
    media_times = [t for t, message in carrier.sent if message.get("event") == "media"]
    assert_on_schedule(media_times, pacer_slots)
    # Sixty frames span 59 slots: the last one cannot leave before the first audio slot + 1.18 s.
    # (Measured from the slot, not the first frame's send time: on a busy machine the first frame
    # may leave late and the clock then catches up, which is allowed.)
    first_audio_slot = pacer_slots[len(media_times) - 60]
    assert audio[-1][0] >= first_audio_slot + 59 * 0.020 - 0.001
    assert stats.counters["frames_out"] == 60
    assert stats.pacing.total == 60
    assert result.total_ms == result.played_ms == 1200


async def test_short_tail_is_padded_with_silence(make):
    playback, carrier, _ = make(speech(2, extra=40), Carrier(echo=True))
    await settle(playback.enqueue("Hi"))
    audio = [p for _, p in carrier.audio()]
    assert len(audio) == 3
    assert audio[2] == bytes([AUDIO]) * 40 + b"\xff" * 120


async def test_synthesis_slower_than_real_time_does_not_insert_silence_mid_utterance(make):
    carrier = Carrier(echo=True)

    def starved(frames_so_far: int) -> bool:
        """Slower than real time: the next chunk comes two frame slots after the last one played out."""
        audio = carrier.audio()
        return len(audio) >= frames_so_far and time.monotonic() - audio[-1][0] >= 0.040

    playback, carrier, _ = make(speech(6, chunk=FRAME_BYTES * 2, next_chunk_when=starved), carrier)
    result = await settle(playback.enqueue("Slow voice"))
    assert result.outcome == Outcome.PLAYED
    first_audio = carrier.audio()[0][0]
    assert not [t for t in carrier.silence() if t > first_audio]
    assert len(carrier.audio()) == 6


# --- marks --------------------------------------------------------------------------------------


async def test_a_mark_every_10_frames_and_an_end_mark(make):
    playback, carrier, stats = make(speech(25, extra=80))  # 26 frames, the last one padded
    future = playback.enqueue("Twenty six frames")
    await await_until(lambda: any(name.endswith("-end") for name in carrier.marks()))
    ident = entry_id(carrier)
    assert carrier.script() == (["A"] * 10 + [f"tts-{ident}-1"] + ["A"] * 10 + [f"tts-{ident}-2"]
                                + ["A"] * 6 + [f"tts-{ident}-end"])
    for _, message in carrier.sent:
        if message["event"] == "mark":
            assert message == {"event": "mark", "streamSid": STREAM, "mark": {"name": message["mark"]["name"]}}
    # without an echo it keeps waiting (grace 2 s beyond the audio still buffered)
    await await_stays(lambda: not future.done(), "the entry unsettled without its end mark", seconds=0.3)
    echoed = time.monotonic()
    playback.on_mark(f"tts-{ident}-end")
    result = await settle(future, timeout=1)
    assert time.monotonic() - echoed < 0.05
    assert result.outcome == Outcome.PLAYED
    assert result.heard == "Twenty six frames"
    assert result.played_ms == result.total_ms == 26 * 20
    assert result.error == "" and result.first_audio_ms is not None and result.first_audio_ms < 200
    assert stats.counters["marks_sent"] == 3 and stats.counters["marks_acked"] == 1
    assert stats.counters["mark_timeouts"] == 0


async def test_without_an_echo_it_settles_played_after_the_mark_grace(make, monkeypatch):
    monkeypatch.setattr(playback_module, "MARK_GRACE_MS", 150)
    playback, carrier, stats = make(speech(5))
    future = playback.enqueue("No echo")
    await await_until(lambda: any(name.endswith("-end") for name in carrier.marks()))
    end_sent = time.monotonic()
    result = await settle(future, timeout=2)
    waited = time.monotonic() - end_sent
    assert 0.12 < waited < 0.6, waited
    assert result.outcome == Outcome.PLAYED and result.heard == "No echo"
    assert stats.counters["mark_timeouts"] == 1


async def test_unknown_marks_are_counted_not_fatal(make):
    playback, carrier, stats = make(speech(3), Carrier(echo=True))
    playback.on_mark("tts-999999-end")
    playback.on_mark("something else")
    assert stats.counters["marks_unknown"] == 2
    result = await settle(playback.enqueue("Still fine"))
    assert result.outcome == Outcome.PLAYED


def test_result_message_shape():
    result = PlaybackResult(Outcome.INTERRUPTED, heard="one two", played_ms=400, total_ms=1000, first_audio_ms=12)
    assert result.as_message() == {"outcome": "interrupted", "heard": "one two", "playedMs": 400,
                                   "totalMs": 1000, "error": "", "firstAudioMs": 12}


# --- the queue ----------------------------------------------------------------------------------


async def test_queue_cap_is_8_pending(make):
    playback, carrier, _ = make(stall)
    futures = [playback.enqueue(f"entry {i}") for i in range(MAX_PENDING)]
    assert MAX_PENDING == 8
    with pytest.raises(PlaybackQueueFull, match="Telephony TTS queue is full"):
        playback.enqueue("one too many")
    # once the player takes the first one, it is playing, not pending: one more fits
    await await_until(lambda: carrier.sent)
    futures.append(playback.enqueue("ninth"))
    with pytest.raises(PlaybackQueueFull):
        playback.enqueue("tenth")
    assert playback.busy
    await playback.close()
    results = [await settle(f, 1) for f in futures]
    assert all(r.outcome == Outcome.SKIPPED for r in results)


async def test_entries_play_one_at_a_time_in_fifo_order(make, fast_pacing):
    synthesize = by_text(alpha=speech(12, fill=0x21), bravo=speech(12, fill=0x22), charlie=speech(12, fill=0x23))
    playback, carrier, _ = make(synthesize, Carrier(echo=True))
    finished: list[str] = []
    futures = []
    for text in ("alpha", "bravo", "charlie"):
        future = playback.enqueue(text)
        future.add_done_callback(lambda f, text=text: finished.append(text))
        futures.append(future)
    results = [await settle(f) for f in futures]
    assert [r.outcome for r in results] == [Outcome.PLAYED] * 3
    assert [r.heard for r in results] == ["alpha", "bravo", "charlie"]
    assert finished == ["alpha", "bravo", "charlie"]
    fills = [p[0] for _, p in carrier.audio()]
    assert fills == [0x21] * 12 + [0x22] * 12 + [0x23] * 12
    # each entry's end mark goes out before the next entry's first audio frame
    script = [item for item in carrier.script() if item == "A" or item.endswith("-end")]
    assert script == ["A"] * 12 + [script[12]] + ["A"] * 12 + [script[25]] + ["A"] * 12 + [script[38]]
    ids = [int(MARK.match(script[i]).group(1)) for i in (12, 25, 38)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert not playback.busy


async def test_non_interruptible_entry_reports_it_while_playing(make):
    playback, carrier, _ = make(stall)
    assert playback.interruptible and not playback.busy
    greeting = playback.enqueue("Greeting", interruptible=False)
    playback.enqueue("Reply", interruptible=True)
    await await_until(lambda: carrier.sent)
    assert playback.busy
    assert playback.interruptible is False
    await playback.close()
    assert (await settle(greeting, 1)).outcome == Outcome.SKIPPED
    assert playback.interruptible is True


async def test_interruptible_entry_reports_it(make):
    playback, carrier, _ = make(stall)
    playback.enqueue("Reply")
    await await_until(lambda: carrier.sent)
    assert playback.interruptible is True


# --- clear (barge-in) ---------------------------------------------------------------------------

TEXT = "one two three four five six seven eight nine ten"


async def test_clear_skips_the_queue_and_interrupts_the_active_entry(make):
    synthesize = by_text(**{TEXT: speech(50, chunk=50 * FRAME_BYTES), "queued one": stall, "queued two": stall})
    playback, carrier, stats = make(synthesize)
    active = playback.enqueue(TEXT)
    queued = [playback.enqueue("queued one"), playback.enqueue("queued two")]
    await await_until(lambda: len(carrier.marks()) >= 2)
    ident = entry_id(carrier)
    playback.on_mark(f"tts-{ident}-1")  # the caller heard the first 10 frames (200 ms)
    assert await playback.clear() == 3
    for future in queued:
        assert future.done() and future.result().outcome == Outcome.SKIPPED
    result = await settle(active, 1)
    assert result.outcome == Outcome.INTERRUPTED
    # 1600 of 8000 bytes heard: the first fifth of the text, cut back to a whole word
    assert result.heard == heard_text(TEXT, 0.2) == "one two"
    assert result.played_ms == 200
    assert result.total_ms >= 400 and result.total_ms == len(carrier.audio()) * 20
    await await_stays(lambda: carrier.events().count("clear") == 1 and carrier.events()[-1] == "clear",
                      "nothing of the entry (media, marks, a second clear) after the clear", seconds=0.15)
    events = carrier.events()
    assert carrier.sent[events.index("clear")][1] == {"event": "clear", "streamSid": STREAM}
    assert stats.counters["clears"] == 1
    assert not playback.busy


async def test_clear_with_nothing_acknowledged_skips_the_active_entry(make):
    playback, carrier, _ = make(speech(50, chunk=50 * FRAME_BYTES))
    active = playback.enqueue(TEXT)
    await await_until(lambda: len(carrier.audio()) >= 5)
    assert await playback.clear() == 1
    result = await settle(active, 1)
    assert result.outcome == Outcome.SKIPPED
    assert result.heard == "" and result.played_ms == 0 and result.total_ms >= 100
    assert carrier.clears() == 1


async def test_clear_during_synthesis_skips_and_sends_one_clear(make):
    playback, carrier, _ = make(stall)
    active = playback.enqueue("Never synthesized")
    await await_until(lambda: len(carrier.silence()) >= 2)
    await playback.clear()
    assert (await settle(active, 1)).outcome == Outcome.SKIPPED
    await await_stays(lambda: carrier.clears() == 1, "exactly one clear", seconds=0.1)
    assert not carrier.audio() and not carrier.marks()


# Regression guard: in the silence pre-roll the next silence frame used to go out right after
# `await pacer.wait()` without checking `aborted`, so a clear landing in that 20 ms sleep was
# followed by one more media frame of the cleared entry.
async def test_no_silence_frame_follows_a_clear_during_synthesis(make):
    class ClearingCarrier(Carrier):
        async def __call__(self, text):
            await super().__call__(text)
            if len(self.sent) == 3:  # barge-in while the player waits for the next 20 ms slot
                asyncio.ensure_future(self.playback.clear())

    playback, carrier, _ = make(stall, ClearingCarrier())
    active = playback.enqueue("Never synthesized")
    assert (await settle(active, 1)).outcome == Outcome.SKIPPED
    await await_stays(lambda: carrier.events()[-1:] == ["clear"], "nothing sent after the clear", seconds=0.05)
    events = carrier.events()
    assert events.count("clear") == 1
    assert events[-1] == "clear", events


async def test_clear_when_idle_sends_nothing_and_repeated_clear_sends_one(make):
    playback, carrier, stats = make(stall)
    assert await playback.clear() == 0
    assert carrier.sent == []
    playback.enqueue("Something")
    await await_until(lambda: carrier.sent)
    first, second = await asyncio.gather(playback.clear(), playback.clear())
    assert (first, second) == (1, 0)
    await await_stays(lambda: carrier.clears() == 1 and stats.counters["clears"] == 1, "exactly one clear", seconds=0.05)


async def test_late_echoes_of_cleared_marks_are_ignored(make):
    synthesize = by_text(first=speech(30, chunk=30 * FRAME_BYTES), second=speech(12))
    playback, carrier, stats = make(synthesize)
    first = playback.enqueue("first")
    await await_until(lambda: len(carrier.marks()) >= 2)
    old = entry_id(carrier)
    await playback.clear()
    await settle(first, 1)
    acked, unknown = stats.counters["marks_acked"], stats.counters["marks_unknown"]
    # the carrier returns the cleared marks after the clear: they must change nothing
    playback.on_mark(f"tts-{old}-1")
    playback.on_mark(f"tts-{old}-2")
    assert (stats.counters["marks_acked"], stats.counters["marks_unknown"]) == (acked, unknown)

    second = playback.enqueue("second")
    await await_until(lambda: any(n.endswith("-end") and int(MARK.match(n).group(1)) != old for n in carrier.marks()))
    playback.on_mark(f"tts-{old}-1")  # stale echoes while the next entry waits for its own
    playback.on_mark(f"tts-{old}-end")
    await await_stays(lambda: not second.done(), "the next entry unsettled by stale echoes", seconds=0.1)
    new = [n for n in carrier.marks() if int(MARK.match(n).group(1)) != old]
    playback.on_mark(new[-1])
    result = await settle(second, 1)
    assert result.outcome == Outcome.PLAYED and result.heard == "second"


async def test_at_most_64_cleared_marks_are_remembered(make, fast_pacing, monkeypatch):
    monkeypatch.setattr(playback_module, "MARK_EVERY_FRAMES", 1)
    playback, carrier, stats = make(speech(70, chunk=70 * FRAME_BYTES))
    future = playback.enqueue("many marks")
    await await_until(lambda: any(name.endswith("-end") for name in carrier.marks()))
    ident = entry_id(carrier)
    assert len(carrier.marks()) == 71  # -1 .. -70 and -end
    await playback.clear()
    assert (await settle(future, 1)).outcome == Outcome.SKIPPED
    unknown = stats.counters["marks_unknown"]
    # the 64 newest (-8 .. -70 and -end) are remembered and ignored; older ones are forgotten
    for name in (f"tts-{ident}-8", f"tts-{ident}-70", f"tts-{ident}-end"):
        playback.on_mark(name)
    assert stats.counters["marks_unknown"] == unknown
    playback.on_mark(f"tts-{ident}-7")
    playback.on_mark(f"tts-{ident}-1")
    assert stats.counters["marks_unknown"] == unknown + 2
    assert len(playback._cleared_marks) <= 64


# --- failures -----------------------------------------------------------------------------------


async def test_synthesis_error_before_audio_fails_without_clear(make):
    synthesize = by_text(broken=failing("voice model exploded"), fine=speech(3))
    playback, carrier, stats = make(synthesize, Carrier(echo=True))
    result = await settle(playback.enqueue("broken"))
    assert result.outcome == Outcome.FAILED
    assert result.error == "voice model exploded"
    assert result.heard == "" and result.total_ms == 0
    assert carrier.clears() == 0 and not carrier.audio() and not carrier.marks()
    assert stats.counters["playback_failures"] == 1
    # the player survives and plays the next entry
    assert (await settle(playback.enqueue("fine"))).outcome == Outcome.PLAYED


async def test_synthesis_error_after_audio_fails_and_clears(make):
    carrier = Carrier()
    # the failure comes mid-playback: once the 5 frames already synthesized have gone out
    playback, carrier, stats = make(failing("connection reset", frames_before=5,
                                            fails_when=lambda: len(carrier.audio()) >= 5), carrier)
    result = await settle(playback.enqueue("partly spoken"))
    assert result.outcome == Outcome.FAILED
    assert result.error == "connection reset"
    assert result.total_ms == 100
    assert carrier.script() == ["A"] * 5 + ["clear"]
    assert stats.counters["playback_failures"] == 1


async def test_empty_synthesis_fails(make):
    playback, carrier, _ = make(by_text(none=nothing, blanks=empty_chunks))
    for text in ("none", "blanks"):
        result = await settle(playback.enqueue(text))
        assert result.outcome == Outcome.FAILED
        assert "produced no audio" in result.error
    assert carrier.clears() == 0 and not carrier.audio()


async def test_stalled_synthesis_times_out(make):
    playback, carrier, _ = make(stall, timeout=0.2)
    started = time.monotonic()
    result = await settle(playback.enqueue("stuck"))
    took = time.monotonic() - started
    assert result.outcome == Outcome.FAILED
    assert "timed out" in result.error and "0.2" in result.error
    assert 0.18 < took < 1.0, took
    assert len(carrier.silence()) >= 7  # the line stayed warm meanwhile
    assert carrier.clears() == 0


async def test_first_audio_may_take_the_fallbacks_time_then_gaps_get_the_provider_timeout(make):
    """A TTS chain whose first provider stalls for its whole timeout before the next one answers: the
    speak waits for the first audio up to first_audio_timeout, then gaps between pieces get synthesis_timeout."""
    async def fallback_after_a_stall(text, voice):
        await asyncio.sleep(0.35)  # the first provider's timeout, spent
        yield bytes([AUDIO]) * (3 * FRAME_BYTES)
        await forever()  # and then the next one stalls mid-utterance

    playback, carrier, _ = make(fallback_after_a_stall, timeout=0.2, first_audio=5.0)
    result = await settle(playback.enqueue("late but coming"))
    assert result.outcome == Outcome.FAILED and "timed out after 0.2 s" in result.error, result
    assert carrier.script()[-4:] == ["A"] * 3 + ["clear"]  # the audio that came was played

    playback, carrier, _ = make(stall, timeout=0.2, first_audio=0.5)
    started = time.monotonic()
    result = await settle(playback.enqueue("never"))
    assert "timed out after 0.5 s" in result.error and time.monotonic() - started >= 0.5, result


async def test_waiting_for_the_end_mark_cancelled_leaves_no_waiter_behind():
    done, aborted = asyncio.Event(), asyncio.Event()
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(playback_module._first(done, aborted, timeout=30))
    await await_until(lambda: len(asyncio.all_tasks() - before) == 3, "the two waiters started")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await await_until(lambda: asyncio.all_tasks() == before, "every waiter gone")


async def test_synthesis_stalling_after_audio_times_out_and_clears(make):
    async def synthesize(text, voice):
        yield bytes([AUDIO]) * (3 * FRAME_BYTES)
        await forever()

    playback, carrier, _ = make(synthesize, timeout=0.2)
    result = await settle(playback.enqueue("stuck later"))
    assert result.outcome == Outcome.FAILED and "timed out" in result.error
    assert carrier.script() == ["A"] * 3 + ["clear"]


async def test_send_failure_fails_the_entry(make):
    playback, carrier, stats = make(speech(5), Carrier(fail_after=0))
    result = await settle(playback.enqueue("socket closed"))
    assert result.outcome == Outcome.FAILED
    assert "closed" in result.error
    assert stats.counters["playback_failures"] == 1


async def test_send_failure_mid_utterance_fails_the_entry(make):
    playback, carrier, _ = make(speech(20, chunk=20 * FRAME_BYTES), Carrier(fail_after=8))
    result = await settle(playback.enqueue("socket closes while speaking"))
    assert result.outcome == Outcome.FAILED
    assert "closed" in result.error
    assert len(carrier.sent) == 8
    assert result.total_ms > 0


# --- close --------------------------------------------------------------------------------------


async def test_close_settles_everything_and_stops_the_player(make):
    synthesize = by_text(long=speech(100, chunk=100 * FRAME_BYTES), queued=speech(5), waiting=stall)
    playback, carrier, _ = make(synthesize)
    futures = [playback.enqueue("long"), playback.enqueue("queued"), playback.enqueue("waiting")]
    await await_until(lambda: len(carrier.audio()) >= 3)
    task = playback._task
    await playback.close()
    results = [await settle(f, 1) for f in futures]
    assert [r.outcome for r in results] == [Outcome.SKIPPED] * 3
    assert task.done() and playback._task is None
    count = len(carrier.sent)
    await await_stays(lambda: len(carrier.sent) == count, "nothing more going out", seconds=0.1)
    assert carrier.clears() == 0  # the socket is going away: no clear is sent
    with pytest.raises(RuntimeError, match="closed"):
        playback.enqueue("after close")
    await playback.close()  # closing twice is harmless


async def test_close_of_an_idle_playback(make):
    playback, carrier, _ = make(stall)
    await playback.close()
    assert carrier.sent == []
    with pytest.raises(RuntimeError):
        playback.enqueue("x")


# --- heard_text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,fraction,expected", [
    ("hello world", 1.0, "hello world"),
    ("hello world", 0.9995, "hello world"),
    ("hello world", 1.5, "hello world"),
    ("hello world", 0.0, ""),
    ("hello world", -0.5, ""),
    ("hello world foo bar", 9 / 19, "hello"),  # cut inside "world": back to "hello"
    ("hello world", 5 / 11, "hello"),  # cut right on the space
    ("hello world", 7 / 11, "hello"),
    ("supercalifragilistic", 0.5, ""),  # inside the only word: nothing heard as a whole word
    ("one two three", 0.95, "one two"),
    ("  padded text  here", 0.55, "padded"),
    ("", 0.5, ""),
])
def test_heard_text(text, fraction, expected):
    assert heard_text(text, fraction) == expected


# Regression guard: a cut exactly at the start of a word used to drop the last fully heard word
# ("hello world" at 6/11 → "" instead of "hello").
@pytest.mark.parametrize("text,fraction,expected", [
    ("hello world", 6 / 11, "hello"),
    ("one two three", 8 / 13, "one two"),
    ("  padded text  here", 0.5, "padded"),
])
def test_heard_text_cut_at_the_start_of_a_word_keeps_the_words_before(text, fraction, expected):
    assert heard_text(text, fraction) == expected
