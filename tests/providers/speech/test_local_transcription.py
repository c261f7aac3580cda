"""The offline transcription session's gating: what reaches the decoder process, and what the listener hears.

The decoder process is replaced by a recorder of the messages it would get, so these tests see
exactly which audio crossed to it; they assert what the session did, never what a recognizer heard.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from core.audio import FRAME_BYTES, FRAME_MS, SILENCE_FRAME, samples_to_ulaw
from providers.transcription import local
from providers.transcription.local import BATCH_FRAMES, PREROLL_FRAMES, TAIL_MS, DecoderPool, LocalTranscription
from tests.providers.speech.listener import Recorder
from tests.waiting import await_until

SILENCE_MS = 400
TAIL_FRAMES = TAIL_MS // FRAME_MS


def frames_of(samples: np.ndarray) -> list[bytes]:
    ulaw = samples_to_ulaw(samples.astype(np.int16))
    return [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw) - FRAME_BYTES + 1, FRAME_BYTES)]


def speech(ms: int = 600, seed: int = 0) -> list[bytes]:
    """A loud tone with a little noise, so every frame's bytes are distinct."""
    t = np.arange(8 * ms) / 8000
    noise = np.random.default_rng(seed).normal(0, 50, t.size)
    return frames_of(6000 * np.sin(2 * np.pi * 300 * t) + noise)


def hiss(ms: int, level: float = 60.0, seed: int = 1) -> list[bytes]:
    """Line noise far below the threshold (distinct bytes, so its place in what was sent is visible)."""
    return frames_of(np.random.default_rng(seed).normal(0, level, 8 * ms))


def silence(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // FRAME_MS)


class RecordingWorker:
    """Stands in for a decoder process: answers like one and keeps every message it was sent."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []
        self.utterances: list[bytes] = []
        self.fail_on_audio = False
        self.closed = False

    def request(self, *message) -> tuple:
        self.messages.append(message)
        kind = message[0]
        if kind == "start":
            self.utterances.append(b"")
            return ("ok",)
        if kind == "audio":
            if self.fail_on_audio:
                raise RuntimeError("the decoder process died")
            self.utterances[-1] += message[1]
            return ("partial", f"heard {len(self.utterances[-1])} bytes" if message[2] else "")
        if kind == "end":
            return ("final", f"utterance {len(self.utterances)}")
        raise AssertionError(f"unexpected message {message!r}")

    def close(self) -> None:
        self.closed = True

    @property
    def audio_messages(self) -> list[bytes]:
        return [message[1] for message in self.messages if message[0] == "audio"]

    @property
    def bytes_sent(self) -> int:
        return sum(len(audio) for audio in self.audio_messages)


@pytest.fixture
def workers(monkeypatch):
    """The decoder processes the sessions asked for, in order (a fresh pool for each test)."""
    made: list[RecordingWorker] = []

    def new_decoder() -> RecordingWorker:
        made.append(RecordingWorker())
        return made[-1]

    monkeypatch.setattr(local, "pool", DecoderPool())
    monkeypatch.setattr(DecoderPool, "_new_decoder", staticmethod(new_decoder))
    return made


async def session_with(listener: Recorder, **settings):
    session = LocalTranscription({"silenceDurationMs": SILENCE_MS, **settings}).create_session(listener)
    await session.connect()
    return session


def feed(session, frames: list[bytes]) -> None:
    for frame in frames:
        session.send_audio(frame)


async def test_silence_never_reaches_the_decoder(workers):
    listener = Recorder()
    session = await session_with(listener)
    feed(session, silence(30_000) + hiss(30_000))
    await session.close()
    assert listener.events == []
    assert [worker.messages for worker in workers] == [[]]  # the warm decoder was never used
    assert session.utterances == 0


async def test_an_utterance_is_sent_with_its_preroll_and_a_short_tail(workers):
    listener = Recorder()
    session = await session_with(listener)
    before, spoken, after = hiss(2000), speech(600), hiss(2000, seed=2)
    feed(session, before + spoken + after)
    await await_until(lambda: listener.of("final"), "a final transcript")
    await session.close()
    (worker,) = workers
    sent = worker.utterances[0]
    # Speech starts on the third loud frame; the pre-roll is the frames that came before that one.
    started_at = len(before) + local.EnergyVad().start_frames - 1
    stream = before + spoken + after
    expected = b"".join(stream[started_at - PREROLL_FRAMES:len(before) + len(spoken) + TAIL_FRAMES])
    assert sent == expected
    assert sent.startswith(b"".join(before[-(PREROLL_FRAMES - 2):]))  # the quiet just before the first syllable
    assert listener.events[0] == ("start", "")
    assert listener.of("final") == ["utterance 1"]


async def test_a_pause_within_an_utterance_is_sent_as_it_was(workers):
    listener = Recorder()
    session = await session_with(listener)
    pause = hiss(SILENCE_MS - 60, seed=3)  # longer than the tail, shorter than the endpoint
    first, second = speech(400, seed=4), speech(400, seed=5)
    feed(session, hiss(1000) + first + pause + second + silence(1000))
    await await_until(lambda: listener.of("final"), "a final transcript")
    await session.close()
    (worker,) = workers
    assert len(worker.utterances) == 1
    assert b"".join(first + pause + second) in worker.utterances[0]
    assert listener.of("start") == [""]


async def test_an_utterance_after_a_long_silence_is_transcribed(workers):
    listener = Recorder()
    session = await session_with(listener)
    feed(session, silence(10 * 60_000))
    assert workers[0].messages == []
    feed(session, speech(600) + silence(1000))
    await await_until(lambda: listener.of("final"), "a final transcript")
    await session.close()
    (worker,) = workers
    assert listener.of("final") == ["utterance 1"]
    assert worker.bytes_sent == FRAME_BYTES * (PREROLL_FRAMES - 2 + len(speech(600)) + TAIL_FRAMES)


async def test_noise_bursts_below_the_threshold_and_clicks_do_not_wake_the_decoder(workers):
    listener = Recorder()
    session = await session_with(listener)
    click = speech(40, seed=6)  # two loud frames: a pop on the line, not speech
    noisy = hiss(300, level=250, seed=7)  # RMS about 250, under the default 400
    feed(session, (silence(500) + noisy + silence(200) + click) * 20)
    await session.close()
    assert listener.events == []
    assert workers[0].messages == []


async def test_frames_reach_the_decoder_in_batches_and_every_one_arrives(workers):
    listener = Recorder()
    session = await session_with(listener)
    (worker,) = workers
    feed(session, hiss(1000))
    spoken = speech(2000)
    # Fed a batch at a time, as a caller's frames arrive, each batch waiting until it was delivered.
    for end in range(BATCH_FRAMES, len(spoken) + 1, BATCH_FRAMES):
        feed(session, spoken[end - BATCH_FRAMES:end])
        expected = (PREROLL_FRAMES - 2 + end) * FRAME_BYTES  # the pre-roll ends with two of the loud frames
        await await_until(lambda: worker.bytes_sent == expected, f"{expected} bytes at the decoder")
    feed(session, silence(1000))
    await await_until(lambda: listener.of("final"), "a final transcript")
    await session.close()
    *whole, last = worker.audio_messages
    assert all(len(audio) >= BATCH_FRAMES * FRAME_BYTES for audio in whole), [len(a) for a in worker.audio_messages]
    assert len(whole) < len(spoken) / BATCH_FRAMES + 1
    assert b"".join(spoken) in worker.utterances[0]
    assert listener.of("partial")  # partials still come while the caller speaks
    assert listener.events[-1] == ("final", "utterance 1")


async def test_each_utterance_gets_its_own_decoder_run(workers):
    listener = Recorder()
    session = await session_with(listener)
    feed(session, speech(400, seed=8) + silence(2000))
    await await_until(lambda: listener.of("final"), "the first final transcript")
    feed(session, speech(400, seed=9) + silence(1000))
    await await_until(lambda: len(listener.of("final")) == 2, "two final transcripts")
    await session.close()
    assert listener.of("start") == ["", ""]
    assert listener.of("final") == ["utterance 1", "utterance 2"]
    (worker,) = workers  # released after the first utterance, reused for the second
    assert [message[0] for message in worker.messages if message[0] != "audio"] == ["start", "end"] * 2


async def test_a_decoder_failure_is_logged_and_the_next_utterance_gets_a_fresh_decoder(workers, caplog):
    listener = Recorder()
    session = await session_with(listener)
    workers[0].fail_on_audio = True
    with caplog.at_level(logging.WARNING, logger=local.__name__):
        feed(session, speech(400) + silence(1000))
        await await_until(lambda: workers[0].closed, "the failed decoder closed")
    assert any("failed on an utterance" in record.getMessage() for record in caplog.records)
    feed(session, speech(400) + silence(1000))
    await await_until(lambda: listener.of("final"), "a final transcript from a fresh decoder")
    await session.close()
    assert len(workers) == 2 and workers[1].utterances


async def test_closing_mid_utterance_frees_the_decoder_without_a_final(workers):
    listener = Recorder()
    session = await session_with(listener)
    feed(session, speech(600))
    await await_until(lambda: workers[0].messages, "the utterance reached the decoder")
    await session.close()
    assert workers[0].messages[-1] == ("end",)
    assert listener.of("final") == []
    feed(session, speech(600) + silence(1000))  # audio after close is ignored
    assert workers[0].messages[-1] == ("end",)
