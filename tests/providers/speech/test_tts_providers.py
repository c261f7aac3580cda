"""Cloud TTS providers against local fakes of their HTTP APIs, the fallback chain, and MP3 decoding."""
from __future__ import annotations

import logging
import ssl
import sys
import time
import types
from typing import Any

import httpx
import numpy as np
import pytest

from core.audio import (
    MULAW_8K,
    ULAW_TO_PCM,
    AudioFormat,
    TelephonyEncoder,
    UnsupportedAudio,
    parse_format,
    ulaw_to_samples,
)
from providers import tls
from providers.tts.base import Synthesis, TtsChain, TtsError
from providers.tts.elevenlabs import ElevenLabsTts
from providers.tts.microsoft import MicrosoftTts
from providers.tts.openai import OpenAITts
from tests.fakes.ai.tts import TONE_HZ, FakeTts
from tests.paths import FIXTURES

MP3_FIXTURE = FIXTURES / "audio" / "tone_440hz_500ms_24k.mp3"
TOLERANCE_MS = 40
TEXT = "Hello, this is your appointment reminder."  # 41 characters → 1640 ms from the fake
CHAIN_LOGGER = "providers.tts.base"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def fake():
    with FakeTts() as server:
        yield server


def openai(fake: FakeTts, timeout_ms: int = 2000, **settings: Any) -> OpenAITts:
    return OpenAITts({"apiKey": fake.openai_key, "baseUrl": f"{fake.url}/v1", **settings},
                     environ={}, timeout_ms=timeout_ms)


def eleven(fake: FakeTts, timeout_ms: int = 2000, **settings: Any) -> ElevenLabsTts:
    return ElevenLabsTts({"apiKey": fake.elevenlabs_key, "baseUrl": fake.url, "voiceId": "voice-rachel", **settings},
                         environ={}, timeout_ms=timeout_ms)


async def collect(stream) -> list[bytes]:
    return [chunk async for chunk in stream]


async def to_ulaw(provider, text: str = TEXT, voice: str | None = None) -> tuple[bytes, int]:
    """Stream through TelephonyEncoder as playback would; returns (μ-law, number of provider chunks)."""
    encoder = TelephonyEncoder(provider.output_format())
    out, chunks = bytearray(), 0
    async for chunk in provider.stream(text, voice=voice):
        chunks += 1
        out += encoder.encode(chunk)
    out += encoder.flush()
    return bytes(out), chunks


def ulaw_ms(ulaw: bytes) -> float:
    return len(ulaw) / 8


def dominant_hz(ulaw: bytes) -> float:
    samples = ulaw_to_samples(ulaw).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / 8000)[np.argmax(spectrum)])


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CHAIN_LOGGER and r.levelno == logging.WARNING]


class FakeEdge:
    """Stands in for the edge_tts module: Communicate(...).stream() yields the MP3 fixture in pieces."""

    def __init__(self, data: bytes, *, pieces: int = 4, error: Exception | None = None) -> None:
        self.data, self.pieces, self.error = data, pieces, error
        self.calls: list[dict[str, Any]] = []
        fake = self

        class Communicate:
            def __init__(self, text: str, voice: str = "en-US-EmmaMultilingualNeural", **options: Any) -> None:
                fake.calls.append({"text": text, "voice": voice, **options})

            async def stream(self):
                yield {"type": "WordBoundary", "offset": 0, "duration": 100, "text": "Hello"}
                size = -(-len(fake.data) // fake.pieces) if fake.data else 1
                for start in range(0, len(fake.data), size):
                    yield {"type": "audio", "data": fake.data[start:start + size]}
                    if fake.error is not None:
                        raise fake.error

        self.module = types.ModuleType("edge_tts")
        self.module.Communicate = Communicate


@pytest.fixture
def edge(monkeypatch):
    stub = FakeEdge(MP3_FIXTURE.read_bytes())
    monkeypatch.setitem(sys.modules, "edge_tts", stub.module)
    return stub


# --------------------------------------------------------------------------- the fake itself


def test_fake_streams_chunked_and_refuses_bad_auth(fake):
    with httpx.Client(base_url=fake.url) as client:
        ok = client.post("/v1/audio/speech", headers={"Authorization": f"Bearer {fake.openai_key}"},
                         json={"model": "tts-1", "input": "abc", "voice": "alloy", "response_format": "pcm"})
        denied = client.post("/v1/text-to-speech/v/stream?output_format=ulaw_8000", json={"text": "abc"})
    assert ok.status_code == 200 and ok.headers["transfer-encoding"] == "chunked"
    assert ok.content == fake.pcm_for("abc") and len(ok.content) == 3 * 40 * 48
    assert denied.status_code == 401 and denied.json()["detail"]["status"] == "invalid_api_key"
    assert [r.status for r in fake.requests] == [200, 401]


# --------------------------------------------------------------------------- OpenAI


async def test_openai_request_is_exactly_what_the_api_expects(fake):
    provider = openai(fake, model="tts-1-hd", voice="sage", instructions="warm, brisk", speed=1.25)
    await collect(provider.stream(TEXT, voice="marin"))
    (request,) = fake.requests
    assert (request.method, request.path, request.query) == ("POST", "/v1/audio/speech", {})
    assert request.headers["authorization"] == f"Bearer {fake.openai_key}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {"model": "tts-1-hd", "input": TEXT, "voice": "marin", "response_format": "pcm",
                            "instructions": "warm, brisk", "speed": 1.25}


async def test_openai_defaults_and_key_from_environment(fake):
    provider = OpenAITts({"baseUrl": f"{fake.url}/v1/"}, environ={"OPENAI_API_KEY": fake.openai_key})
    assert provider.configured()
    await collect(provider.stream("Hi"))
    assert fake.requests[0].path == "/v1/audio/speech"  # trailing slash of baseUrl is not doubled
    assert fake.requests[0].json == {"model": "gpt-4o-mini-tts", "input": "Hi", "voice": "coral",
                                     "response_format": "pcm"}


async def test_openai_audio_arrives_in_chunks_and_becomes_ulaw_of_the_right_length(fake):
    provider = openai(fake)
    assert provider.output_format() == AudioFormat("pcm16", 24000)
    chunks = await collect(provider.stream(TEXT))
    assert len(chunks) >= 3  # streamed, not buffered into one piece
    assert b"".join(chunks) == fake.pcm_for(TEXT)
    ulaw, _ = await to_ulaw(provider)
    assert abs(ulaw_ms(ulaw) - fake.duration_ms(TEXT)) <= TOLERANCE_MS
    assert abs(dominant_hz(ulaw) - TONE_HZ) < 5


async def test_syntheses_reuse_one_tls_context_instead_of_loading_certificates_on_the_loop(fake, monkeypatch):
    """Loading a CA bundle takes ~20 ms; on the event loop that stalls every call's audio."""
    tls.warm()
    loads = []
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda self, *a, **k: loads.append(a) or real(self, *a, **k))
    provider = openai(fake)
    for _ in range(3):
        assert await collect(provider.stream(TEXT))
    assert len(fake.requests) == 3
    assert loads == []


async def test_openai_wrong_key_names_provider_status_and_message(fake):
    provider = OpenAITts({"apiKey": "sk-wrong", "baseUrl": f"{fake.url}/v1"}, environ={})
    with pytest.raises(TtsError) as caught:
        await collect(provider.stream(TEXT))
    message = str(caught.value)
    assert message.startswith("openai:") and "401" in message and "Incorrect API key provided." in message


async def test_openai_server_error(fake):
    fake.fail("openai", 500)
    with pytest.raises(TtsError, match=r"openai: HTTP 500: The server had an error"):
        await collect(openai(fake).stream(TEXT))


async def test_openai_rejected_body_reports_the_api_message(fake):
    with pytest.raises(TtsError, match=r"openai: HTTP 400: Invalid voice: 'robot'"):
        await collect(openai(fake).stream(TEXT, voice="robot"))


async def test_openai_timeout_when_the_server_stalls(fake):
    fake.stall("openai", after_chunks=0)
    started = time.monotonic()
    with pytest.raises(TtsError, match=r"openai: timed out after 300 ms"):
        await collect(openai(fake, timeout_ms=300).stream(TEXT))
    assert time.monotonic() - started < 2


async def test_openai_empty_audio_is_an_error(fake):
    fake.return_empty("openai")
    with pytest.raises(TtsError, match=r"openai: empty audio"):
        await collect(openai(fake).stream(TEXT))


async def test_openai_input_limit_is_checked_before_any_request(fake):
    fake.ms_per_char = 1  # keep the 4096-character answer small
    assert len(b"".join(await collect(openai(fake).stream("a" * 4096)))) == 4096 * 48
    with pytest.raises(TtsError, match=r"openai: input is 4097 characters"):
        await collect(openai(fake).stream("a" * 4097))
    assert len(fake.requests) == 1


async def test_openai_without_key_fails_before_any_request(fake):
    provider = OpenAITts({"baseUrl": f"{fake.url}/v1"}, environ={})
    assert not provider.configured()
    with pytest.raises(TtsError, match=r"openai: no API key.*OPENAI_API_KEY"):
        await collect(provider.stream(TEXT))
    assert fake.requests == []


async def test_openai_connection_refused_is_a_tts_error():
    with FakeTts() as gone:
        url = gone.url
    with pytest.raises(TtsError, match=r"openai: request failed before any audio: ConnectError"):
        await collect(OpenAITts({"apiKey": "k", "baseUrl": f"{url}/v1"}, environ={}, timeout_ms=1000).stream("Hi"))


# --------------------------------------------------------------------------- ElevenLabs


async def test_elevenlabs_request_is_exactly_what_the_api_expects(fake):
    provider = eleven(fake, modelId="eleven_multilingual_v2", seed=42, languageCode="en",
                      applyTextNormalization="on",
                      voiceSettings={"stability": 0.4, "similarityBoost": 0.8, "style": 0.1,
                                     "useSpeakerBoost": True, "speed": 1.1})
    await collect(provider.stream(TEXT))
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/text-to-speech/voice-rachel/stream")
    assert request.query == {"output_format": ["ulaw_8000"]}
    assert request.headers["xi-api-key"] == fake.elevenlabs_key and "authorization" not in request.headers
    assert request.json == {
        "text": TEXT, "model_id": "eleven_multilingual_v2", "seed": 42, "language_code": "en",
        "apply_text_normalization": "on",
        "voice_settings": {"stability": 0.4, "similarity_boost": 0.8, "style": 0.1, "use_speaker_boost": True,
                           "speed": 1.1},
    }


async def test_elevenlabs_voice_argument_wins_and_model_falls_back(fake):
    await collect(eleven(fake, model="eleven_turbo_v2_5").stream("Hi", voice="other voice/1"))
    await collect(ElevenLabsTts({"apiKey": fake.elevenlabs_key, "baseUrl": fake.url, "voice": "v2"},
                                environ={}).stream("Hi"))
    first, second = fake.requests
    assert first.path == "/v1/text-to-speech/other%20voice%2F1/stream"  # the id is one path segment
    assert first.json == {"text": "Hi", "model_id": "eleven_turbo_v2_5"}
    assert second.path == "/v1/text-to-speech/v2/stream"
    assert second.json == {"text": "Hi", "model_id": "eleven_flash_v2_5"}


async def test_elevenlabs_without_voice_fails_before_any_request(fake):
    provider = ElevenLabsTts({"apiKey": fake.elevenlabs_key, "baseUrl": fake.url}, environ={})
    with pytest.raises(TtsError, match=r"^elevenlabs: voiceId required$"):
        await collect(provider.stream(TEXT))
    assert fake.requests == []


async def test_elevenlabs_ulaw_passes_through_in_chunks(fake):
    provider = eleven(fake)
    assert provider.output_format() == MULAW_8K
    chunks = await collect(provider.stream(TEXT))
    assert len(chunks) >= 3
    assert b"".join(chunks) == fake.ulaw_for(TEXT)
    ulaw, _ = await to_ulaw(provider)
    assert abs(ulaw_ms(ulaw) - fake.duration_ms(TEXT)) <= TOLERANCE_MS
    assert abs(dominant_hz(ulaw) - TONE_HZ) < 5


async def test_elevenlabs_wrong_key_names_provider_status_and_message(fake):
    provider = ElevenLabsTts({"apiKey": "nope", "baseUrl": fake.url, "voiceId": "v"}, environ={})
    with pytest.raises(TtsError, match=r"^elevenlabs: HTTP 401: Invalid API key$"):
        await collect(provider.stream(TEXT))


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, None, r"elevenlabs: HTTP 500: Internal error \(500\)"),
    (503, {"detail": "Service overloaded"}, r"elevenlabs: HTTP 503: Service overloaded"),
    (422, {"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]},
     r"elevenlabs: HTTP 422: body.text: field required"),
    (502, b"<html>Bad gateway</html>", r"^elevenlabs: HTTP 502: <html>Bad gateway</html>$"),
])
async def test_elevenlabs_error_bodies(fake, status, body, expected):
    fake.fail("elevenlabs", status, body)
    with pytest.raises(TtsError, match=expected):
        await collect(eleven(fake).stream(TEXT))


async def test_elevenlabs_unknown_voice(fake):
    fake.voices = {"voice-rachel"}
    with pytest.raises(TtsError, match=r"HTTP 404: A voice with the voice_id ghost was not found"):
        await collect(eleven(fake).stream(TEXT, voice="ghost"))


async def test_elevenlabs_timeout_mid_stream(fake):
    fake.stall("elevenlabs", after_chunks=2)
    chunks: list[bytes] = []
    with pytest.raises(TtsError, match=r"elevenlabs: timed out after 300 ms \(1600 bytes received\)"):
        async for chunk in eleven(fake, timeout_ms=300).stream(TEXT):
            chunks.append(chunk)
    assert len(b"".join(chunks)) == 1600


async def test_elevenlabs_dropped_connection_mid_stream(fake):
    fake.drop_mid_stream("elevenlabs", after_chunks=3)
    with pytest.raises(TtsError, match=r"elevenlabs: request failed after 2400 bytes of audio"):
        await collect(eleven(fake).stream(TEXT))


async def test_elevenlabs_empty_audio_is_an_error(fake):
    fake.return_empty("elevenlabs")
    with pytest.raises(TtsError, match=r"elevenlabs: empty audio"):
        await collect(eleven(fake).stream(TEXT))


# --------------------------------------------------------------------------- the chain


async def test_chain_uses_the_first_provider_without_warning(fake, caplog):
    report = Synthesis()
    ulaw = b"".join([c async for c in TtsChain([openai(fake), eleven(fake)]).synthesize(TEXT, report=report)])
    assert abs(ulaw_ms(ulaw) - fake.duration_ms(TEXT)) <= TOLERANCE_MS
    assert (report.provider, report.failures) == ("openai", [])
    assert fake.requests_to("elevenlabs") == [] and fallback_warnings(caplog) == []


async def test_chain_falls_back_when_the_primary_fails_before_audio(fake, caplog):
    fake.fail("openai", 500)
    report = Synthesis()
    with caplog.at_level(logging.WARNING, logger=CHAIN_LOGGER):
        ulaw = b"".join([c async for c in TtsChain([openai(fake), eleven(fake)]).synthesize(TEXT, report=report)])
    assert ulaw == fake.ulaw_for(TEXT)
    assert report.provider == "elevenlabs"
    (warning,) = fallback_warnings(caplog)
    message = warning.getMessage()
    assert "from=openai" in message and "to=elevenlabs" in message
    assert "attempts=" in message and "HTTP 500" in message.split("attempts=", 1)[1]


async def test_chain_falls_back_after_a_timeout(fake, caplog):
    fake.stall("openai")
    with caplog.at_level(logging.WARNING, logger=CHAIN_LOGGER):
        ulaw = b"".join([c async for c in TtsChain([openai(fake, timeout_ms=300), eleven(fake)]).synthesize(TEXT)])
    assert len(ulaw) == fake.duration_ms(TEXT) * 8
    (warning,) = fallback_warnings(caplog)
    assert "timed out" in warning.getMessage()


async def test_chain_skips_microsoft_without_calling_it(fake, edge, caplog):
    report = Synthesis()
    chain = TtsChain([MicrosoftTts(), openai(fake)])
    with caplog.at_level(logging.WARNING, logger=CHAIN_LOGGER):
        ulaw = b"".join([c async for c in chain.synthesize(TEXT, report=report)])
    assert edge.calls == []
    assert abs(ulaw_ms(ulaw) - fake.duration_ms(TEXT)) <= TOLERANCE_MS
    assert report.provider == "openai"
    (warning,) = fallback_warnings(caplog)
    message = warning.getMessage()
    assert "from=microsoft" in message and "to=openai" in message and "attempts=microsoft" in message


async def test_chain_failure_mid_utterance_does_not_fall_back(fake, caplog):
    fake.drop_mid_stream("openai", after_chunks=2)
    received = bytearray()
    with caplog.at_level(logging.WARNING, logger=CHAIN_LOGGER):
        with pytest.raises(TtsError, match=r"openai failed mid-utterance"):
            async for chunk in TtsChain([openai(fake), eleven(fake)]).synthesize(TEXT):
                received += chunk
    assert 0 < len(received) < fake.duration_ms(TEXT) * 8
    assert fake.requests_to("elevenlabs") == []
    assert fallback_warnings(caplog) == []


async def test_chain_lists_every_failure_when_all_fail(fake, edge, caplog):
    fake.fail("openai", 500)
    fake.fail("elevenlabs", 503, {"detail": "Service overloaded"})
    chain = TtsChain([openai(fake), MicrosoftTts(), eleven(fake)])
    with pytest.raises(TtsError) as caught:
        async for _ in chain.synthesize(TEXT):
            pass
    message = str(caught.value)
    assert message.startswith("speech synthesis failed")
    for part in ("openai", "HTTP 500", "microsoft: no telephony output", "elevenlabs", "HTTP 503: Service overloaded"):
        assert part in message
    assert edge.calls == [] and fallback_warnings(caplog) == []


# --------------------------------------------------------------------------- Microsoft (edge-tts)


def test_microsoft_is_keyless_and_not_for_telephony():
    provider = MicrosoftTts()
    assert provider.configured() and provider.telephony is False
    assert provider.output_format() == AudioFormat("mp3", 24000)


async def test_microsoft_mp3_decodes_to_ulaw_of_the_right_duration(edge):
    import miniaudio

    expected_ms = miniaudio.mp3_get_info(MP3_FIXTURE.read_bytes()).duration * 1000
    assert 480 <= expected_ms <= 600  # a 0.5 s tone plus the encoder's priming and padding
    provider = MicrosoftTts({"voice": "en-GB-SoniaNeural", "rate": "+10%"})
    ulaw, chunks = await to_ulaw(provider, "Hello there", voice=None)
    assert chunks == 4  # audio items only; the boundary metadata is not audio
    assert edge.calls == [{"text": "Hello there", "voice": "en-GB-SoniaNeural", "rate": "+10%"}]
    assert abs(ulaw_ms(ulaw) - expected_ms) <= TOLERANCE_MS
    assert abs(dominant_hz(ulaw) - TONE_HZ) < 5


async def test_microsoft_without_edge_tts_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "edge_tts", None)  # makes `import edge_tts` raise ImportError
    with pytest.raises(TtsError) as caught:
        await collect(MicrosoftTts().stream("Hi"))
    assert str(caught.value) == "microsoft: the edge-tts package is not installed"


async def test_microsoft_stream_errors_and_empty_audio(edge):
    edge.error = ConnectionError("websocket closed")
    with pytest.raises(TtsError, match=r"microsoft: ConnectionError: websocket closed"):
        await collect(MicrosoftTts().stream("Hi", voice="en-US-AriaNeural"))
    assert edge.calls[-1]["voice"] == "en-US-AriaNeural"
    edge.error, edge.data = None, b""
    with pytest.raises(TtsError, match=r"microsoft: empty audio"):
        await collect(MicrosoftTts().stream("Hi"))


# --------------------------------------------------------------------------- formats and encoder


@pytest.mark.parametrize(("name", "expected"), [
    ("ulaw_8000", MULAW_8K),
    ("pcm", AudioFormat("pcm16", 24000)),
    (None, AudioFormat("pcm16", 24000)),
    ("pcm_22050", AudioFormat("pcm16", 22050)),
    ("raw-24khz-16bit-mono-pcm", AudioFormat("pcm16", 24000)),
])
def test_parse_format_for_provider_formats(name, expected):
    assert parse_format(name) == expected


@pytest.mark.parametrize("name", ["audio-24khz-48kbitrate-mono-mp3", "mp3_44100_128", "alaw_8000"])
def test_parse_format_refuses_other_configured_formats(name):
    # MP3 is decoded only for a provider that declares it; a configured output format stays μ-law/PCM
    with pytest.raises(UnsupportedAudio):
        parse_format(name)


def test_encoder_pcm_in_odd_sized_chunks_matches_one_piece_once_flushed():
    pcm = FakeTts().pcm_for("x" * 10)
    whole = TelephonyEncoder(AudioFormat("pcm16", 24000))
    pieces = TelephonyEncoder(AudioFormat("pcm16", 24000))
    reference = whole.encode(pcm) + whole.flush()
    chunked = b"".join(pieces.encode(pcm[i:i + 4801]) for i in range(0, len(pcm), 4801)) + pieces.flush()
    assert len(chunked) == len(reference) == 400 * 8
    # the resampler's ±1 LSB dither can tip a sample into the next μ-law step, rarely
    a = ULAW_TO_PCM[np.frombuffer(chunked, np.uint8)].astype(np.int32)
    b = ULAW_TO_PCM[np.frombuffer(reference, np.uint8)].astype(np.int32)
    assert np.count_nonzero(a != b) <= len(a) // 100
    # the tail is given once
    assert whole.flush() == b"" and pieces.flush() == b""
    mulaw = TelephonyEncoder(MULAW_8K)
    assert mulaw.encode(b"\x01\x02") == b"\x01\x02" and mulaw.flush() == b""


def test_encoder_mp3_holds_audio_until_flush():
    encoder = TelephonyEncoder(AudioFormat("mp3", 24000))
    data = MP3_FIXTURE.read_bytes()
    assert encoder.encode(data[:1000]) == b"" and encoder.encode(data[1000:]) == b""
    ulaw = encoder.flush()
    assert 480 <= ulaw_ms(ulaw) <= 600
    assert encoder.flush() == b""  # nothing is played twice


def test_encoder_mp3_that_does_not_decode():
    encoder = TelephonyEncoder(AudioFormat("mp3", 24000))
    encoder.encode(b"this is not an mp3 stream" * 40)
    with pytest.raises(UnsupportedAudio, match="cannot decode mp3"):
        encoder.flush()


def test_encoder_mp3_without_miniaudio_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "miniaudio", None)
    with pytest.raises(UnsupportedAudio, match="miniaudio"):
        TelephonyEncoder(AudioFormat("mp3", 24000))
    TelephonyEncoder(AudioFormat("pcm16", 16000))  # the other formats do not need it


class _Scripted:
    """A provider yielding fixed chunks in a given format (only what the chain uses)."""

    name = "scripted"
    telephony = True

    def __init__(self, fmt: AudioFormat, chunks: list[bytes]) -> None:
        self.fmt, self.chunks = fmt, chunks

    def output_format(self) -> AudioFormat:
        return self.fmt

    async def stream(self, text, *, voice=None):
        for chunk in self.chunks:
            yield chunk


def test_encoder_cost_by_format():
    assert not TelephonyEncoder(AudioFormat("pcm16", 24000)).costly  # soxr: microseconds per chunk
    assert TelephonyEncoder(AudioFormat("mp3", 24000)).costly
    assert not TelephonyEncoder(MULAW_8K).costly
    assert not TelephonyEncoder(AudioFormat("pcm16", 8000)).costly  # no resampling, only μ-law


@pytest.mark.parametrize("fmt, chunks, off_loop", [
    (AudioFormat("pcm16", 24000), [FakeTts().pcm_for("x" * 10)] * 2, False),
    (AudioFormat("mp3", 24000), [MP3_FIXTURE.read_bytes()], True),
    (MULAW_8K, [b"\x01" * 160, b"\x02" * 160], False),
])
async def test_the_chain_resamples_and_decodes_off_the_event_loop(monkeypatch, fmt, chunks, off_loop):
    import threading

    threads: set[int] = set()
    encode, flush = TelephonyEncoder.encode, TelephonyEncoder.flush

    def recording(method):
        def run(self, *args):
            threads.add(threading.get_ident())
            return method(self, *args)
        return run

    monkeypatch.setattr(TelephonyEncoder, "encode", recording(encode))
    monkeypatch.setattr(TelephonyEncoder, "flush", recording(flush))
    ulaw = b"".join([c async for c in TtsChain([_Scripted(fmt, chunks)]).synthesize(TEXT)])
    assert ulaw  # the same audio as before, wherever it was encoded
    assert (threading.get_ident() not in threads) is off_loop
