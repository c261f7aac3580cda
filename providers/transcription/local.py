"""Offline streaming transcription with PocketSphinx (its wheel carries the US English model).

An energy VAD on the caller's μ-law, in the gateway's process, gates the recognizer: audio
crosses to a decoder only from a short pre-roll before speech starts until the utterance ends, and
the quiet that ends an utterance is held back beyond a short tail, so silence (most of a call)
costs one table lookup per frame. Each utterance is decoded as it is spoken, in batches of a few
frames per message, so the final text is ready soon after the caller stops. The English model is
trained on 16 kHz audio, so 8 kHz telephony audio is resampled up (with carried filter state)
rather than decoded with a mismatched front end.

Decoders run in worker processes (sphinx_worker.py): PocketSphinx holds the GIL while decoding,
which would stall the event loop that paces every call's audio. A decoder holds about 90 MB, so
workers are pooled per gateway process and held only while someone is speaking: a pool of
`maxDecoders` (default: the number of cores, at least 2) serves any number of calls, and an
utterance that finds the pool busy waits for a worker with its audio kept.
Settings (streaming.providers.local): silenceDurationMs (800), energyThreshold (400), maxDecoders.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .base import TranscriptionError, TranscriptionProvider, TranscriptionSession
from .vad import DEFAULT_THRESHOLD, EnergyVad

log = logging.getLogger(__name__)

PREROLL_FRAMES = 15  # 300 ms before the VAD triggers: the start of the first word
# Frames per message to the decoder process: one message per 20 ms frame made a thread hop and a
# pipe round trip per frame; 100 ms batches cost a tenth of that and delay partials by 80 ms at most.
BATCH_FRAMES = 5
PARTIAL_EVERY_BATCHES = 3  # a partial every 300 ms of speech
# Quiet sent on after the last loud frame: soft word endings fall under the threshold, and the
# decoder wants a little silence to close the last word. Quiet beyond it is held back, and sent
# only if the caller speaks again before the utterance ends, so the audio stays continuous.
TAIL_MS = 300
# Starting cepstral means for telephony audio resampled to 16 kHz (it has no energy above 4 kHz,
# unlike the model's training audio). Measured on 8 kHz μ-law speech; live CMN adapts from here.
# With the model's own defaults the first utterances of a call are mostly misrecognized.
TELEPHONY_CMN = "50.0,33.6,-37.1,45.1,-16.2,-1.9,13.2,-27.6,16.2,-7.0,0.7,8.9,-13.7"

_executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="sphinx")


class DecoderPool:
    """PocketSphinx decoders shared by all sessions of this process."""

    def __init__(self) -> None:
        self._idle: list = []
        self._created = 0
        self._lock = threading.Lock()
        self._available: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._available is None or self._loop is not loop:
            self._available, self._loop = asyncio.Condition(), loop
        return self._available

    @staticmethod
    def _new_decoder():
        try:
            import pocketsphinx  # noqa: F401  (fail here, clearly, rather than in the worker)
        except ImportError as exc:
            raise TranscriptionError("local transcription: the pocketsphinx package is not installed") from exc
        from .sphinx_worker import SphinxWorker

        return SphinxWorker(TELEPHONY_CMN)

    async def warm(self) -> None:
        """Make sure one decoder exists (loading the model takes about 0.7 s the first time)."""
        with self._lock:
            if self._created:
                return
            self._created += 1
        try:
            decoder = await asyncio.get_running_loop().run_in_executor(_executor, self._new_decoder)
        except BaseException:
            with self._lock:
                self._created -= 1
            raise
        await self.release(decoder)

    async def acquire(self, limit: int):
        condition = self._condition()
        async with condition:
            while True:
                with self._lock:
                    if self._idle:
                        return self._idle.pop()
                    create = self._created < limit
                    if create:
                        self._created += 1
                if create:
                    break
                await condition.wait()
        try:
            return await asyncio.get_running_loop().run_in_executor(_executor, self._new_decoder)
        except BaseException:
            with self._lock:
                self._created -= 1
            raise

    async def discard(self) -> None:
        """Forget a decoder in an unknown state; a waiter may now create a fresh one."""
        with self._lock:
            self._created -= 1
        await self._notify()

    async def _notify(self) -> None:
        try:
            condition = self._condition()
        except RuntimeError:
            return  # the loop is shutting down: nobody is waiting any more
        async with condition:
            condition.notify()

    async def release(self, decoder) -> None:
        with self._lock:
            self._idle.append(decoder)
        await self._notify()


pool = DecoderPool()


class LocalTranscription(TranscriptionProvider):
    name = "local"
    api_key_env = None

    def max_decoders(self) -> int:
        return int(self.setting("maxDecoders", max(2, os.cpu_count() or 2)))

    def create_session(self, listener, *, language: str | None = None) -> LocalSession:
        if language and not language.lower().startswith("en"):
            raise TranscriptionError(f"local transcription speaks English only (language {language!r})")
        return LocalSession(self, listener, language=language)


class _Utterance:
    """Audio of one utterance, queued for its decoder; `ready` is set once a batch is waiting."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames: deque[bytes] = deque()
        self.ended = False
        self.ready = asyncio.Event()
        for frame in frames:
            self.add(frame)

    def add(self, frame: bytes) -> None:
        self.frames.append(frame)
        if len(self.frames) >= BATCH_FRAMES:
            self.ready.set()

    def end(self) -> None:
        self.ended = True
        self.ready.set()


class LocalSession(TranscriptionSession):
    def __init__(self, provider: LocalTranscription, listener, *, language: str | None = None) -> None:
        super().__init__(provider, listener, language=language)
        self.vad = EnergyVad(
            silence_ms=int(provider.setting("silenceDurationMs", 800)),
            threshold=float(provider.setting("energyThreshold", DEFAULT_THRESHOLD)),
        )
        self._preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        self._held: list[bytes] = []  # quiet past the tail of the current utterance
        self._utterance: _Utterance | None = None
        self._workers: set[asyncio.Task] = set()
        self._connected = False
        self._closed = False
        self.utterances = 0

    async def connect(self) -> None:
        try:
            await pool.warm()
        except TranscriptionError:
            raise
        except Exception as exc:
            raise TranscriptionError(f"local transcription: cannot load the model: {exc}") from exc
        self._connected = True

    def send_audio(self, ulaw: bytes) -> None:
        if self._closed:
            return
        event = self.vad.feed(ulaw)
        if event == "start":
            self._utterance = _Utterance([*self._preroll, ulaw])
            self._preroll.clear()
            self.utterances += 1
            task = asyncio.get_running_loop().create_task(self._decode(self._utterance))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
            self.listener.on_speech_started()
        elif self._utterance is not None:
            if event == "end":
                self._held.clear()  # the quiet that ended the utterance is never decoded
                self._utterance.end()
                self._utterance = None
            elif self.vad.quiet_ms > TAIL_MS:
                self._held.append(ulaw)
            else:
                if self._held:  # the caller spoke again: the pause goes to the decoder as it was
                    for held in self._held:
                        self._utterance.add(held)
                    self._held.clear()
                self._utterance.add(ulaw)
        else:
            self._preroll.append(ulaw)

    async def _decode(self, utterance: _Utterance) -> None:
        loop = asyncio.get_running_loop()
        worker = await pool.acquire(self.provider.max_decoders())
        batches = 0
        last_partial = ""
        healthy = False
        text = ""
        try:
            await loop.run_in_executor(_executor, worker.request, "start")
            while True:
                await utterance.ready.wait()
                utterance.ready.clear()
                batch = b"".join(utterance.frames)
                utterance.frames.clear()
                ended = utterance.ended
                if batch and not self._closed:
                    want_partial = batches % PARTIAL_EVERY_BATCHES == 0
                    _, partial = await loop.run_in_executor(_executor, worker.request, "audio", batch, want_partial)
                    batches += 1
                    if partial and partial != last_partial and not ended:
                        last_partial = partial
                        self.listener.on_partial(partial)
                if ended:
                    break
            _, text = await loop.run_in_executor(_executor, worker.request, "end")
            healthy = True
        except Exception as exc:
            log.warning("local transcription failed on an utterance: %s", exc)
        finally:
            if healthy:
                await pool.release(worker)
            else:
                worker.close()
                await pool.discard()  # its state is unknown; a fresh one is made when needed
        if text and not self._closed:
            self.listener.on_final(text)

    async def close(self) -> None:
        """Stop listening; an utterance in progress is finished (not reported) so its decoder is freed."""
        self._closed = True
        self._held.clear()
        if self._utterance is not None:
            self._utterance.end()
            self._utterance = None
        if self._workers:
            await asyncio.wait(list(self._workers), timeout=5)
