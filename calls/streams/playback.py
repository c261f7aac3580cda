"""A stream's TTS playback queue (docs/compatibility.md, Playback and pacing): one utterance at a time, paced, marked.

Each utterance is synthesized while silence frames keep the line warm, sent as 160-byte μ-law
frames on an absolute 20 ms clock, and followed by marks. The carrier echoes a mark once the audio
before it has played, so acknowledged marks tell how much the caller actually heard; a barge-in
clears the carrier's buffer and the transcript keeps only the heard part.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from core.audio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, SILENCE_FRAME, Framer, Pacer
from .stats import StreamStats

log = logging.getLogger(__name__)

MAX_PENDING = 8
MARK_EVERY_FRAMES = 10  # a mark every 200 ms of audio bounds how far "heard" can be off
MARK_GRACE_MS = 2000
REMEMBERED_CLEARED_MARKS = 64
REMEMBERED_CLEARED_GROUPS = 64
FRAME_SECONDS = FRAME_MS / 1000

Synthesizer = Callable[[str, str | None], AsyncIterator[bytes]]


class PlaybackQueueFull(Exception):
    def __init__(self) -> None:
        super().__init__(f"Telephony TTS queue is full ({MAX_PENDING} pending)")


class Outcome(StrEnum):
    PLAYED = "played"  # all of it was played
    INTERRUPTED = "interrupted"  # cleared part-way (barge-in); `heard` says what got through
    SKIPPED = "skipped"  # cleared before it started
    FAILED = "failed"  # synthesis or sending failed


@dataclass
class PlaybackResult:
    outcome: Outcome
    heard: str = ""
    played_ms: int = 0
    total_ms: int = 0
    error: str = ""
    first_audio_ms: int | None = None  # from dequeue to the first real audio frame sent

    def as_message(self) -> dict:
        return {"outcome": self.outcome.value, "heard": self.heard, "playedMs": self.played_ms,
                "totalMs": self.total_ms, "error": self.error, "firstAudioMs": self.first_audio_ms}


class Entry:
    _ids = itertools.count(1)

    def __init__(self, text: str, voice: str | None, interruptible: bool, group: str | None = None) -> None:
        self.id = next(self._ids)
        # Audio from elsewhere (a realtime model's answer) instead of synthesizing `text`.
        self.source: AsyncIterator[bytes] | None = None
        self.timeout: float | None = None  # longest wait for the source's next audio
        self.on_started: Callable[[float], None] | None = None  # its first audio frame went out (monotonic)
        self.group = group
        self.text = text
        self.voice = voice
        self.interruptible = interruptible
        self.future: asyncio.Future[PlaybackResult] = asyncio.get_running_loop().create_future()
        self.aborted = asyncio.Event()

    def settle(self, result: PlaybackResult) -> None:
        if not self.future.done():
            self.future.set_result(result)


def heard_text(text: str, fraction: float) -> str:
    """The start of `text` the caller heard, cut back to a word boundary."""
    if fraction >= 0.999:
        return text
    if fraction <= 0:
        return ""
    cut = int(len(text) * fraction)
    head = text[:cut]
    # Cut inside a word: that word was not finished, so it goes.
    if cut < len(text) and not text[cut].isspace() and head and not head[-1].isspace():
        head = head.rsplit(None, 1)[0] if " " in head.strip() else ""
    return head.strip()


class Playback:
    """The FIFO and its player task. `send` writes one text frame to the carrier."""

    def __init__(self, *, send: Callable[[str], Awaitable[None]], frames, synthesize: Synthesizer,
                 stats: StreamStats, synthesis_timeout: float = 8.0, first_audio_timeout: float | None = None,
                 tap=None) -> None:
        self.send = send
        # Told of every audio frame sent and of every clear (the stream's local recording), or None.
        self.tap = tap
        self.frames = frames
        self.synthesize = synthesize
        self.stats = stats
        self.synthesis_timeout = synthesis_timeout  # longest gap between two pieces of audio
        # Longest wait for the first audio: a TTS chain may spend a provider's whole timeout on
        # each provider before the next one answers.
        self.first_audio_timeout = first_audio_timeout or synthesis_timeout
        self._queue: deque[Entry] = deque()
        self._wakeup = asyncio.Event()
        self._active: Entry | None = None
        self._marks: dict[str, tuple[Entry, int]] = {}  # mark name → (entry, bytes sent before it)
        self._acked_bytes: dict[int, int] = {}
        self._end_marks: dict[int, asyncio.Event] = {}
        self._cleared_marks: OrderedDict[str, None] = OrderedDict()
        # Groups (e.g. the sentences of one reply) a barge-in cut: their later parts are skipped.
        self._cleared_groups: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task | None = None
        self._closed = False

    # --- API ------------------------------------------------------------------------------

    def enqueue(self, text: str, voice: str | None = None, *, interruptible: bool = True,
                group: str | None = None) -> asyncio.Future[PlaybackResult]:
        """Queue an utterance. Entries of a `group` that a barge-in already cut settle as skipped:
        the rest of an interrupted reply is never played, however late its sentences arrive."""
        if self._closed:
            raise RuntimeError("the stream is closed")
        if len(self._queue) >= MAX_PENDING:
            raise PlaybackQueueFull()
        entry = Entry(text, voice, interruptible, group)
        if group is not None and group in self._cleared_groups:
            entry.settle(PlaybackResult(Outcome.SKIPPED))
            return entry.future
        self._queue.append(entry)
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="playback")
        return entry.future

    def enqueue_audio(self, source: AsyncIterator[bytes], *, text: str = "", interruptible: bool = True,
                      group: str | None = None, timeout: float | None = None,
                      on_started: Callable[[float], None] | None = None) -> asyncio.Future[PlaybackResult]:
        """Queue audio that is already 8 kHz μ-law (any chunk sizes), paced and marked like speech.

        `source` ends when the audio is complete; `timeout` bounds the wait for its next chunk.
        """
        if self._closed:
            raise RuntimeError("the stream is closed")
        if len(self._queue) >= MAX_PENDING:
            raise PlaybackQueueFull()
        entry = Entry(text, None, interruptible, group)
        entry.source, entry.timeout, entry.on_started = source, timeout, on_started
        self._queue.append(entry)
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="playback")
        return entry.future

    @property
    def active_id(self) -> int | None:
        return self._active.id if self._active is not None else None

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._queue)

    @property
    def interruptible(self) -> bool:
        """Whether a barge-in may clear what is playing now (the greeting of an outbound call may not)."""
        return self._active is None or self._active.interruptible

    def on_mark(self, name: str) -> None:
        """The carrier played everything before mark `name`."""
        if name in self._cleared_marks:
            return  # echo of a mark from cleared playback: ignored
        known = self._marks.pop(name, None)
        if known is None:
            self.stats.counters["marks_unknown"] += 1
            return
        entry, sent = known
        self.stats.counters["marks_acked"] += 1
        self._acked_bytes[entry.id] = max(self._acked_bytes.get(entry.id, 0), sent)
        done = self._end_marks.get(entry.id)
        if done is not None and name.endswith("-end"):
            done.set()

    async def clear(self, *, send_clear: bool = True) -> int:
        """Barge-in: skip everything queued, abort what plays, flush the carrier's buffer.

        Returns how many entries were cleared.
        """
        cleared = 0
        while self._queue:
            entry = self._queue.popleft()
            self._remember_cleared_group(entry.group)
            entry.settle(PlaybackResult(Outcome.SKIPPED))
            cleared += 1
        active = self._active
        if active is not None and not active.aborted.is_set():
            self._remember_cleared_group(active.group)
            active.aborted.set()
            cleared += 1
        if cleared and send_clear:
            self._forget_pending_marks()
            try:
                await self.send(self.frames.clear())
                self.stats.counters["clears"] += 1
            except Exception as exc:
                log.info("sending clear failed: %s", exc)
            if self.tap is not None:
                self.tap.cleared()
        return cleared

    def _remember_cleared_group(self, group: str | None) -> None:
        if group is None:
            return
        self._cleared_groups[group] = None
        while len(self._cleared_groups) > REMEMBERED_CLEARED_GROUPS:
            self._cleared_groups.popitem(last=False)

    async def close(self) -> None:
        """The stream ended: settle everything, stop the player."""
        self._closed = True
        await self.clear(send_clear=False)
        self._forget_pending_marks()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # --- the player -----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            entry = self._queue.popleft()
            self._active = entry
            try:
                result = await self._play(entry)
            except asyncio.CancelledError:
                entry.settle(PlaybackResult(Outcome.SKIPPED))
                raise
            except Exception as exc:  # a bug must not leave the caller of speak waiting forever
                log.exception("playback failed")
                result = PlaybackResult(Outcome.FAILED, error=str(exc) or type(exc).__name__)
            finally:
                self._active = None
                self._end_marks.pop(entry.id, None)
                self._acked_bytes.pop(entry.id, None)
            entry.settle(result)

    async def _play(self, entry: Entry) -> PlaybackResult:
        synth = _Synthesis()
        producer = asyncio.create_task(self._produce(entry, synth))
        pacer = Pacer()
        sent = frames_since_mark = 0
        started_at = time.monotonic()
        audio_started_at: float | None = None
        mark_seq = itertools.count(1)
        try:
            # The first audio goes out the moment it exists; a synthesis slower than one frame is
            # covered by silence, every 20 ms from then until speech arrives (docs/compatibility.md,
            # Playback and pacing), and the speech's first frame then restarts the clock instead
            # of waiting for the next silence slot.
            await synth.wait(FRAME_SECONDS)
            pacer.start()
            covered = not (synth.frames or synth.done or synth.error)
            if covered:
                await pacer.wait()
                await self.send(self.frames.media(SILENCE_FRAME))
                if self.tap is not None:
                    self.tap.outbound(SILENCE_FRAME)
            while True:
                if entry.aborted.is_set():
                    return self._interrupted(entry, sent, synth)
                if synth.error is not None:
                    raise synth.error
                frame = synth.next_frame()
                if frame is not None:
                    if sent == 0:
                        self.stats.tts_waited((synth.first_audio_at or time.monotonic()) - started_at)
                        if covered:
                            pacer.start()
                    lag = await pacer.wait()
                    if entry.aborted.is_set():
                        return self._interrupted(entry, sent, synth)
                    self.stats.pacing.add(lag * 1000)
                    await self.send(self.frames.media(frame))
                    if self.tap is not None:
                        self.tap.outbound(frame)
                    if audio_started_at is None:
                        audio_started_at = time.monotonic()
                        self.stats.reply_audio_sent(audio_started_at)
                        if entry.on_started is not None:
                            entry.on_started(audio_started_at)
                    sent += FRAME_BYTES
                    self.stats.counters["frames_out"] += 1
                    frames_since_mark += 1
                    if frames_since_mark >= MARK_EVERY_FRAMES:
                        frames_since_mark = 0
                        await self._send_mark(entry, f"tts-{entry.id}-{next(mark_seq)}", sent)
                    continue
                if synth.done:
                    break
                limit = entry.timeout or (self.synthesis_timeout if synth.first_audio_at else self.first_audio_timeout)
                if time.monotonic() - synth.last_audio_at > limit:
                    raise TimeoutError(f"speech synthesis timed out after {limit:g} s")
                if sent == 0:
                    # Until the speech starts: woken by its first audio as well as by the next slot.
                    await synth.wait(pacer.time_to_next())
                    if synth.frames or synth.done or synth.error:
                        continue
                    await pacer.wait()
                    if entry.aborted.is_set():
                        return self._interrupted(entry, sent, synth)
                    await self.send(self.frames.media(SILENCE_FRAME))
                    if self.tap is not None:
                        self.tap.outbound(SILENCE_FRAME)
                else:
                    # Synthesis is slower than real time: wait for audio, then restart the clock.
                    await synth.wait(FRAME_SECONDS)
                    pacer.resync()
            if sent == 0:
                raise RuntimeError("speech synthesis produced no audio")
            done = asyncio.Event()
            self._end_marks[entry.id] = done
            await self._send_mark(entry, f"tts-{entry.id}-end", sent)
            # Frames left at real-time pace, so little is still buffered at the carrier.
            played_so_far_ms = (time.monotonic() - (audio_started_at or started_at)) * 1000
            remaining_ms = max(0.0, sent / BYTES_PER_MS - played_so_far_ms)
            if not await _first(done, entry.aborted, timeout=(remaining_ms + MARK_GRACE_MS) / 1000):
                self.stats.counters["mark_timeouts"] += 1
            if entry.aborted.is_set() and not done.is_set():
                return self._interrupted(entry, sent, synth)
            total_ms = sent // BYTES_PER_MS
            return PlaybackResult(Outcome.PLAYED, heard=entry.text, played_ms=total_ms, total_ms=total_ms,
                                  first_audio_ms=_ms_between(started_at, audio_started_at))
        except Exception as exc:
            # Whatever was sent cannot be taken back except by clearing it (docs/compatibility.md, Playback and pacing).
            if sent:
                try:
                    await self.send(self.frames.clear())
                except Exception:
                    pass
                if self.tap is not None:
                    self.tap.cleared()
            self._forget_marks_of(entry)
            self.stats.counters["playback_failures"] += 1
            return PlaybackResult(Outcome.FAILED, error=str(exc) or type(exc).__name__,
                                  total_ms=sent // BYTES_PER_MS, first_audio_ms=_ms_between(started_at, audio_started_at))
        finally:
            producer.cancel()
            try:
                await producer
            except (asyncio.CancelledError, Exception):
                pass

    async def _produce(self, entry: Entry, synth: _Synthesis) -> None:
        try:
            chunks = entry.source if entry.source is not None else self.synthesize(entry.text, entry.voice)
            async for chunk in chunks:
                if chunk:
                    synth.add(chunk)
            synth.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            synth.fail(exc)

    async def _send_mark(self, entry: Entry, name: str, sent: int) -> None:
        self._marks[name] = (entry, sent)
        await self.send(self.frames.mark(name))
        self.stats.counters["marks_sent"] += 1

    def _interrupted(self, entry: Entry, sent: int, synth: _Synthesis) -> PlaybackResult:
        heard_bytes = min(self._acked_bytes.pop(entry.id, 0), sent)
        self._forget_marks_of(entry)
        total_ms = sent // BYTES_PER_MS
        played_ms = heard_bytes // BYTES_PER_MS
        if heard_bytes == 0:
            return PlaybackResult(Outcome.SKIPPED, total_ms=total_ms)
        # Text is cut in proportion to audio. If synthesis had not finished, its full length is
        # unknown: assume at least the audio made so far, or about 14 characters a second.
        whole = synth.produced if synth.done else max(synth.produced, len(entry.text) * BYTES_PER_MS * 1000 // 14)
        return PlaybackResult(Outcome.INTERRUPTED, heard=heard_text(entry.text, heard_bytes / max(whole, 1)),
                              played_ms=played_ms, total_ms=total_ms)

    def _forget_marks_of(self, entry: Entry) -> None:
        for name in [n for n, (e, _) in self._marks.items() if e is entry]:
            del self._marks[name]
            self._remember_cleared(name)

    def _forget_pending_marks(self) -> None:
        for name in list(self._marks):
            self._remember_cleared(name)
        self._marks.clear()

    def _remember_cleared(self, name: str) -> None:
        self._cleared_marks[name] = None
        while len(self._cleared_marks) > REMEMBERED_CLEARED_MARKS:
            self._cleared_marks.popitem(last=False)


class _Synthesis:
    """Audio arriving from the TTS task, cut into frames for the player."""

    def __init__(self) -> None:
        self.framer = Framer()
        self.frames: deque[bytes] = deque()
        self.produced = 0
        self.done = False
        self.error: BaseException | None = None
        self.last_audio_at = time.monotonic()
        self.first_audio_at: float | None = None
        self._ready = asyncio.Event()

    def add(self, chunk: bytes) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.produced += len(chunk)
        self.frames.extend(self.framer.push(chunk))
        self.last_audio_at = time.monotonic()
        self._ready.set()

    def finish(self) -> None:
        tail = self.framer.flush()
        if tail:
            self.frames.append(tail)
        self.done = True
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._ready.set()

    def next_frame(self) -> bytes | None:
        return self.frames.popleft() if self.frames else None

    async def wait(self, timeout: float) -> None:
        self._ready.clear()
        if self.frames or self.done or self.error:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            pass


async def _first(done: asyncio.Event, aborted: asyncio.Event, *, timeout: float) -> bool:
    """Wait until `done` or `aborted` is set; False on timeout."""
    waiters = [asyncio.create_task(done.wait()), asyncio.create_task(aborted.wait())]
    try:
        finished, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this wait is itself cancelled (the stream closing): a waiter left pending
        # would wait on its event until garbage collection destroys it ("Task was destroyed").
        for task in waiters:
            task.cancel()
    return bool(finished)


def _ms_between(start: float, end: float | None) -> int | None:
    return None if end is None else int((end - start) * 1000)
