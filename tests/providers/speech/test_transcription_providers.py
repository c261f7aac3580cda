"""The cloud streaming transcription clients against loopback fakes of their protocols, and the energy VAD."""
from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from core.audio import FRAME_BYTES, SILENCE_FRAME, samples_to_ulaw
from providers.transcription import base
from providers.transcription.base import MAX_RECONNECTS, TranscriptionError, TranscriptionProvider
from providers.transcription.deepgram import DeepgramSession, DeepgramTranscription
from providers.transcription.elevenlabs import ElevenLabsTranscription
from providers.transcription.mistral import MAX_APPEND_BYTES, MistralTranscription
from providers.transcription.openai import OpenAITranscription
from providers.transcription.vad import EnergyVad
from providers.transcription.xai import XaiTranscription
from tests.providers.speech.listener import Recorder
from tests.waiting import await_stays, await_until, forever
from tests.fakes.ai import FakeDeepgram, FakeElevenLabs, FakeMistral, FakeOpenAITranscription, FakeStt, FakeXai

KEY = "test-key"
SAID = "hello there how are you"


# --- audio and a recording listener ---------------------------------------------------------------


def tone(ms: int = 600, hz: float = 300.0, amplitude: float = 8000.0) -> list[bytes]:
    """A sine tone as 20 ms μ-law frames: what the fakes take for speech."""
    t = np.arange(8 * ms) / 8000
    ulaw = samples_to_ulaw((amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16))
    return [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]


def silence(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // 20)


def utterance(quiet_ms: int = 800) -> list[bytes]:
    return tone() + silence(quiet_ms)


def feed(session: Any, frames: list[bytes]) -> None:
    for frame in frames:
        session.send_audio(frame)


# --- one table row per provider -----------------------------------------------------------------


@dataclass
class Spec:
    name: str
    provider: type[TranscriptionProvider]
    fake: type[FakeStt]
    settings: dict[str, Any]  # short silences keep the tests fast
    key_env: str
    setup: str | None = None  # the setup message the client sends on every connection
    goodbye: dict[str, Any] | None = None  # what close() sends before closing
    acked: bool = True  # whether connect() waits for a message from the server


SPECS = [
    Spec("openai", OpenAITranscription, FakeOpenAITranscription, {"silenceDurationMs": 200}, "OPENAI_API_KEY",
         setup="session.update"),
    Spec("deepgram", DeepgramTranscription, FakeDeepgram, {"endpointingMs": 200}, "DEEPGRAM_API_KEY",
         goodbye={"type": "CloseStream"}, acked=False),
    Spec("elevenlabs", ElevenLabsTranscription, FakeElevenLabs, {"silenceDurationMs": 300}, "ELEVENLABS_API_KEY"),
    Spec("mistral", MistralTranscription, FakeMistral, {"silenceDurationMs": 200, "finalSettleMs": 50}, "MISTRAL_API_KEY",
         setup="session.update", goodbye={"type": "input_audio.end"}),
    Spec("xai", XaiTranscription, FakeXai, {"endpointingMs": 200}, "XAI_API_KEY", goodbye={"type": "audio.done"}),
]
BY_NAME = {spec.name: spec for spec in SPECS}


class Stack:
    """A fake, and sessions of the provider under test pointed at it (closed at teardown)."""

    def __init__(self, spec: Spec, fake: FakeStt) -> None:
        self.spec = spec
        self.fake = fake
        self.sessions: list[Any] = []

    def provider(self, **settings: Any) -> TranscriptionProvider:
        merged = {"apiKey": KEY, "baseUrl": self.fake.url, **self.spec.settings, **settings}
        return self.spec.provider(merged, environ={})

    def session(self, **settings: Any) -> tuple[Any, Recorder]:
        listener = Recorder()
        session = self.provider(**settings).create_session(listener)
        self.sessions.append(session)
        return session, listener

    async def connected(self, **settings: Any) -> tuple[Any, Recorder]:
        session, listener = self.session(**settings)
        await session.connect()
        return session, listener

    def audio(self, index: int = -1) -> bytes:
        return bytes(self.fake.connections[index].audio)


async def _stack(spec: Spec):
    fake = await spec.fake(api_key=KEY).start()
    stack = Stack(spec, fake)
    try:
        yield stack
    finally:
        for session in stack.sessions:
            await session.close()
        await fake.stop()


@pytest.fixture(params=SPECS, ids=[spec.name for spec in SPECS])
async def stack(request):
    async for value in _stack(request.param):
        yield value


def stack_of(name: str):
    @pytest.fixture
    async def fixture():
        async for value in _stack(BY_NAME[name]):
            yield value
    return fixture


openai_stack = stack_of("openai")
deepgram_stack = stack_of("deepgram")
elevenlabs_stack = stack_of("elevenlabs")
mistral_stack = stack_of("mistral")
xai_stack = stack_of("xai")


@pytest.fixture
def fast_reconnect(monkeypatch):
    monkeypatch.setattr(base, "RECONNECT_BASE_DELAY", 0.001)


async def all_audio_received(conn: Any, frames: list[bytes]) -> None:
    """Wait until the fake connection `conn` holds all of `frames`, in order, and nothing else.

    A final transcript is no sign that the audio is all there: the fake ends an utterance after the
    configured silence, while the rest of the utterance's trailing silence may still be on its way.
    """
    fed = b"".join(frames)
    await await_until(lambda: len(conn.audio) >= len(fed), f"the fake to receive all {len(frames)} frames fed")
    assert bytes(conn.audio) == fed


def assert_one_utterance(listener: Recorder, said: str = SAID) -> None:
    """Speech start first, then growing partials that lead to exactly one final with the scripted text."""
    assert listener.errors == []
    assert listener.finals == [said]
    kinds = [event for event, _ in listener.events]
    assert kinds[0] == "start", listener.events
    assert kinds.count("start") == 1, listener.events
    assert kinds[-1] == "final", listener.events
    partials = listener.partials
    assert partials, "no partial transcripts"
    assert all(said.startswith(text) for text in partials), partials
    assert [len(text) for text in partials] == sorted(len(text) for text in partials), partials


# --- every provider ----------------------------------------------------------------------------


async def test_speech_yields_start_partials_and_one_final(stack):
    session, listener = await stack.connected()
    session.send_audio(b"")  # nothing to send (an empty frame means "end of stream" to some services)
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)  # no duplicate final shows up
    assert_one_utterance(listener)
    await all_audio_received(stack.fake.last, utterance())
    assert stack.fake.last.audio_frames == len(utterance())


async def test_the_audio_uplink_is_not_compressed(stack):
    """Deflating μ-law or PCM saves almost nothing and costs the event loop on every frame."""
    await stack.connected()
    assert "sec-websocket-extensions" not in stack.fake.last.headers


async def test_two_utterances_give_two_finals(stack):
    stack.fake.script = ["first thing", "second thing now"]
    session, listener = await stack.connected()
    feed(session, utterance())
    await listener.wait(lambda r: len(r.finals) == 1)
    feed(session, utterance())
    await listener.wait(lambda r: len(r.finals) == 2)
    await listener.only(lambda r: len(r.finals) == 2)
    assert listener.finals == ["first thing", "second thing now"]
    assert listener.of("start") == ["", ""]


async def test_missing_key_means_not_configured(stack):
    spec = stack.spec
    assert not spec.provider({}, environ={}).configured()
    assert not spec.provider({"apiKey": ""}, environ={}).configured()
    assert spec.provider({}, environ={spec.key_env: "from-env"}).configured()
    assert spec.provider({"apiKey": "k"}, environ={}).configured()
    session = spec.provider({"baseUrl": stack.fake.url}, environ={}).create_session(Recorder())
    with pytest.raises(TranscriptionError, match=f"{spec.name} transcription: no API key.*{spec.key_env}"):
        await session.connect()
    assert stack.fake.connections == []


async def test_key_from_environment_is_sent(stack):
    spec = stack.spec
    listener = Recorder()
    provider = spec.provider({"baseUrl": stack.fake.url, **spec.settings}, environ={spec.key_env: KEY})
    session = provider.create_session(listener)
    stack.sessions.append(session)
    await session.connect()
    assert len(stack.fake.connections) == 1


async def test_refused_upgrade_raises_naming_the_provider(stack):
    stack.fake.api_key = "another-key"
    session, listener = stack.session()
    with pytest.raises(TranscriptionError) as raised:
        await session.connect()
    assert str(raised.value).startswith(f"{stack.spec.name} transcription: cannot connect")
    assert "401" in str(raised.value)
    assert stack.fake.connections == []
    assert listener.events == []


async def test_server_failure_mid_stream_reconnects_and_resends_setup(stack, fast_reconnect):
    fake = stack.fake
    fake.drop_after_audio = 3
    session, listener = await stack.connected()
    feed(session, silence(60))
    await fake.wait_connections(2)
    first, second = fake.connections
    assert first.ws.close_code == 1011
    assert (second.path, second.query) == (first.path, first.query)
    assert second.headers.get("authorization") == first.headers.get("authorization")
    if stack.spec.setup:
        await await_until(lambda: second.messages(stack.spec.setup))
        assert second.messages(stack.spec.setup) == first.messages(stack.spec.setup)
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert_one_utterance(listener)
    assert session.reconnects == 1
    assert len(fake.connections) == 2
    await all_audio_received(second, utterance())


async def test_reconnects_exhausted_reports_one_error(stack, fast_reconnect):
    fake = stack.fake
    fake.drop_after_audio = 1
    session, listener = await stack.connected()
    fake.refuse_status = 503
    feed(session, silence(20))
    await listener.wait(lambda r: r.errors)
    await listener.only(lambda r: len(r.errors) == 1)
    assert len(listener.errors) == 1
    assert isinstance(listener.errors[0], TranscriptionError)
    assert f"{stack.spec.name} transcription: connection lost after {MAX_RECONNECTS} reconnects" == str(listener.errors[0])
    assert fake.refused == MAX_RECONNECTS
    assert len(fake.connections) == 1


async def test_frames_that_are_not_json_objects_are_ignored(stack):
    stack.fake.garbage_on_open = True  # before the setup ack, where connect() is waiting for one
    session, listener = await stack.connected()
    for junk in ("{ not json", b"\x01\x02\x03", "42", "null"):
        await stack.fake.send_raw(junk)
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert_one_utterance(listener)
    assert len(stack.fake.connections) == 1


async def test_an_error_event_is_logged_and_transcription_goes_on(stack, caplog):
    session, listener = await stack.connected()
    await stack.fake.send_error("scripted trouble")
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert_one_utterance(listener)
    assert "scripted trouble" in caplog.text
    assert len(stack.fake.connections) == 1


async def test_audio_sent_before_connect_is_delivered_after(stack):
    session, listener = stack.session()
    frames = tone(200) + silence(100)
    feed(session, frames)
    await session.connect()
    await await_until(lambda: len(stack.audio()) == len(b"".join(frames)))
    assert stack.audio() == b"".join(frames)
    conn = stack.fake.last
    if stack.spec.setup:
        # The setup goes first: a session.update after audio would be rejected.
        assert conn.frames[0].json["type"] == stack.spec.setup


async def test_close_sends_the_goodbye_and_stops_sending(stack):
    session, listener = await stack.connected()
    feed(session, silence(100))
    await await_until(lambda: len(stack.audio()) == 5 * FRAME_BYTES)
    conn = stack.fake.last
    before = len(conn.messages())
    await session.close()
    await asyncio.wait_for(conn.closed.wait(), 2)
    after = conn.messages()[before:]
    audio_kinds = {"input_audio_buffer.append", "input_audio.append", "input_audio_chunk"}
    said_after = [m for m in after if m.get("type", m.get("message_type")) not in audio_kinds]
    assert said_after == ([stack.spec.goodbye] if stack.spec.goodbye else [])
    frames = len(conn.frames)
    session.send_audio(SILENCE_FRAME)
    await await_stays(lambda: len(conn.frames) == frames, "no frame sent after close", seconds=0.05)
    assert listener.errors == []


async def test_close_during_a_reconnect_leaves_no_connection_behind(xai_stack, fast_reconnect):
    """A reconnect that completes despite its cancellation (as Python 3.11's wait_for could) is closed at once."""
    fake = xai_stack.fake
    fake.drop_after_audio = 1
    session, listener = await xai_stack.connected()
    real_open, opening = session._open, asyncio.Event()

    async def open_ignoring_cancellation():
        opening.set()
        try:
            await forever()
        except asyncio.CancelledError:
            pass
        return await real_open()

    session._open = open_ignoring_cancellation
    feed(session, silence(20))
    await asyncio.wait_for(opening.wait(), 2)
    started = time.monotonic()
    await session.close()
    assert time.monotonic() - started < base.CLOSE_WAIT + 1
    await fake.wait_connections(2)
    await asyncio.wait_for(fake.last.closed.wait(), 2)
    assert session._task.done()
    assert listener.errors == []


@pytest.mark.parametrize("spec", [spec for spec in SPECS if spec.acked], ids=lambda spec: spec.name)
async def test_connect_times_out_without_the_setup_ack(spec, monkeypatch):
    monkeypatch.setattr(base, "CONNECT_TIMEOUT", 0.2)
    async for stack in _stack(spec):
        stack.fake.silent = True
        session, _ = stack.session()
        started = time.monotonic()
        with pytest.raises(TranscriptionError, match=f"^{spec.name} transcription: cannot connect"):
            await session.connect()
        assert time.monotonic() - started < 2
        await await_until(lambda: stack.fake.last.closed.is_set())


# --- OpenAI ------------------------------------------------------------------------------------


async def test_openai_request(openai_stack):
    session, listener = await openai_stack.connected(vadThreshold=0.6, language="en")
    conn = openai_stack.fake.last
    assert conn.path == "/v1/realtime"
    assert conn.query == {"intent": "transcription"}
    assert conn.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-beta" not in conn.headers
    assert conn.messages()[0] == {"type": "session.update", "session": {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcmu"},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300, "silence_duration_ms": 200},
        }},
    }}
    feed(session, tone(40))
    await await_until(lambda: len(conn.messages("input_audio_buffer.append")) == 2)
    appended = [base64.b64decode(m["audio"]) for m in conn.messages("input_audio_buffer.append")]
    assert appended == tone(40)


def test_openai_defaults():
    session = OpenAITranscription({"apiKey": "k"}, environ={}).create_session(Recorder())
    assert session.url() == "wss://api.openai.com/v1/realtime?intent=transcription"
    assert session.session_config()["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe"}
    assert session.session_config()["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 800}


def test_openai_bad_setting_names_it():
    session = OpenAITranscription({"apiKey": "k", "silenceDurationMs": "soon"}, environ={}).create_session(Recorder())
    with pytest.raises(TranscriptionError, match=r"streaming\.providers\.openai\.silenceDurationMs"):
        session.session_config()


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-realtime-whisper"])
async def test_openai_models_without_server_vad_commit_at_the_gateways_turn_end(openai_stack, model):
    session, listener = await openai_stack.connected(model=model, prompt="order numbers")
    conn = openai_stack.fake.last
    update = conn.messages("session.update")[0]["session"]["audio"]["input"]
    assert update["turn_detection"] is None
    assert ("prompt" in update["transcription"]) == (model == "gpt-live-transcribe")
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert_one_utterance(listener)
    kinds = [m["type"] for m in conn.messages()]
    # One commit, right after the speech and the silence that ended it (10 quiet frames at 200 ms).
    assert kinds.count("input_audio_buffer.commit") == 1
    assert kinds.index("input_audio_buffer.commit") == 1 + len(tone()) + 10
    assert conn.events("input_audio_buffer.speech_started") == []  # the start came from the gateway


async def test_openai_failed_transcription_and_error_events_are_not_fatal(openai_stack):
    fake = openai_stack.fake
    fake.script = ["lost words", SAID]
    fake.fail_transcription = True
    session, listener = await openai_stack.connected()
    feed(session, utterance())
    await await_until(lambda: fake.last.events("conversation.item.input_audio_transcription.failed"))
    await fake.send_error("something odd")
    fake.fail_transcription = False
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert listener.finals == [SAID]
    assert listener.errors == []
    assert len(fake.connections) == 1


async def test_openai_setup_error_fails_connect(openai_stack, monkeypatch):
    async def reject(conn, session):
        await openai_stack.fake.emit(conn, {"type": "error", "error": {"type": "invalid_request_error", "message": "nope"}})
    monkeypatch.setattr(openai_stack.fake, "_update", reject)
    session, _ = openai_stack.session()
    with pytest.raises(TranscriptionError, match=r"openai transcription: setup refused \(nope\)"):
        await session.connect()


# --- Deepgram ----------------------------------------------------------------------------------


async def test_deepgram_request(deepgram_stack):
    session, listener = await deepgram_stack.connected(language="en")
    conn = deepgram_stack.fake.last
    assert conn.path == "/v1/listen"
    assert conn.query == {
        "model": "nova-3", "encoding": "mulaw", "sample_rate": "8000", "channels": "1", "interim_results": "true",
        "endpointing": "200", "utterance_end_ms": "1000", "vad_events": "true", "smart_format": "true",
        "punctuate": "true", "language": "en",
    }
    assert conn.headers["authorization"] == f"Token {KEY}"
    feed(session, tone(40))
    await await_until(lambda: len(conn.frames) == 2)
    assert [(f.kind, f.data) for f in conn.frames] == [("binary", frame) for frame in tone(40)]


async def test_deepgram_speech_final_and_utterance_end_give_one_final(deepgram_stack):
    session, listener = await deepgram_stack.connected()
    feed(session, utterance(1400))
    await await_until(lambda: deepgram_stack.fake.last.events("UtteranceEnd"))
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    conn = deepgram_stack.fake.last
    assert [m["speech_final"] for m in conn.events("Results") if m["is_final"]] == [False, True]
    assert_one_utterance(listener)


async def test_deepgram_utterance_end_alone_ends_the_turn(deepgram_stack):
    deepgram_stack.fake.speech_final = False  # noise keeps endpointing from firing
    session, listener = await deepgram_stack.connected()
    feed(session, utterance(600))
    await await_until(lambda: len(deepgram_stack.fake.last.frames) == len(utterance(600)), "the fake got all the audio")
    await listener.only(lambda r: r.finals == [])
    feed(session, silence(800))
    await listener.wait(lambda r: r.finals)
    await listener.only(lambda r: len(r.finals) == 1)
    assert_one_utterance(listener)


async def test_deepgram_keepalive_is_a_text_frame_that_keeps_the_socket(deepgram_stack, monkeypatch):
    monkeypatch.setattr(DeepgramSession, "keepalive_interval", 0.05)
    deepgram_stack.fake.idle_timeout = 0.3
    session, listener = await deepgram_stack.connected()
    conn = deepgram_stack.fake.last
    # Real time must pass: the socket outlives the fake's 0.3 s idle timeout twice over.
    await await_stays(lambda: not conn.closed.is_set(), "the socket open", seconds=0.6)
    assert len(conn.messages("KeepAlive")) >= 5
    assert all(frame.kind == "text" for frame in conn.frames)
    assert not conn.closed.is_set()
    assert len(deepgram_stack.fake.connections) == 1


def test_deepgram_default_endpointing():
    provider = DeepgramTranscription({"apiKey": "k"}, environ={})
    assert "endpointing=800&" in provider.create_session(Recorder()).url()
    provider = DeepgramTranscription({"apiKey": "k", "silenceDurationMs": 500}, environ={})
    assert "endpointing=500&" in provider.create_session(Recorder()).url()


# --- ElevenLabs --------------------------------------------------------------------------------


async def test_elevenlabs_request(elevenlabs_stack):
    session, listener = await elevenlabs_stack.connected(language="de")
    conn = elevenlabs_stack.fake.last
    assert conn.path == "/v1/speech-to-text/realtime"
    assert conn.query == {"model_id": "scribe_v2_realtime", "audio_format": "ulaw_8000", "commit_strategy": "vad",
                          "vad_silence_threshold_secs": "0.3", "language_code": "de"}
    assert conn.headers["xi-api-key"] == KEY
    assert "authorization" not in conn.headers
    feed(session, tone(20))
    await await_until(lambda: conn.messages())
    assert conn.messages() == [{"message_type": "input_audio_chunk", "audio_base_64": base64.b64encode(tone(20)[0]).decode(),
                                "commit": False, "sample_rate": 8000}]


@pytest.mark.parametrize(("silence_ms", "sent"), [(None, "0.8"), (100, "0.3"), (1250, "1.25"), (9000, "3")])
def test_elevenlabs_silence_threshold_within_the_accepted_range(silence_ms, sent):
    settings = {"apiKey": "k"} if silence_ms is None else {"apiKey": "k", "silenceDurationMs": silence_ms}
    url = ElevenLabsTranscription(settings, environ={}).create_session(Recorder()).url()
    assert parse_qs(urlsplit(url).query)["vad_silence_threshold_secs"] == [sent]


@pytest.mark.parametrize("kind", ["quota_exceeded", "auth_error", "unaccepted_terms"])
async def test_elevenlabs_fatal_error_gives_up_without_reconnecting(elevenlabs_stack, fast_reconnect, kind):
    fake = elevenlabs_stack.fake
    session, listener = await elevenlabs_stack.connected()
    await fake.send_event({"message_type": kind, "error": "scripted"})
    await listener.wait(lambda r: r.errors)
    await asyncio.wait_for(fake.last.closed.wait(), 2)
    await listener.only(lambda r: len(r.errors) == 1)
    assert str(listener.errors[0]) == f"elevenlabs transcription: {kind}: scripted"
    assert len(fake.connections) == 1


async def test_elevenlabs_session_time_limit_starts_a_new_session(elevenlabs_stack, fast_reconnect):
    fake = elevenlabs_stack.fake
    session, listener = await elevenlabs_stack.connected()
    await fake.send_event({"message_type": "session_time_limit_exceeded", "error": "session too long"})
    await fake.wait_connections(2)
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    assert_one_utterance(listener)
    first, second = fake.connections
    await all_audio_received(second, utterance())
    assert first.audio == b""  # nothing fed after the renewal went to the spent session
    assert session.reconnects == 1


async def test_elevenlabs_other_errors_are_logged_only(elevenlabs_stack, caplog):
    fake = elevenlabs_stack.fake
    session, listener = await elevenlabs_stack.connected()
    await fake.send_event({"message_type": "commit_throttled", "error": "slow down"})
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    assert_one_utterance(listener)
    assert "commit_throttled: slow down" in caplog.text
    assert len(fake.connections) == 1


async def test_elevenlabs_auth_error_at_open_fails_connect(elevenlabs_stack):
    elevenlabs_stack.fake.open_error = "auth_error"
    session, _ = elevenlabs_stack.session()
    with pytest.raises(TranscriptionError, match=r"elevenlabs transcription: setup refused \(auth_error: scripted failure\)"):
        await session.connect()


# --- Mistral -----------------------------------------------------------------------------------


async def test_mistral_request(mistral_stack):
    session, listener = await mistral_stack.connected(targetStreamingDelayMs=240)
    conn = mistral_stack.fake.last
    assert conn.path == "/v1/audio/transcriptions/realtime"
    assert conn.query == {"model": "voxtral-mini-transcribe-realtime-2602"}
    assert conn.headers["authorization"] == f"Bearer {KEY}"
    assert conn.messages() == [{"type": "session.update", "session": {
        "audio_format": {"encoding": "pcm_mulaw", "sample_rate": 8000}, "target_streaming_delay_ms": 240}}]
    assert conn.config["audio_format"] == {"encoding": "pcm_mulaw", "sample_rate": 8000}
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    kinds = [m["type"] for m in conn.messages()]
    # The flush follows the speech plus the 200 ms of quiet that ended it, and comes once.
    assert kinds.count("input_audio.flush") == 1
    assert kinds.index("input_audio.flush") == 1 + len(tone()) + 10
    assert conn.events("error") == []


async def test_mistral_model_setting(mistral_stack):
    await mistral_stack.connected(model="voxtral-mini-transcribe-realtime-3")
    assert mistral_stack.fake.last.query == {"model": "voxtral-mini-transcribe-realtime-3"}


async def test_mistral_final_waits_for_the_settle_time(mistral_stack):
    session, listener = await mistral_stack.connected(finalSettleMs=300)
    feed(session, utterance())
    conn = mistral_stack.fake.last
    await await_until(lambda: conn.messages("input_audio.flush"))
    flushed = time.monotonic()
    await listener.wait(lambda r: r.finals)
    assert 0.25 <= time.monotonic() - flushed < 1.5
    assert_one_utterance(listener)


async def test_mistral_segment_delivers_the_final_at_once(mistral_stack):
    mistral_stack.fake.segment_on_flush = True
    session, listener = await mistral_stack.connected(finalSettleMs=10_000)
    started = time.monotonic()
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    assert time.monotonic() - started < 2
    assert_one_utterance(listener)


async def test_mistral_splits_oversized_audio(mistral_stack):
    session, listener = await mistral_stack.connected()
    chunk = SILENCE_FRAME * (MAX_APPEND_BYTES // FRAME_BYTES + 10)
    session.send_audio(chunk)
    conn = mistral_stack.fake.last
    await await_until(lambda: len(conn.audio) == len(chunk))
    sizes = [len(base64.b64decode(m["audio"])) for m in conn.messages("input_audio.append")]
    assert sizes == [MAX_APPEND_BYTES, len(chunk) - MAX_APPEND_BYTES]
    assert conn.events("error") == []


async def test_mistral_quiet_caller_sends_no_flush(mistral_stack):
    session, listener = await mistral_stack.connected()
    feed(session, tone(600, amplitude=150) + silence(400))  # below the energy threshold
    conn = mistral_stack.fake.last
    await await_until(lambda: len(conn.audio) == 50 * FRAME_BYTES)
    assert conn.messages("input_audio.flush") == []
    assert listener.events == []


# --- xAI -------------------------------------------------------------------------------------


async def test_xai_request(xai_stack):
    session, listener = await xai_stack.connected(language="fr")
    conn = xai_stack.fake.last
    assert conn.path == "/v1/stt"
    assert conn.query == {"sample_rate": "8000", "encoding": "mulaw", "interim_results": "true", "endpointing": "200",
                          "language": "fr"}
    assert conn.headers["authorization"] == f"Bearer {KEY}"
    assert conn.messages() == []  # configured by the query alone
    feed(session, utterance())
    await listener.wait(lambda r: r.finals)
    assert all(frame.kind == "binary" for frame in conn.frames)
    assert [m["is_final"] for m in conn.events("transcript.partial")].count(True) == 2  # a locked chunk, then the end


def test_xai_defaults_and_endpoint_setting():
    session = XaiTranscription({"apiKey": "k"}, environ={}).create_session(Recorder())
    assert session.url() == "wss://api.x.ai/v1/stt?sample_rate=8000&encoding=mulaw&interim_results=true&endpointing=800"
    session = XaiTranscription({"apiKey": "k", "endpoint": "https://stt.example/v1/stt", "interimResults": False},
                               environ={}).create_session(Recorder())
    assert session.url().startswith("wss://stt.example/v1/stt?sample_rate=8000&encoding=mulaw&interim_results=false&")


async def test_xai_endpoint_overrides_the_base_url(xai_stack):
    http_endpoint = xai_stack.fake.url.replace("ws://", "http://") + "/v1/stt"
    session, listener = await xai_stack.connected(endpoint=http_endpoint, baseUrl="ws://127.0.0.1:1")
    assert len(xai_stack.fake.connections) == 1


@pytest.mark.parametrize(("settings", "named"), [({"encoding": "alaw"}, "encoding"), ({"sampleRate": 16000}, "sampleRate")])
async def test_xai_audio_it_cannot_produce_is_refused(xai_stack, settings, named):
    session, _ = xai_stack.session(**settings)
    with pytest.raises(TranscriptionError, match=rf"xai transcription: streaming\.providers\.xai\.{named}"):
        await session.connect()
    assert xai_stack.fake.connections == []


async def test_xai_pcm_encoding_sends_decoded_audio(xai_stack):
    session, _ = await xai_stack.connected(encoding="pcm")
    feed(session, tone(20))
    conn = xai_stack.fake.last
    await await_until(lambda: conn.frames)
    assert conn.query["encoding"] == "pcm"
    assert len(conn.frames[0].data) == 2 * FRAME_BYTES


async def test_xai_one_utterance_per_connection(xai_stack, fast_reconnect):
    fake = xai_stack.fake
    fake.close_after_final = True
    turns = MAX_RECONNECTS + 2
    fake.script = [f"turn number {n}" for n in range(turns)]
    session, listener = await xai_stack.connected()
    for n in range(turns):
        await fake.wait_connections(n + 1)
        feed(session, utterance(400))
        await listener.wait(lambda r, n=n: len(r.finals) == n + 1)
    assert listener.finals == [f"turn number {n}" for n in range(turns)]
    assert listener.errors == []


async def test_xai_transcript_done_delivers_the_leftover(xai_stack):
    session, listener = await xai_stack.connected()
    await xai_stack.fake.send_event({"type": "transcript.partial", "text": "half", "is_final": True, "speech_final": False})
    await xai_stack.fake.send_event({"type": "transcript.done", "text": "way there", "duration": 1.0})
    await listener.wait(lambda r: r.finals)
    assert listener.events == [("start", ""), ("partial", "half"), ("final", "half way there")]


# --- the energy VAD --------------------------------------------------------------------------


LOUD = tone(20)[0]
QUIET = SILENCE_FRAME


def test_vad_starts_after_three_loud_frames():
    vad = EnergyVad(silence_ms=200)
    assert [vad.feed(LOUD) for _ in range(3)] == [None, None, "start"]
    assert vad.speaking
    assert vad.feed(LOUD) is None


def test_vad_ignores_a_short_blip():
    vad = EnergyVad(silence_ms=200)
    assert [vad.feed(frame) for frame in (LOUD, LOUD, QUIET, LOUD, LOUD)] == [None] * 5
    assert not vad.speaking


def test_vad_ends_after_the_silence_time():
    vad = EnergyVad(silence_ms=200)
    for _ in range(3):
        vad.feed(LOUD)
    assert [vad.feed(QUIET) for _ in range(10)] == [None] * 9 + ["end"]
    assert not vad.speaking
    assert [vad.feed(LOUD) for _ in range(3)] == [None, None, "start"]


def test_vad_pause_shorter_than_the_silence_time_does_not_end():
    vad = EnergyVad(silence_ms=200)
    for _ in range(3):
        vad.feed(LOUD)
    events = [vad.feed(QUIET) for _ in range(9)] + [vad.feed(LOUD)] + [vad.feed(QUIET) for _ in range(9)]
    assert events == [None] * 19
    assert vad.speaking
    assert vad.feed(QUIET) == "end"


def test_vad_counts_silence_by_duration_not_by_chunks():
    vad = EnergyVad(silence_ms=200)
    for _ in range(3):
        vad.feed(LOUD)
    assert vad.feed(QUIET * 9) is None  # 180 ms
    assert vad.feed(QUIET[:80]) is None  # 190 ms
    assert vad.feed(QUIET[:80]) == "end"  # 200 ms


def test_vad_threshold():
    soft = tone(20, amplitude=200)[0]  # RMS about 140
    vad = EnergyVad()
    assert [vad.feed(soft) for _ in range(5)] == [None] * 5
    sensitive = EnergyVad(threshold=100)
    assert [sensitive.feed(soft) for _ in range(3)] == [None, None, "start"]


def test_vad_edge_cases():
    vad = EnergyVad(start_frames=1)
    assert vad.feed(b"") is None
    assert vad.feed(LOUD) == "start"
    vad.reset()
    assert not vad.speaking
    for bad in ({"silence_ms": 0}, {"threshold": 0}, {"start_frames": 0}):
        with pytest.raises(ValueError):
            EnergyVad(**bad)
