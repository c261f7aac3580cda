"""A streamed call's local recording: a two-channel WAV (left the caller, right the gateway) written off the loop.

The timeline is the carrier's clock. Every inbound frame is 20 ms of the call, placed at its
carrier timestamp when it has one (a gap of lost frames is filled with silence, up to
MAX_GAP_BYTES) and right after the previous one otherwise. Each frame also tells where the
carrier's clock stood when it arrived (at least at its end); the earliest-arriving frames anchor
an estimate of that clock, so frames the gateway handles late (network, a busy loop) do not pull
it back. What the gateway sends goes on the right channel where the carrier's clock stood when it
was sent, or right after the gateway's previous frame when that one is still due (the carrier
plays its buffer in order), so a reply lines up with the caller's words it answers; where the
gateway sent nothing the right channel is silence. A `clear` drops the gateway audio the carrier
had not played yet. Should the carrier stop sending audio for MAX_LEAD_BYTES while the gateway
talks, the caller's side is filled with silence up to the gateway's.

On the event loop a frame is only appended to a buffer. Each second of the call (CHUNK_BYTES of
inbound audio) is handed to one writer thread, which decodes both channels to PCM16, appends
them to the file and then rewrites the RIFF and data sizes in the header: at any moment the file
is a valid WAV of every chunk written so far, so a process that dies loses at most the last
second. An unwritable directory or a full disk fails the recording, never the call.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.audio import BYTES_PER_MS, FRAME_BYTES, SAMPLE_RATE, ULAW_SILENCE, ULAW_TO_PCM

from .. import services
from ..recording_files import file_path, relative_name

log = logging.getLogger(__name__)

CHANNELS = 2
SAMPLE_BYTES = 2  # PCM16
HEADER_BYTES = 44
CHUNK_BYTES = SAMPLE_RATE  # one second of μ-law per channel is handed to the writer at a time
MAX_LEAD_BYTES = 5 * SAMPLE_RATE  # gateway audio this far ahead of the caller's: the carrier stopped sending
MAX_GAP_BYTES = 10 * SAMPLE_RATE  # a timestamp gap filled with silence at most this long (a bad timestamp)
FINISH_TIMEOUT = 10.0  # the last chunk and the row's completion, at most this long after the stream ends

# One writer thread for every recording of the process: chunks of a file are written in order,
# and the disk work of many calls never competes with the loop for more than one thread.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording")
# Its thread is started now, at import: the pool starts it on the first submit otherwise, and
# starting a thread waits for it to run, which on a busy machine would hold the event loop.
_writer.submit(lambda: None)
_finishing: set[asyncio.Task] = set()  # recordings finishing after their stream is gone


@dataclass(frozen=True)
class WavResult:
    size_bytes: int
    duration_seconds: float
    error: str = ""


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of an 8 kHz, 16-bit, two-channel PCM WAV holding `data_bytes` of samples."""
    block = CHANNELS * SAMPLE_BYTES
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, CHANNELS,
                       SAMPLE_RATE, SAMPLE_RATE * block, block, 8 * SAMPLE_BYTES, b"data", data_bytes)


def interleave(left: bytes, right: bytes) -> bytes:
    """Two equally long μ-law channels → interleaved PCM16 little-endian frames."""
    samples = np.empty((len(left), CHANNELS), dtype="<i2")
    samples[:, 0] = ULAW_TO_PCM.take(np.frombuffer(left, dtype=np.uint8))
    samples[:, 1] = ULAW_TO_PCM.take(np.frombuffer(right, dtype=np.uint8))
    return samples.tobytes()


class WavFile:
    """The file side, used only on the writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.data_bytes = 0
        self.error = ""

    def open(self) -> str:
        """Create the file with an empty WAV's header; the error ("" when none)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            os.write(self.fd, wav_header(0))
        except OSError as exc:
            self._failed(exc)
        return self.error

    def append(self, left: bytes, right: bytes) -> None:
        if self.fd is None:
            return
        try:
            data = interleave(left, right)
            os.pwrite(self.fd, data, HEADER_BYTES + self.data_bytes)
            self.data_bytes += len(data)
            # After the samples: a reader never sees sizes that promise more than the file holds.
            os.pwrite(self.fd, struct.pack("<I", 36 + self.data_bytes), 4)
            os.pwrite(self.fd, struct.pack("<I", self.data_bytes), 40)
        except OSError as exc:
            self._failed(exc)

    def close(self) -> WavResult:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError as exc:
                self.error = self.error or f"closing {self.path}: {exc.strerror or exc}"
            self.fd = None
        frames = self.data_bytes // (CHANNELS * SAMPLE_BYTES)
        return WavResult(HEADER_BYTES + self.data_bytes, round(frames / SAMPLE_RATE, 3), self.error)

    def _failed(self, exc: OSError) -> None:
        self.error = f"writing {self.path}: {exc.strerror or exc}"
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class StreamRecording:
    """One stream's recording: its row, its buffers on the loop, its file on the writer thread.

    A stream of the same call that reconnects starts a recording of its own (a second row and
    file): the gap between the two is not invented, and each file is complete in itself.
    """

    def __init__(self, *, config, call_id: str, stream_id: str, clock=time.monotonic) -> None:
        self.call_id = call_id
        self.clock = clock
        self.recording_id = uuid.uuid4()
        self.name = relative_name(call_id, self.recording_id, "wav")
        self.left = bytearray()  # caller audio not yet handed to the writer
        self.right = bytearray()  # gateway audio from the same point on (may run ahead of `left`)
        self.origin_ms: int | None = None  # the first inbound frame's carrier timestamp
        self.position = 0  # bytes of the caller's channel handed to the writer so far
        # The carrier's clock: at monotonic time anchor_at it stood at byte anchor (of the whole call).
        self.anchor_at: float | None = None
        self.anchor = 0
        self.failed = ""
        self.closed = False
        self.file: WavFile | None = None
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.run_in_executor(_writer, self._open, config)
        self.started = _detached(self._start(stream_id))

    # --- on the loop, per frame --------------------------------------------------------------

    def inbound(self, payload: bytes, timestamp_ms: int | None = None) -> None:
        """A caller frame, at its carrier timestamp when it has one."""
        if self.closed:
            return
        left = self.left
        if timestamp_ms is not None:
            if self.origin_ms is None:
                self.origin_ms = timestamp_ms - (self.position + len(left)) // BYTES_PER_MS
            else:
                gap = (timestamp_ms - self.origin_ms) * BYTES_PER_MS - self.position - len(left)
                if FRAME_BYTES <= gap <= MAX_GAP_BYTES:
                    left += bytes((ULAW_SILENCE,)) * gap  # frames the carrier lost: silence in their place
        left += payload
        # The carrier's clock is past this frame's end: an anchor, unless an earlier frame was more on time.
        end, at = self.position + len(left), self.clock()
        if self.anchor_at is None or end > self.anchor + (at - self.anchor_at) * SAMPLE_RATE:
            self.anchor_at, self.anchor = at, end
        if len(left) >= CHUNK_BYTES:
            self._hand_over(len(left))

    def outbound(self, frame: bytes) -> None:
        """A frame the gateway sent: where the carrier's clock stands, or after the gateway's previous frame."""
        if self.closed:
            return
        at = self.clock()
        if self.anchor_at is None:  # nothing from the carrier yet: its clock starts now
            self.anchor_at, self.anchor = at, self.position + len(self.left)
        now = self._carrier_now(at)
        right = self.right
        if len(right) < now:
            right += bytes((ULAW_SILENCE,)) * (now - len(right))
        right += frame
        lead = len(right) - len(self.left)
        if lead > MAX_LEAD_BYTES:
            # The carrier has sent nothing for a while as the gateway talks: the caller's side is silence.
            self.left += bytes((ULAW_SILENCE,)) * lead
            self._hand_over(len(self.left))

    def cleared(self) -> None:
        """The carrier was told to drop what it had not played: so is the recording."""
        if self.anchor_at is not None:
            del self.right[max(self._carrier_now(self.clock()), 0):]

    def _carrier_now(self, at: float) -> int:
        """Where the carrier's clock stands at `at`, in whole frames, as an offset into the buffers."""
        now = int(self.anchor + (at - self.anchor_at) * SAMPLE_RATE)
        return now - now % FRAME_BYTES - self.position

    def _hand_over(self, size: int) -> None:
        left, right = _padded(self.left, size), _padded(self.right, size)
        del self.left[:size]
        del self.right[:size]
        self.position += size
        if not self.failed:
            self.loop.run_in_executor(_writer, self._append, left, right)

    # --- the file, on the writer thread ------------------------------------------------------

    def _open(self, config) -> str:
        try:
            path = file_path(config, self.name)
        except (OSError, ValueError) as exc:
            return f"recording directory: {exc}"
        self.file = WavFile(path)
        return self.file.open()

    def _append(self, left: bytes, right: bytes) -> None:
        if self.file is not None:
            self.file.append(left, right)

    def _close(self) -> WavResult:
        if self.file is None:
            return WavResult(0, 0.0, self.failed or "the file was never opened")
        return self.file.close()

    # --- the row -------------------------------------------------------------------------------

    async def _start(self, stream_id: str) -> None:
        try:
            await services_call(services.local_recording_start, call_id=self.call_id, recording_id=self.recording_id,
                                name=self.name)
        except Exception:
            self.failed = "its record could not be stored"
            log.exception("call %s: local recording not started", self.call_id)
            return
        try:
            error = await self.opened
        except Exception as exc:  # a bug, not the disk: the recording fails, the call goes on
            error = f"opening the file failed: {type(exc).__name__}: {exc}"
        if error:
            self.failed = error
            log.warning("call %s: local recording failed, the call goes on without it: %s", self.call_id, error)
            await services_call(services.local_recording_finish, recording_id=self.recording_id, size_bytes=None,
                                duration_seconds=None, error=error)
        else:
            log.info("call %s: recording stream %s locally to %s", self.call_id, stream_id, self.name)

    def close(self) -> asyncio.Task:
        """The stream ended: the rest is written and the row completed (or failed) in the background."""
        if not self.closed:
            if self.left or self.right:
                # The gateway's audio still due when the stream ended is kept: it was sent.
                self._hand_over(max(len(self.left), len(self.right)))
            self.closed = True
            self.finished = _detached(self._finish())
        return self.finished

    async def _finish(self) -> None:
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                await self.started
                if self.failed:
                    return  # recorded as failed when the file could not be opened
                result = await self.loop.run_in_executor(_writer, self._close)
                if result.error:
                    log.warning("call %s: local recording failed: %s", self.call_id, result.error)
                await services_call(services.local_recording_finish, recording_id=self.recording_id,
                                    size_bytes=result.size_bytes, duration_seconds=result.duration_seconds,
                                    error=result.error)
        except Exception:
            log.exception("call %s: finishing local recording %s failed", self.call_id, self.recording_id)


def _padded(buffer: bytearray, size: int) -> bytes:
    """The first `size` bytes of a channel, silence where it holds fewer."""
    chunk = bytes(buffer[:size])
    return chunk + bytes((ULAW_SILENCE,)) * (size - len(chunk)) if len(chunk) < size else chunk


async def services_call(func, **kwargs):
    """A recording service on a worker thread (never the loop's)."""
    from .consumer import service

    return await service(func)(**kwargs)


def _detached(coro) -> asyncio.Task:
    """A task that outlives the stream's own (those are cancelled when it closes)."""
    task = asyncio.ensure_future(coro)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    return task


def start_recording(*, config, call, stream_id: str) -> StreamRecording | None:
    """The stream's recording when its call records locally (else None)."""
    if not getattr(call, "record_local", False):
        return None
    return StreamRecording(config=config, call_id=call.call_id, stream_id=stream_id)
