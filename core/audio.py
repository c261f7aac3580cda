"""Telephony audio: G.711 μ-law, a stateful resampler, provider-format conversion, framing and pacing.

Everything here runs at 50 frames a second per call per direction, so the per-frame work is
table lookups and one call into soxr; tables are built once per process, resamplers once per stream.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import soxr

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 μ-law bytes = 20 ms
BYTES_PER_MS = SAMPLE_RATE // 1000  # 8 μ-law bytes per millisecond
ULAW_SILENCE = 0xFF
SILENCE_FRAME = bytes([ULAW_SILENCE]) * FRAME_BYTES

_BIAS = 0x84  # 132
_CLIP = 32635


class UnsupportedAudio(ValueError):
    """Audio in a format the gateway cannot put on a phone line."""


# --- μ-law -------------------------------------------------------------------------------------


def _build_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - magnitude, magnitude - _BIAS).astype(np.int16)


def _build_encode_table() -> np.ndarray:
    """μ-law byte for every 16-bit sample, indexed by the sample's unsigned bit pattern."""
    sample = np.arange(65536, dtype=np.int32)
    sample = np.where(sample >= 32768, sample - 65536, sample)
    sign = np.where(sample < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(sample), _CLIP) + _BIAS
    exponent = np.floor(np.log2(magnitude >> 7 | 1)).astype(np.int32)
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


# Lookups below use ndarray.take: a third cheaper than fancy indexing on a 20 ms frame.
ULAW_TO_PCM = _build_decode_table()
PCM_TO_ULAW = _build_encode_table()
# The decode table as a column: a lookup through it gives the (n, 1) layout soxr takes as it is.
_ULAW_COLUMN = ULAW_TO_PCM.reshape(-1, 1)
# int16 arrays are already PCM16 little-endian here, so the per-frame path skips the conversion.
_NATIVE_IS_PCM16 = sys.byteorder == "little"
_INT16 = np.dtype(np.int16)
_PCM16 = np.dtype("<i2")


def ulaw_to_pcm16(data: bytes) -> bytes:
    """μ-law bytes → PCM16 little-endian (same sample rate)."""
    return ULAW_TO_PCM.take(np.frombuffer(data, dtype=np.uint8)).astype("<i2", copy=False).tobytes()


def ulaw_to_samples(data: bytes) -> np.ndarray:
    """μ-law bytes → int16 samples."""
    return ULAW_TO_PCM.take(np.frombuffer(data, dtype=np.uint8))


def pcm16_to_ulaw(data: bytes) -> bytes:
    """PCM16 little-endian → μ-law bytes (bias 132, clip 32635)."""
    return samples_to_ulaw(np.frombuffer(data, dtype=_PCM16))


def samples_to_ulaw(samples: np.ndarray) -> bytes:
    """int16 samples (any shape) → μ-law bytes."""
    if samples.dtype is not _INT16:
        samples = samples.astype(np.int16)
    return PCM_TO_ULAW.take(samples.view(np.uint16)).tobytes()


def rms(samples: np.ndarray) -> float:
    """Root-mean-square level of int16 samples (0 for none)."""
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2)))


# --- resampling --------------------------------------------------------------------------------

# soxr's "HQ" (20-bit) filter: flat to 3.7 kHz at an 8 kHz output, so the whole telephone band
# passes, and over 120 dB down past 4.1 kHz, below what int16 and μ-law can carry. "VHQ"'s extra
# precision is lost in int16 and μ-law, and it holds back twice the audio when downsampling TTS
# (about 85 ms against 43 ms on average); "MQ" and "LQ" save at most 0.2 µs a frame, and "LQ"
# and "QQ" cut the top of the telephone band (bench/README.md, `codecs.py`).
QUALITY = "HQ"
_NO_SAMPLES = np.zeros(0, dtype=np.int16)


class Resampler:
    """Streaming PCM16 resampler (soxr) that carries its filter state across chunks.

    Feeding a signal in 20 ms pieces gives the same output as feeding it whole (within 2 LSB: soxr
    dithers as it rounds to int16), so chunk boundaries never click. soxr works in blocks, so
    `process` returns audio in bursts and holds some back (tens of ms); `flush()` at the end of a
    stream returns what it still holds.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise UnsupportedAudio(f"sample rates must be positive (got {src_rate} → {dst_rate})")
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self.identity = src_rate == dst_rate
        self._stream = None if self.identity else soxr.ResampleStream(
            src_rate, dst_rate, 1, dtype="int16", quality=QUALITY)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """int16 samples at src_rate → int16 samples at dst_rate (as many as are ready).

        Samples are 1-D or an (n, 1) column, and come back in the same layout; the column is soxr's
        own, so the per-frame paths below use it and skip a reshape each way.
        """
        if self._stream is None:
            return samples.astype(np.int16, copy=False)
        if samples.dtype is not _INT16:  # an identity check: astype(copy=False) costs more per frame
            samples = samples.astype(np.int16)
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The samples still held back; the next `process` starts a new stream."""
        if self._stream is None:
            return _NO_SAMPLES
        tail = self._stream.resample_chunk(_NO_SAMPLES, last=True)
        self._stream.clear()
        return tail

    def convert(self, samples: np.ndarray) -> np.ndarray:
        """A whole signal at once: `process` then `flush`."""
        head = self.process(samples)
        tail = self.flush()
        return np.concatenate((head, tail)) if tail.size else head


# --- formats -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFormat:
    """What a provider produces: 'mulaw' (8 kHz only), 'pcm16' (little-endian, any rate) or 'mp3'.

    For 'mp3' the rate is nominal: the decoder reads the real one from the stream.
    """

    encoding: str
    sample_rate: int

    def __str__(self) -> str:
        return f"{self.encoding}@{self.sample_rate}"


MULAW_8K = AudioFormat("mulaw", SAMPLE_RATE)


def parse_format(name: str | None, default_rate: int = 24000) -> AudioFormat:
    """A provider's output-format name → AudioFormat, as the reference reads them.

    `ulaw_8000` / `raw-8khz-8bit-mono-mulaw` / `mulaw` are μ-law; absent, `pcm`, `pcm_<rate>` or
    `raw-<n>khz-16bit-mono-pcm` are PCM16; anything else is UnsupportedAudio.
    """
    value = (name or "pcm").strip().lower()
    if value in ("ulaw_8000", "mulaw", "ulaw", "pcmu", "raw-8khz-8bit-mono-mulaw", "audio/pcmu", "audio/x-mulaw"):
        return MULAW_8K
    if value == "pcm":
        return AudioFormat("pcm16", default_rate)
    if value.startswith("pcm_") and value[4:].isdigit():
        return AudioFormat("pcm16", int(value[4:]))
    if value.startswith("raw-") and value.endswith("khz-16bit-mono-pcm"):
        khz = value[4:-len("khz-16bit-mono-pcm")]
        if khz.isdigit():
            return AudioFormat("pcm16", int(khz) * 1000)
    raise UnsupportedAudio(f"unsupported audio format {name!r} (use μ-law 8 kHz or PCM16)")


class TelephonyEncoder:
    """Provider audio (any supported format) → μ-law 8 kHz, chunk by chunk, with state kept.

    Call `flush()` once the provider's stream ends: MP3 is decoded only then (so `encode()` returns
    nothing for it), PCM16 gives the resampler's held-back tail, and μ-law gives b"".
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self._resampler: Resampler | None = None
        self._miniaudio = None
        if fmt.encoding == "mulaw":
            if fmt.sample_rate != SAMPLE_RATE:
                raise UnsupportedAudio(f"μ-law must be 8000 Hz (got {fmt.sample_rate})")
        elif fmt.encoding == "pcm16":
            self._resampler = Resampler(fmt.sample_rate, SAMPLE_RATE)
        elif fmt.encoding == "mp3":
            # imported here so the gateway runs without it when no provider speaks MP3
            try:
                import miniaudio
            except ImportError:
                raise UnsupportedAudio("mp3 audio needs the miniaudio package, which is not installed") from None
            self._miniaudio = miniaudio
        else:
            raise UnsupportedAudio(f"unsupported audio encoding {fmt.encoding!r}")
        self.format = fmt
        self._odd = b""  # a PCM16 sample split across chunks
        self._mp3 = bytearray()

    @property
    def costly(self) -> bool:
        """Whether encoding takes real CPU: MP3 decoding, tens of ms for a sentence. Resampling with
        soxr costs about 12 µs per 100 ms of audio, less than a hop to a worker thread."""
        return self._miniaudio is not None

    def encode(self, chunk: bytes) -> bytes:
        if self._miniaudio is not None:
            self._mp3 += chunk
            return b""
        if self._resampler is None:
            return chunk
        if self._odd or len(chunk) & 1:
            data = self._odd + chunk
            whole = len(data) & ~1
            self._odd = data[whole:]
            chunk = data[:whole]
        out = self._resampler.process(np.frombuffer(chunk, dtype=_PCM16).reshape(-1, 1))
        # soxr gives its output in bursts: most 20 ms chunks produce nothing
        return samples_to_ulaw(out) if out.size else b""

    def flush(self) -> bytes:
        """μ-law still held back at the end of the stream (the whole utterance for MP3)."""
        if self._resampler is not None:
            return samples_to_ulaw(self._resampler.flush())
        if self._miniaudio is None or not self._mp3:
            return b""
        data, self._mp3 = bytes(self._mp3), bytearray()
        try:
            # decoded at the stream's own rate so resampling goes through the same filter as PCM
            decoded = self._miniaudio.mp3_read_s16(data)
        except self._miniaudio.MiniaudioError as exc:
            raise UnsupportedAudio(f"cannot decode mp3 audio: {exc}") from None
        samples = np.frombuffer(decoded.samples, dtype=np.int16)
        if decoded.nchannels > 1:
            samples = samples.reshape(-1, decoded.nchannels).mean(axis=1).astype(np.int16)
        return samples_to_ulaw(Resampler(decoded.sample_rate, SAMPLE_RATE).convert(samples))


class TelephonyDecoder:
    """μ-law 8 kHz → PCM16 at `sample_rate` (what an STT engine or realtime model wants).

    Call `flush()` when the audio ends (an utterance, a call): it returns what the resampler holds back.
    """

    def __init__(self, sample_rate: int) -> None:
        self._resampler = Resampler(SAMPLE_RATE, sample_rate)

    def decode(self, ulaw: bytes) -> bytes:
        out = self._resampler.process(_ULAW_COLUMN.take(np.frombuffer(ulaw, dtype=np.uint8), axis=0))
        if not out.size:
            return b""
        return out.tobytes() if _NATIVE_IS_PCM16 else out.astype("<i2").tobytes()

    def flush(self) -> bytes:
        return self._resampler.flush().astype("<i2", copy=False).tobytes()


# --- framing and pacing ------------------------------------------------------------------------


class Framer:
    """Cuts a μ-law byte stream into 160-byte frames; the tail is padded with silence on flush."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def push(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % FRAME_BYTES
        for start in range(0, whole, FRAME_BYTES):
            yield bytes(self._buffer[start:start + FRAME_BYTES])
        del self._buffer[:whole]

    def flush(self) -> bytes | None:
        if not self._buffer:
            return None
        frame = bytes(self._buffer) + bytes([ULAW_SILENCE]) * (FRAME_BYTES - len(self._buffer))
        self._buffer.clear()
        return frame


class Pacer:
    """Releases one frame every 20 ms on an absolute clock: next due = previous due + 20 ms.

    Sleeping only when ahead means a late wake-up is made up by the next frames, so timing
    errors never add up over a long utterance.
    """

    def __init__(self, interval: float = FRAME_MS / 1000, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._due: float | None = None
        self.max_lag = 0.0

    def start(self) -> None:
        self._due = self.clock()

    def resync(self) -> None:
        """After a pause in the audio: never send early to make up for it (the due time only moves forward)."""
        now = self.clock()
        if self._due is None or self._due < now:
            self._due = now

    def time_to_next(self) -> float:
        """Seconds until the next frame is due (0 when it is due already, or the clock has not started)."""
        return 0.0 if self._due is None else max(0.0, self._due - self.clock())

    async def wait(self) -> float:
        """Wait until the next frame is due; returns how late (seconds) this frame is."""
        if self._due is None:
            self.start()
        now = self.clock()
        ahead = self._due - now
        if ahead > 0:
            await asyncio.sleep(ahead)
            now = self.clock()
        lag = max(0.0, now - self._due)
        self.max_lag = max(self.max_lag, lag)
        self._due += self.interval
        return lag


def duration_ms(ulaw_bytes: int) -> int:
    return ulaw_bytes // BYTES_PER_MS
