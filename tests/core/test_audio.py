"""Telephony audio (core/audio.py): G.711 μ-law, the streaming resampler, formats, framing, pacing.

The resampler's promise is the important one: feeding a signal in pieces (20 ms frames, odd
sizes, single samples) gives the same samples as feeding it whole, because the filter state is
carried across chunks (docs/compatibility.md, Playback and pacing); and once flushed at the end
of a stream, nothing it held back is lost.
"""
from __future__ import annotations

import math
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import audio
from core.audio import (
    FRAME_BYTES,
    MULAW_8K,
    PCM_TO_ULAW,
    SILENCE_FRAME,
    ULAW_TO_PCM,
    AudioFormat,
    Framer,
    Pacer,
    Resampler,
    TelephonyDecoder,
    TelephonyEncoder,
    UnsupportedAudio,
    duration_ms,
    parse_format,
    pcm16_to_ulaw,
    rms,
    samples_to_ulaw,
    ulaw_to_pcm16,
    ulaw_to_samples,
)

RATE_PAIRS = [(24000, 8000), (22050, 8000), (16000, 8000), (44100, 8000), (8000, 16000), (8000, 24000)]
DOWN_PAIRS = [pair for pair in RATE_PAIRS if pair[1] < pair[0]]
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
# soxr adds ±1 LSB of triangular dither as it rounds to int16, and which samples get it depends on
# where the chunks fall: pieces and whole agree within 2 LSB (μ-law's finest step is 8).
DITHER_LSB = 2


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def steady_rms(samples: np.ndarray) -> float:
    """RMS of the middle half (skips the filter's start-up and end)."""
    quarter = samples.size // 4
    return rms(samples[quarter:-quarter])


def resample_whole(src: int, dst: int, signal: np.ndarray) -> np.ndarray:
    return Resampler(src, dst).convert(signal)


def resample_chunked(src: int, dst: int, signal: np.ndarray, sizes) -> np.ndarray:
    resampler = Resampler(src, dst)
    pieces, start = [], 0
    for size in sizes:
        if start >= signal.size:
            break
        pieces.append(resampler.process(signal[start:start + size]))
        start += size
    if start < signal.size:
        pieces.append(resampler.process(signal[start:]))
    pieces.append(resampler.flush())
    return np.concatenate(pieces)


# --- μ-law -------------------------------------------------------------------------------------


def test_decode_table_is_the_g711_standard_for_all_256_codes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert ULAW_TO_PCM.dtype == np.int16 and ULAW_TO_PCM.shape == (256,)
    assert np.array_equal(ULAW_TO_PCM, reference)
    # the well-known anchors of the table
    assert ULAW_TO_PCM[0xFF] == 0 and ULAW_TO_PCM[0x7F] == 0
    assert ULAW_TO_PCM[0x00] == -32124 and ULAW_TO_PCM[0x80] == 32124
    assert ulaw_to_pcm16(bytes(range(256))) == reference.astype("<i2").tobytes()
    assert np.array_equal(ulaw_to_samples(bytes(range(256))), reference)


def test_encode_of_decode_is_identity_except_negative_zero():
    encoded = np.frombuffer(samples_to_ulaw(ULAW_TO_PCM), dtype=np.uint8)
    mismatches = {code: int(encoded[code]) for code in range(256) if encoded[code] != code}
    # 0x7F is "negative zero": it decodes to 0, which encodes as the positive zero 0xFF.
    assert mismatches == {0x7F: 0xFF}


def test_silence_encodes_to_0xff():
    assert pcm16_to_ulaw(b"\x00\x00" * 4) == b"\xff" * 4
    assert SILENCE_FRAME == b"\xff" * FRAME_BYTES
    assert rms(ulaw_to_samples(SILENCE_FRAME)) == 0.0


def test_encode_table_covers_every_16_bit_sample_and_is_monotonic():
    assert PCM_TO_ULAW.shape == (65536,)
    decoded = ULAW_TO_PCM[np.frombuffer(samples_to_ulaw(ALL_SAMPLES), dtype=np.uint8)].astype(np.int32)
    # quantization never reverses order
    assert np.all(np.diff(decoded) >= 0)
    # and is symmetric: -x encodes to the mirror of x
    positive = np.arange(1, 32768, dtype=np.int16)
    pos_codes = np.frombuffer(samples_to_ulaw(positive), dtype=np.uint8)
    neg_codes = np.frombuffer(samples_to_ulaw(-positive), dtype=np.uint8)
    assert np.array_equal(pos_codes ^ 0x80, neg_codes)


def test_encode_error_is_bounded():
    decoded = ULAW_TO_PCM[np.frombuffer(samples_to_ulaw(ALL_SAMPLES), dtype=np.uint8)].astype(np.float64)
    x = ALL_SAMPLES.astype(np.float64)
    inside = (np.abs(x) > 100) & (np.abs(x) <= 32635)
    relative = np.abs(decoded[inside] - x[inside]) / np.abs(x[inside])
    assert relative.max() < 0.07
    # small samples: the first segment is 8 units wide, so the error is a few units at most
    small = np.abs(x) <= 100
    assert np.abs(decoded[small] - x[small]).max() <= 8


def test_clipping_at_32635():
    top = samples_to_ulaw(np.array([32635], dtype=np.int16))
    bottom = samples_to_ulaw(np.array([-32635], dtype=np.int16))
    for value in (32636, 32700, 32767):
        assert samples_to_ulaw(np.array([value], dtype=np.int16)) == top
    for value in (-32636, -32700, -32768):
        assert samples_to_ulaw(np.array([value], dtype=np.int16)) == bottom
    assert ULAW_TO_PCM[top[0]] == 32124 and ULAW_TO_PCM[bottom[0]] == -32124
    assert top == b"\x80" and bottom == b"\x00"


# --- resampler ---------------------------------------------------------------------------------


# Upsampling (8000 → 16000 / 24000, what TelephonyDecoder feeds STT) once differed at every seam
# from feeding whole and came out short; these pairs are checked on their own.
UP_PAIRS = [pair for pair in RATE_PAIRS if pair[1] > pair[0]]


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_resampled_length_matches_the_ratio(src, dst):
    for seconds in (1.0, 0.02, 0.5):
        n = int(src * seconds)
        out = resample_whole(src, dst, np.zeros(n, dtype=np.int16))
        assert abs(out.size - n * dst / src) <= 1, (seconds, out.size, n * dst / src)


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_resampled_length_never_drifts_over_a_long_stream(src, dst):
    """Fed in 20 ms chunks for 10 s, what is held back stays bounded and the flushed total is input × ratio."""
    resampler = Resampler(src, dst)
    chunk = np.zeros(src * 20 // 1000, dtype=np.int16)
    total, worst_held = 0, 0.0
    for count in range(1, 501):
        total += resampler.process(chunk).size
        worst_held = max(worst_held, count * chunk.size * dst / src - total)
    # a live path: never more than 200 ms of audio waiting inside the resampler
    assert worst_held <= dst // 5, worst_held
    total += resampler.flush().size
    assert abs(total - 500 * chunk.size * dst / src) <= 1


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_a_440_hz_tone_keeps_its_amplitude(src, dst):
    signal = tone(440, src)
    out = resample_whole(src, dst, signal)
    ratio = steady_rms(out) / steady_rms(signal)
    assert abs(ratio - 1) < 0.02, ratio
    # and its frequency: count sign changes over the steady part (a sample of exactly 0, where
    # the output lands on a zero crossing, is skipped so it does not count twice)
    mid = out[out.size // 4: -out.size // 4].astype(np.int32)
    signs = np.sign(mid[mid != 0])
    crossings = np.count_nonzero(np.diff(signs) != 0)
    seconds = mid.size / dst
    assert abs(crossings / (2 * seconds) - 440) < 5


@pytest.mark.parametrize("src,dst", DOWN_PAIRS)
def test_a_tone_above_the_target_nyquist_is_attenuated(src, dst):
    for freq in (dst / 2 * 1.1, dst / 2 * 1.5, min(src / 2 * 0.9, dst * 1.3)):
        signal = tone(freq, src)
        out = resample_whole(src, dst, signal)
        attenuation_db = 20 * math.log10(max(steady_rms(out), 1e-9) / steady_rms(signal))
        assert attenuation_db < -30, (freq, attenuation_db)


def loud(rate: int, seed: int) -> np.ndarray:
    """Full-scale noise: any sample the filter reads wrongly shows up as more than 1 LSB."""
    return np.random.default_rng(seed).choice(np.array([-32000, 32000], dtype=np.int16), size=rate)


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_feeding_20_ms_chunks_equals_feeding_at_once(src, dst):
    signal = loud(src, 7)
    whole = resample_whole(src, dst, signal)
    step = src * 20 // 1000
    chunked = resample_chunked(src, dst, signal, [step] * (signal.size // step + 1))
    assert chunked.size == whole.size
    assert np.abs(chunked.astype(np.int32) - whole.astype(np.int32)).max() <= DITHER_LSB


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_feeding_random_odd_chunks_equals_feeding_at_once(src, dst):
    rng = np.random.default_rng(src + dst)
    signal = loud(src, src + dst)[: src // 2]
    whole = resample_whole(src, dst, signal)
    sizes = [int(rng.integers(0, 300)) * 2 + 1 for _ in range(signal.size)]  # odd sizes, 1 .. 599
    chunked = resample_chunked(src, dst, signal, sizes)
    assert chunked.size == whole.size
    assert np.abs(chunked.astype(np.int32) - whole.astype(np.int32)).max() <= DITHER_LSB


def test_single_sample_chunks_and_empty_chunks_keep_state():
    rng = np.random.default_rng(3)
    signal = rng.normal(0, 5000, 1200).astype(np.int16)
    whole = resample_whole(24000, 8000, signal)
    resampler = Resampler(24000, 8000)
    pieces = []
    for value in signal:
        pieces.append(resampler.process(np.zeros(0, dtype=np.int16)))
        pieces.append(resampler.process(np.array([value], dtype=np.int16)))
    pieces.append(resampler.flush())
    chunked = np.concatenate(pieces)
    assert chunked.size == whole.size
    assert np.abs(chunked.astype(np.int32) - whole.astype(np.int32)).max() <= DITHER_LSB


def test_a_20_ms_tone_chunk_upsampled_matches_whole_within_the_dither():
    """The everyday case (a quiet-ish 440 Hz tone, 8 kHz → 16 kHz) differs by no more than the dither."""
    signal = tone(440, 8000, 0.5, amplitude=8000)
    whole = resample_whole(8000, 16000, signal)
    chunked = resample_chunked(8000, 16000, signal, [160] * 25)
    assert np.abs(chunked.astype(np.int32) - whole.astype(np.int32)).max() <= DITHER_LSB


def test_chunk_boundaries_do_not_click():
    """A continuous tone in 20 ms pieces has no jump at the seams bigger than inside a piece."""
    src, dst = 24000, 8000
    signal = tone(440, src, 0.5)
    resampler = Resampler(src, dst)
    out = np.concatenate([resampler.process(signal[i:i + 480]) for i in range(0, signal.size, 480)])
    steps = np.abs(np.diff(out[100:].astype(np.int32)))
    # 440 Hz at 10000 amplitude changes by at most 2π·440/8000·10000 ≈ 3456 per sample
    assert steps.max() < 3600


def test_identity_and_invalid_rates():
    signal = np.arange(-50, 50, dtype=np.int16)
    identity = Resampler(8000, 8000)
    assert np.array_equal(identity.process(signal), signal)
    assert identity.flush().size == 0
    for src, dst in ((0, 8000), (8000, 0), (-1, 8000)):
        with pytest.raises(UnsupportedAudio):
            Resampler(src, dst)


def test_loud_input_saturates_instead_of_wrapping():
    square = np.tile(np.array([32767] * 30 + [-32768] * 30, dtype=np.int16), 200)
    out = resample_whole(24000, 8000, square)
    # Gibbs overshoot would exceed int16; it must be clipped, not wrapped around.
    assert out.max() == 32767 and out.min() == -32768
    signs = np.sign(out[50:-50].astype(np.int32))
    flips = np.count_nonzero(np.diff(signs) != 0)
    assert flips < out.size / 5  # a wrapped sample would flip the sign far more often


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    middle = samples[samples.size // 4: -samples.size // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
    return float(np.fft.rfftfreq(middle.size, 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("src,dst", RATE_PAIRS)
def test_flush_drains_the_tail_so_the_last_sound_is_not_lost(src, dst):
    """A click 5 ms before the end is still inside the resampler after the last chunk; flush
    returns it, in its place, and the stream comes out at full length."""
    signal = np.zeros(src // 2, dtype=np.int16)
    at = signal.size - src // 200
    signal[at] = 30000
    resampler = Resampler(src, dst)
    step = src * 20 // 1000
    head = np.concatenate([resampler.process(signal[i:i + step]) for i in range(0, signal.size, step)])
    tail = resampler.flush()
    out = np.concatenate((head, tail))
    assert abs(out.size - signal.size * dst / src) <= 1
    peak = int(np.argmax(np.abs(out.astype(np.int32))))
    assert peak >= head.size
    assert abs(peak - at * dst / src) <= 1
    assert resampler.flush().size == 0


def test_a_column_of_samples_resamples_like_a_row():
    """The per-frame paths hand soxr an (n, 1) column; it must give the same audio, as a column."""
    signal = loud(24000, 9)[:4800]
    row = Resampler(24000, 8000)
    column = Resampler(24000, 8000)
    out_row = np.concatenate([row.process(signal[i:i + 480]) for i in range(0, signal.size, 480)] + [row.flush()])
    pieces = [column.process(signal[i:i + 480].reshape(-1, 1)) for i in range(0, signal.size, 480)]
    assert all(piece.ndim == 2 and piece.shape[1] == 1 for piece in pieces)
    out_column = np.concatenate([piece.ravel() for piece in pieces] + [column.flush()])
    assert out_column.size == out_row.size == 1600
    assert np.abs(out_column.astype(np.int32) - out_row.astype(np.int32)).max() <= DITHER_LSB


def test_after_flush_the_resampler_starts_a_new_stream():
    signal = loud(8000, 5)[:1600]
    resampler = Resampler(8000, 16000)
    first = resampler.convert(signal)
    second = resampler.convert(signal)
    assert first.size == second.size == 3200
    assert np.abs(second.astype(np.int32) - first.astype(np.int32)).max() <= DITHER_LSB


def test_a_1_khz_tone_survives_the_telephone_round_trip():
    """μ-law 8 kHz → PCM16 16 kHz (what STT hears) → μ-law 8 kHz, in 20 ms frames both ways:
    the tone keeps its frequency and level, nothing is imaged above 4 kHz, and the only noise
    left is μ-law's own."""
    original = tone(1000, 8000)
    ulaw = samples_to_ulaw(original)
    decoder = TelephonyDecoder(16000)
    wide_pcm = b"".join(decoder.decode(ulaw[i:i + 160]) for i in range(0, len(ulaw), 160)) + decoder.flush()
    encoder = TelephonyEncoder(AudioFormat("pcm16", 16000))
    back = b"".join(encoder.encode(wide_pcm[i:i + 640]) for i in range(0, len(wide_pcm), 640)) + encoder.flush()
    assert len(wide_pcm) == 4 * len(ulaw) and len(back) == len(ulaw)

    wide = np.frombuffer(wide_pcm, "<i2")
    assert dominant_frequency(wide, 16000) == pytest.approx(1000, abs=2)
    assert abs(steady_rms(wide) / steady_rms(original) - 1) < 0.02
    middle = wide[wide.size // 4: -wide.size // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size))) ** 2
    freqs = np.fft.rfftfreq(middle.size, 1 / 16000)
    assert 10 * np.log10(spectrum[freqs > 4200].sum() / spectrum.sum()) < -60

    narrow = ulaw_to_samples(back).astype(np.float64)[2000:-2000]
    reference = original.astype(np.float64)[2000:-2000]
    snr_db = 10 * np.log10(np.sum(reference ** 2) / np.sum((narrow - reference) ** 2))
    assert snr_db > 30, snr_db


def _check_chunked_equals_whole(src, dst, signal, sizes):
    whole = resample_whole(src, dst, signal)
    chunked = resample_chunked(src, dst, signal, sizes)
    assert chunked.size == whole.size
    if whole.size:
        assert np.abs(chunked.astype(np.int32) - whole.astype(np.int32)).max() <= DITHER_LSB


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(DOWN_PAIRS + [(24000, 16000), (8000, 8000)]),
    length=st.integers(min_value=0, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**31),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=40),
)
def test_property_chunked_resampling_equals_whole(pair, length, seed, sizes):
    src, dst = pair
    signal = np.random.default_rng(seed).normal(0, 8000, length).clip(-32768, 32767).astype(np.int16)
    _check_chunked_equals_whole(src, dst, signal, sizes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(UP_PAIRS + [(16000, 24000), (8000, 22050)]),
    length=st.integers(min_value=0, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**31),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=40),
)
def test_property_chunked_upsampling_equals_whole(pair, length, seed, sizes):
    src, dst = pair
    signal = np.random.default_rng(seed).normal(0, 8000, length).clip(-32768, 32767).astype(np.int16)
    _check_chunked_equals_whole(src, dst, signal, sizes)


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    ("ulaw_8000", MULAW_8K),
    ("mulaw", MULAW_8K),
    ("ulaw", MULAW_8K),
    ("PCMU", MULAW_8K),
    ("raw-8khz-8bit-mono-mulaw", MULAW_8K),
    ("audio/pcmu", MULAW_8K),
    ("audio/x-mulaw", MULAW_8K),
    ("  Ulaw_8000 ", MULAW_8K),
    (None, AudioFormat("pcm16", 24000)),
    ("", AudioFormat("pcm16", 24000)),
    ("pcm", AudioFormat("pcm16", 24000)),
    ("pcm_16000", AudioFormat("pcm16", 16000)),
    ("PCM_22050", AudioFormat("pcm16", 22050)),
    ("pcm_44100", AudioFormat("pcm16", 44100)),
    ("raw-16khz-16bit-mono-pcm", AudioFormat("pcm16", 16000)),
    ("raw-24khz-16bit-mono-pcm", AudioFormat("pcm16", 24000)),
])
def test_parse_format_accepts(name, expected):
    assert parse_format(name) == expected


def test_parse_format_default_rate():
    assert parse_format(None, default_rate=22050) == AudioFormat("pcm16", 22050)
    assert parse_format("pcm", default_rate=16000) == AudioFormat("pcm16", 16000)
    assert str(parse_format("pcm_16000")) == "pcm16@16000"


@pytest.mark.parametrize("name", [
    "mp3_44100_128", "opus", "ogg", "wav", "pcm_", "pcm_abc", "pcm_16k", "raw-16khz-8bit-mono-pcm",
    "raw-khz-16bit-mono-pcm", "raw-xkhz-16bit-mono-pcm", "ulaw_16000", "alaw_8000", "audio/x-l16",
])
def test_parse_format_refuses(name):
    with pytest.raises(UnsupportedAudio, match="unsupported audio format"):
        parse_format(name)


def test_encoder_passes_mulaw_through_and_refuses_other_formats():
    encoder = TelephonyEncoder(MULAW_8K)
    assert encoder.encode(b"\x01\x02\x03") == b"\x01\x02\x03"
    assert encoder.flush() == b""
    with pytest.raises(UnsupportedAudio):
        TelephonyEncoder(AudioFormat("mulaw", 16000))
    with pytest.raises(UnsupportedAudio):
        TelephonyEncoder(AudioFormat("flac", 16000))
    with pytest.raises(UnsupportedAudio):
        TelephonyEncoder(AudioFormat("pcm16", 0))


def test_encoder_handles_odd_byte_pcm16_chunks():
    rng = np.random.default_rng(11)
    signal = (tone(300, 24000, 0.5) + rng.normal(0, 500, 12000)).clip(-32768, 32767).astype("<i2")
    data = signal.tobytes()
    one_piece = TelephonyEncoder(AudioFormat("pcm16", 24000))
    whole = one_piece.encode(data) + one_piece.flush()
    encoder = TelephonyEncoder(AudioFormat("pcm16", 24000))
    pieces, start = [], 0
    while start < len(data):
        size = int(rng.integers(1, 200)) | 1  # always odd: a sample is split between chunks
        pieces.append(encoder.encode(data[start:start + size]))
        start += size
    pieces.append(encoder.flush())
    chunked = b"".join(pieces)
    assert len(chunked) == len(whole) == 4000
    a = ULAW_TO_PCM[np.frombuffer(chunked, np.uint8)].astype(np.int32)
    b = ULAW_TO_PCM[np.frombuffer(whole, np.uint8)].astype(np.int32)
    # ±1 LSB before μ-law can move one quantization step after it
    assert np.count_nonzero(a != b) <= len(a) // 100
    assert encoder.flush() == b""  # the tail was given once


def test_encoder_single_byte_chunks_never_lose_a_sample():
    encoder = TelephonyEncoder(AudioFormat("pcm16", 8000))
    data = np.arange(-800, 800, 10, dtype="<i2").tobytes()
    out = b"".join(encoder.encode(data[i:i + 1]) for i in range(len(data)))
    assert out == pcm16_to_ulaw(data)


def test_encoder_pcm16_at_8k_is_plain_mulaw():
    samples = np.array([0, 1000, -1000, 32767, -32768], dtype="<i2").tobytes()
    assert TelephonyEncoder(AudioFormat("pcm16", 8000)).encode(samples) == pcm16_to_ulaw(samples)


def test_encoder_mp3_is_decoded_on_flush_only():
    pytest.importorskip("miniaudio")
    encoder = TelephonyEncoder(AudioFormat("mp3", 44100))
    assert encoder.encode(b"not really mp3 data") == b""
    with pytest.raises(UnsupportedAudio, match="mp3"):
        encoder.flush()
    assert TelephonyEncoder(AudioFormat("mp3", 44100)).flush() == b""


def test_decoder_upsamples_telephony_audio():
    ulaw = samples_to_ulaw(tone(440, 8000, 0.5))
    one_piece = TelephonyDecoder(16000)
    pcm = one_piece.decode(ulaw) + one_piece.flush()
    samples = np.frombuffer(pcm, dtype="<i2")
    assert abs(samples.size - 8000) <= 1
    assert abs(steady_rms(samples) / steady_rms(tone(440, 8000, 0.5)) - 1) < 0.03
    # chunked decode equals whole decode
    decoder = TelephonyDecoder(16000)
    chunked = b"".join(decoder.decode(ulaw[i:i + 160]) for i in range(0, len(ulaw), 160)) + decoder.flush()
    assert len(chunked) == len(pcm)
    assert np.abs(np.frombuffer(chunked, "<i2").astype(np.int32) - samples.astype(np.int32)).max() <= DITHER_LSB
    identity = TelephonyDecoder(8000)
    assert identity.decode(ulaw) == ulaw_to_pcm16(ulaw) and identity.flush() == b""


# --- framing -----------------------------------------------------------------------------------


def test_framer_cuts_exact_frames():
    framer = Framer()
    assert list(framer.push(b"\x01" * 100)) == []
    frames = list(framer.push(b"\x02" * 300))
    assert frames == [b"\x01" * 100 + b"\x02" * 60, b"\x02" * 160]
    assert list(framer.push(b"\x03" * 250)) == [b"\x02" * 80 + b"\x03" * 80, b"\x03" * 160]
    assert framer.flush() == b"\x03" * 10 + b"\xff" * 150
    assert framer.flush() is None


def test_framer_flush_pads_with_silence():
    framer = Framer()
    assert list(framer.push(b"\x10" * 170)) == [b"\x10" * 160]
    tail = framer.flush()
    assert tail == b"\x10" * 10 + b"\xff" * 150 and len(tail) == FRAME_BYTES
    assert framer.flush() is None
    assert Framer().flush() is None


def test_framer_many_small_pushes():
    framer = Framer()
    data = bytes(range(256)) * 10 + b"\x42" * 33  # 2593 bytes: 16 frames and a 33-byte tail
    frames = []
    for i in range(0, len(data), 7):
        frames.extend(framer.push(data[i:i + 7]))
    tail = framer.flush()
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) == 16 and tail == b"\x42" * 33 + b"\xff" * 127
    assert b"".join(frames) + tail[: len(data) % FRAME_BYTES] == data
    assert duration_ms(FRAME_BYTES) == 20 and duration_ms(8000) == 1000


# --- pacing ------------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when the pacer sleeps (plus optional oversleep)."""

    def __init__(self, start: float = 1000.0, oversleep=None) -> None:
        self.now = start
        self.oversleep = oversleep or (lambda: 0.0)
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float, *args) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.oversleep()


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    # Only the pacer's view of asyncio is replaced, not the event loop's.
    monkeypatch.setattr(audio, "asyncio", SimpleNamespace(sleep=clock.sleep))
    return clock


async def test_pacer_due_times_advance_by_exactly_20_ms(fake_clock):
    pacer = Pacer(clock=fake_clock)
    pacer.start()
    start = fake_clock.now
    released = []
    for _ in range(50):
        lag = await pacer.wait()
        assert lag == 0.0
        released.append(fake_clock.now - start)
    assert released == pytest.approx([i * 0.02 for i in range(50)], abs=1e-9)
    assert pacer.max_lag == 0.0


async def test_pacer_first_wait_starts_the_clock(fake_clock):
    pacer = Pacer(clock=fake_clock)
    start = fake_clock.now
    assert await pacer.wait() == 0.0  # the first frame is due at once
    assert fake_clock.now == start and fake_clock.sleeps == []
    await pacer.wait()
    assert fake_clock.now - start == pytest.approx(0.02)


async def test_pacer_schedule_is_independent_of_when_wait_is_called(fake_clock):
    pacer = Pacer(clock=fake_clock)
    pacer.start()
    start = fake_clock.now
    await pacer.wait()  # frame 0 at t=0
    fake_clock.now += 0.005  # caller works 5 ms before the next wait
    await pacer.wait()  # frame 1 still at t=20 ms
    assert fake_clock.now - start == pytest.approx(0.020)
    fake_clock.now += 0.019  # 19 ms of work: still 1 ms early
    await pacer.wait()
    assert fake_clock.now - start == pytest.approx(0.040)
    assert fake_clock.sleeps[-1] == pytest.approx(0.001)


async def test_pacer_reports_lag_and_catches_up_without_sleeping(fake_clock):
    pacer = Pacer(clock=fake_clock)
    pacer.start()
    start = fake_clock.now
    await pacer.wait()
    fake_clock.now += 0.075  # a stall: frames at 20, 40, 60 ms are late
    sleeps_before = len(fake_clock.sleeps)
    lags = [await pacer.wait() for _ in range(3)]
    assert lags == pytest.approx([0.055, 0.035, 0.015])
    assert len(fake_clock.sleeps) == sleeps_before  # behind schedule: no sleeping
    assert pacer.max_lag == pytest.approx(0.055)
    # back on the original grid: the frame due at 80 ms is released at 80 ms, not 75 + 20
    assert await pacer.wait() == 0.0
    assert fake_clock.now - start == pytest.approx(0.080)


async def test_pacer_does_not_drift_over_1000_frames(monkeypatch):
    rng = np.random.default_rng(5)
    clock = FakeClock(oversleep=lambda: float(rng.uniform(0, 0.004)))  # every wake-up up to 4 ms late
    monkeypatch.setattr(audio, "asyncio", SimpleNamespace(sleep=clock.sleep))
    pacer = Pacer(clock=clock)
    pacer.start()
    start = clock.now
    errors = []
    for i in range(1000):
        lag = await pacer.wait()
        error = (clock.now - start) - i * 0.02
        errors.append(error)
        assert error == pytest.approx(lag, abs=1e-9)
    errors = np.asarray(errors)
    assert errors.min() >= -1e-9  # never early
    assert errors.max() < 0.0041  # lateness is bounded by one wake-up's lateness: it never adds up
    assert abs(errors[-100:].mean() - errors[:100].mean()) < 0.001
    assert pacer.max_lag == pytest.approx(errors.max())


async def test_pacer_with_real_sleeps_is_never_early_and_reports_its_lateness():
    # How late a loaded machine wakes a sleeper is not the pacer's to bound (drift is tested on the
    # fake clock above); with real sleeps it must still never release a frame early, and the lag it
    # reports must be the frame's real lateness.
    pacer = Pacer()
    pacer.start()
    start = time.monotonic()
    for i in range(25):
        lag = await pacer.wait()
        error = time.monotonic() - start - i * 0.02
        assert error >= -0.001
        assert error >= lag - 0.001


async def test_pacer_interval_is_configurable(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(audio, "asyncio", SimpleNamespace(sleep=clock.sleep))
    pacer = Pacer(0.01, clock=clock)
    pacer.start()
    for _ in range(3):
        await pacer.wait()
    assert clock.now - 1000.0 == pytest.approx(0.02)
