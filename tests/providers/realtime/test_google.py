"""The Gemini Live provider against the fake Gemini Live server over a real loopback socket."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import numpy as np
import pytest

from core.audio import rms, samples_to_ulaw, ulaw_to_samples
from providers.realtime import base
from providers.realtime.base import RealtimeError, SessionSetup, ToolCall, ToolSpec
from providers.realtime.google import GoogleRealtime, gemini_schema
from providers.registry import realtime_class
from tests.fakes.ai.realtime_google import FakeGeminiLive, Line
from tests.waiting import await_stays, await_until

KEY = "gm-secret-key-0123456789"
SILENCE = b"\xff" * 160


def tone_frame(index: int, freq: float = 440.0) -> bytes:
    """20 ms of a loud tone as 8 kHz μ-law (caller speech for the fake's energy detector)."""
    n = np.arange(index * 160, (index + 1) * 160)
    return samples_to_ulaw((8000 * np.sin(2 * np.pi * freq * n / 8000)).astype(np.int16))


class Listener:
    """A RealtimeListener that keeps everything it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.audio: dict[str, bytearray] = {}
        self.closed: list[Exception | None] = []

    def on_audio(self, ulaw: bytes, item_id: str) -> None:
        self.audio.setdefault(item_id, bytearray()).extend(ulaw)
        if not self.events or self.events[-1] != ("audio", item_id):
            self.events.append(("audio", item_id))

    def on_output_transcript(self, item_id: str, text: str) -> None:
        self.events.append(("output", (item_id, text)))

    def on_response_done(self, item_id: str | None, status: str) -> None:
        self.events.append(("done", (item_id, status)))

    def on_speech_started(self) -> None:
        self.events.append(("speech_started", None))

    def on_speech_stopped(self) -> None:
        self.events.append(("speech_stopped", None))

    def on_input_transcript(self, text: str) -> None:
        self.events.append(("input", text))

    def on_tool_call(self, call: ToolCall) -> None:
        self.events.append(("tool", call))

    def on_closed(self, error: Exception | None) -> None:
        self.closed.append(error)
        self.events.append(("closed", error))

    def of(self, kind: str) -> list[Any]:
        return [value for event, value in self.events if event == kind]

    def kinds(self) -> list[str]:
        return [event for event, _ in self.events]


def provider(fake: FakeGeminiLive, **block: Any) -> GoogleRealtime:
    return GoogleRealtime({"apiKey": KEY, "baseUrl": fake.url, **block}, environ={})


async def open_session(fake: FakeGeminiLive, listener: Listener, *, tools: tuple[ToolSpec, ...] = (),
                       **block: Any):
    setup = SessionSetup(instructions="You are a helpful phone agent.", tools=tools, language="en-US")
    session = provider(fake, **block).create_session(listener, setup)
    await session.connect()
    return session


async def say(session, frames: int = 10, quiet: int = 20, start: int = 0) -> None:
    """A caller utterance: loud frames, then enough quiet for the fake's end of speech."""
    for i in range(frames):
        session.send_audio(tone_frame(start + i))
    for _ in range(quiet):
        session.send_audio(SILENCE)


@pytest.fixture
async def fake():
    async with FakeGeminiLive(api_key=KEY, script=[Line(transcript="I would like an appointment",
                                                        reply="Sure, what day works for you?")]) as server:
        yield server


async def test_registered_and_setup_shape(fake: FakeGeminiLive) -> None:
    assert realtime_class("google") is GoogleRealtime
    listener = Listener()
    tools = (ToolSpec("lookup_order", "Find an order.", {
        "type": "object", "additionalProperties": False,
        "properties": {"id": {"type": "string", "description": "order id"},
                       "rush": {"type": ["boolean", "null"]},
                       "reason": {"type": "string", "enum": ["a", "b"]},
                       "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["id"]}),
        ToolSpec("openclaw_end_call", "End the call."))
    session = await open_session(fake, listener, tools=tools, silenceDurationMs=300, startSensitivity="low",
                                 endSensitivity="HIGH", voice="Puck")
    try:
        conn = fake.last
        assert conn.headers["x-goog-api-key"] == KEY
        setup = conn.setup
        assert setup["model"] == "models/gemini-3.1-flash-live-preview"
        generation = setup["generationConfig"]
        assert generation["responseModalities"] == ["AUDIO"]
        assert generation["speechConfig"] == {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}},
                                              "languageCode": "en-US"}
        assert setup["systemInstruction"] == {"parts": [{"text": "You are a helpful phone agent."}]}
        detection = setup["realtimeInputConfig"]["automaticActivityDetection"]
        assert detection == {"disabled": False, "silenceDurationMs": 300,
                             "startOfSpeechSensitivity": "START_SENSITIVITY_LOW",
                             "endOfSpeechSensitivity": "END_SENSITIVITY_HIGH"}
        assert setup["realtimeInputConfig"]["activityHandling"] == "START_OF_ACTIVITY_INTERRUPTS"
        assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
        assert setup["sessionResumption"] == {"handle": None}
        assert setup["contextWindowCompression"] == {"slidingWindow": {}}
        lookup, end = setup["tools"][0]["functionDeclarations"]
        assert lookup["parameters"] == {
            "type": "OBJECT",
            "properties": {"id": {"type": "STRING", "description": "order id"},
                           "rush": {"type": "BOOLEAN", "nullable": True},
                           "reason": {"type": "STRING", "enum": ["a", "b"]},
                           "tags": {"type": "ARRAY", "items": {"type": "STRING"}}},
            "required": ["id"]}
        assert end == {"name": "openclaw_end_call", "description": "End the call.", "behavior": "BLOCKING"}
        assert conn.problem is None
    finally:
        await session.close()


async def test_input_audio_is_16khz_pcm_at_the_right_rate(fake: FakeGeminiLive) -> None:
    session = await open_session(fake, Listener())
    try:
        for i in range(50):
            session.send_audio(SILENCE)
        conn = fake.last
        await await_until(lambda: conn.audio_messages >= 50, "50 audio messages at the fake")
        bodies = conn.messages("realtimeInput")
        assert all(body["audio"]["mimeType"] == "audio/pcm;rate=16000" for body in bodies)
        # One message per 20 ms frame, nothing held back: 160 μ-law bytes → 640 bytes of PCM16 at 16 kHz.
        assert [len(base64.b64decode(body["audio"]["data"])) for body in bodies] == [640] * 50
        assert conn.binary_frames == 0
    finally:
        await session.close()


async def test_upsampled_speech_keeps_its_level() -> None:
    from providers.realtime.google import _Upsampler

    upsampler = _Upsampler()
    pcm = b"".join(upsampler.process(ulaw_to_samples(tone_frame(i, 1000.0))) for i in range(25))
    samples = np.frombuffer(pcm, dtype="<i2")[320:]
    assert len(pcm) == 25 * 640
    assert abs(rms(samples) - 8000 / np.sqrt(2)) < 300
    spectrum = np.abs(np.fft.rfft(samples))
    peak = np.fft.rfftfreq(len(samples), 1 / 16000)[int(np.argmax(spectrum))]
    assert abs(peak - 1000) < 40


async def test_caller_line_answered_with_audio_and_transcripts(fake: FakeGeminiLive) -> None:
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: ("done", ("turn-1", "completed")) in listener.events, "the reply to finish")
        conn = fake.last
        assert 0 < conn.binary_sent < len(conn.sent)  # JSON came in binary and text frames alike
        assert listener.of("input") == ["I would like an appointment"]
        assert listener.of("output") == [("turn-1", "Sure, what day works for you?")]
        kinds = listener.kinds()
        # Gemini has no speech-stop event: it comes with the model's first answer, after the caller's text.
        assert kinds.index("input") < kinds.index("audio")
        assert kinds.index("speech_stopped") < kinds.index("audio")
        assert kinds.count("speech_stopped") == 1
        assert kinds.index("output") < kinds.index("done")
        # 480 ms of 24 kHz PCM16 → 480 ms of 8 kHz μ-law: 3840 bytes, still audible.
        audio = bytes(listener.audio["turn-1"])
        assert abs(len(audio) - 3840) <= 16
        assert rms(ulaw_to_samples(audio[400:3400])) > 4000
        # A resumption handle came after the turn and is kept for a reconnect.
        await await_until(lambda: session.handle_token == "h-1", "the resumption handle")
    finally:
        await session.close()


async def test_input_transcription_finished_stops_speech_before_the_answer(fake: FakeGeminiLive) -> None:
    fake.input_finished = True
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: listener.of("done"), "the reply to finish")
        assert listener.of("input") == ["I would like an appointment"]
        assert listener.kinds().count("speech_stopped") == 1
    finally:
        await session.close()


async def test_late_caller_text_is_reported_with_its_answer(fake: FakeGeminiLive) -> None:
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        fake.send_message({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
            "mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(b"\x00\x10" * 2400).decode()}}]}}})
        fake.send_message({"serverContent": {"inputTranscription": {"text": "late words"}}})
        fake.send_message({"serverContent": {"turnComplete": True}})
        await await_until(lambda: listener.of("done"), "the turn to end")
        assert listener.of("input") == ["late words"]
        assert listener.kinds().index("input") < listener.kinds().index("done")
        await session.respond("Say hello.")
        await await_until(lambda: len(listener.of("done")) == 2, "the next turn")
        assert "speech_stopped" not in listener.kinds()
    finally:
        await session.close()


async def test_respond_sends_a_text_turn_and_the_model_speaks(fake: FakeGeminiLive) -> None:
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        await session.respond("Greet the caller: Welcome to Example Dental.")
        await await_until(lambda: listener.of("done"), "the greeting to finish")
        assert fake.texts == ["Greet the caller: Welcome to Example Dental."]
        body = fake.last.messages("clientContent")[0]
        assert body == {"turns": [{"role": "user", "parts": [{"text": "Greet the caller: Welcome to Example Dental."}]}],
                        "turnComplete": True}
        assert listener.of("output") == [("turn-1", "Hello, thanks for calling. How can I help?")]
        assert "speech_stopped" not in listener.kinds()  # nobody spoke: no caller turn ended
    finally:
        await session.close()


async def test_barge_in_interrupts_and_cancels(fake: FakeGeminiLive) -> None:
    fake.script = [Line(transcript="first question", reply="a long answer " * 10, reply_ms=8000),
                   Line(transcript="stop please", reply="Okay.")]
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: listener.audio.get("turn-1"), "the long answer to start")
        await say(session, start=50)
        await await_until(lambda: ("done", ("turn-1", "cancelled")) in listener.events, "the answer cancelled")
        await await_until(lambda: ("done", ("turn-2", "completed")) in listener.events, "the second answer")
        kinds = listener.kinds()
        assert kinds.count("speech_started") == 1
        assert kinds.index("speech_started") < listener.events.index(("done", ("turn-1", "cancelled")))
        assert fake.last.server_content("interrupted") == [True]
        # What was said of the cut answer is reported, then the next turn's caller text.
        cut = listener.of("output")[0]
        assert cut[0] == "turn-1" and cut[1] and ("a long answer " * 10).startswith(cut[1])
        assert listener.of("input") == ["first question", "stop please"]
        assert len(listener.audio["turn-1"]) < 8000 * 8
    finally:
        await session.close()


async def test_tool_call_round_trip(fake: FakeGeminiLive) -> None:
    fake.script = [Line(transcript="where is my order", reply="It ships tomorrow.",
                        tool=("lookup_order", {"id": "42"}))]
    listener = Listener()
    tools = (ToolSpec("lookup_order", "Find an order.", {"type": "object", "properties": {"id": {"type": "string"}}}),)
    session = await open_session(fake, listener, tools=tools, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: listener.of("tool"), "the tool call")
        call = listener.of("tool")[0]
        assert call == ToolCall("fc-1", "lookup_order", '{"id": "42"}')
        assert listener.of("input") == ["where is my order"]
        await session.send_tool_result(call, {"status": "shipped"})
        await await_until(lambda: listener.of("done"), "the answer after the tool")
        assert fake.tool_responses == [{"id": "fc-1", "name": "lookup_order", "response": {"output": {"status": "shipped"}}}]
        assert listener.of("output") == [("turn-1", "It ships tomorrow.")]
        assert listener.kinds().count("speech_stopped") == 1
    finally:
        await session.close()


async def test_tool_error_result_and_wrong_id(fake: FakeGeminiLive) -> None:
    fake.script = [Line(transcript="where is my order", tool=("lookup_order", {}))]
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: listener.of("tool"), "the tool call")
        call = listener.of("tool")[0]
        assert call.arguments == "{}"
        await session.send_tool_result(ToolCall("fc-999", call.name), {"error": "no such order"})
        await await_until(lambda: listener.closed, "the session to end")
        assert fake.last.received[-1]["toolResponse"]["functionResponses"][0]["response"] == {"error": "no such order"}
        assert isinstance(listener.closed[0], RealtimeError)
        assert "1007" in str(listener.closed[0])
    finally:
        await session.close()


async def test_go_away_resumes_with_the_handle(fake: FakeGeminiLive, monkeypatch) -> None:
    monkeypatch.setattr(base, "RECONNECT_FIRST_DELAY", 0.01)
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: session.handle_token == "h-1", "a resumption handle")
        fake.go_away(0.05)
        await fake.await_connections(2)
        assert fake.connections[1].resumption_handle == "h-1"
        assert session.reconnects == 1 and not listener.closed
        # The new connection carries on: audio flows and the caller is answered again.
        await say(session, start=100)
        await await_until(lambda: len(listener.of("done")) >= 2, "an answer on the resumed connection")
        assert fake.connections[1].audio_messages > 0
    finally:
        await session.close()


async def test_barge_in_during_a_tool_call_cancels_it(fake: FakeGeminiLive, caplog) -> None:
    caplog.set_level(logging.INFO, logger="providers")
    fake.tool_cancellation = True
    fake.script = [Line(transcript="check my order", tool=("lookup_order", {"id": "7"})),
                   Line(transcript="never mind", reply="Okay.")]
    listener = Listener()
    session = await open_session(fake, listener, silenceDurationMs=200)
    try:
        await say(session)
        await await_until(lambda: listener.of("tool"), "the tool call")
        await say(session, start=50)
        await await_until(lambda: fake.last.events("toolCallCancellation"), "the cancellation")
        await await_until(lambda: ("done", ("turn-1", "completed")) in listener.events, "the next answer")
        assert listener.kinds().count("speech_started") == 1
        assert "cancelled tool call(s) ['fc-1']" in caplog.text
        # A result for the cancelled call, sent late, is harmless.
        await session.send_tool_result(listener.of("tool")[0], {"status": "late"})
        await await_until(lambda: fake.last.late_tool_responses, "the late result at the fake")
        assert not listener.closed
    finally:
        await session.close()


async def test_text_turn_ending_an_answer_is_not_a_barge_in(fake: FakeGeminiLive) -> None:
    fake.greeting_reply = "a long greeting " * 20
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        await session.respond("Greet the caller.")
        await await_until(lambda: listener.audio.get("turn-1"), "the greeting to start")
        fake.greeting_reply = "Checking."
        await session.respond("Say you are checking.")
        await await_until(lambda: ("done", ("turn-2", "completed")) in listener.events, "the second text turn")
        assert ("done", ("turn-1", "cancelled")) in listener.events
        assert "speech_started" not in listener.kinds() and "speech_stopped" not in listener.kinds()
    finally:
        await session.close()


async def test_refused_resumption_starts_a_new_session(fake: FakeGeminiLive, monkeypatch) -> None:
    monkeypatch.setattr(base, "RECONNECT_FIRST_DELAY", 0.01)
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        await session.respond("Say hello.")
        await await_until(lambda: session.handle_token == "h-1", "a resumption handle")
        fake.handles.clear()  # the handle expired on the server's side
        fake.go_away(0.01)
        await fake.await_connections(2)
        assert [c.resumption_handle for c in fake.connections] == [None, "h-1", None]
        assert fake.connections[1].problem == "unknown resumption handle"
        assert not listener.closed
    finally:
        await session.close()


async def test_recoverable_internal_error_reconnects(fake: FakeGeminiLive, monkeypatch) -> None:
    monkeypatch.setattr(base, "RECONNECT_FIRST_DELAY", 0.01)
    fake.drop_after_audio = 5
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        for _ in range(10):
            session.send_audio(SILENCE)
        await fake.await_connections(2)
        assert fake.connections[0].hung_up == 1011
        for _ in range(5):
            session.send_audio(SILENCE)
        await await_until(lambda: fake.connections[1].audio_messages >= 5, "audio on the new connection")
        assert not listener.closed
    finally:
        await session.close()


@pytest.mark.parametrize("code, reason", [
    (1007, "API key expired. Please renew the API key."),
    (1008, "Policy violation."),
    (1011, "RESOURCE_EXHAUSTED: quota exceeded"),
])
async def test_final_closes_end_the_session(fake: FakeGeminiLive, monkeypatch, code: int, reason: str) -> None:
    monkeypatch.setattr(base, "RECONNECT_FIRST_DELAY", 0.01)
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        fake.close(code, reason)
        await await_until(lambda: listener.closed, "the session to end")
        error = listener.closed[0]
        assert isinstance(error, RealtimeError)
        assert str(code) in str(error) and reason[:20] in str(error)
        await await_stays(lambda: len(fake.connections) == 1, "no reconnect", seconds=0.1)
    finally:
        await session.close()


async def test_normal_close_without_go_away_is_final(fake: FakeGeminiLive) -> None:
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        fake.close(1000, "")
        await await_until(lambda: listener.closed, "the session to end")
        assert listener.closed == [None]
    finally:
        await session.close()


async def test_setup_refused(fake: FakeGeminiLive) -> None:
    session = provider(fake, model="gemini-3.1-flash-live-preview").create_session(
        Listener(), SessionSetup(instructions="x", tools=(ToolSpec("bad name!", "no"),)))
    with pytest.raises(RealtimeError) as caught:
        await session.connect()
    assert "1007" in str(caught.value) and "invalid argument" in str(caught.value)
    assert fake.last.problem == "bad function name"


async def test_never_answering_server_times_out(fake: FakeGeminiLive, monkeypatch) -> None:
    monkeypatch.setattr(base, "CONNECT_TIMEOUT", 0.3)
    fake.never_setup = True
    session = provider(fake).create_session(Listener(), SessionSetup(instructions="x"))
    with pytest.raises(RealtimeError) as caught:
        async with asyncio.timeout(5):
            await session.connect()
    assert "google" in str(caught.value)


async def test_wrong_key_refused_without_leaking_it(fake: FakeGeminiLive, caplog) -> None:
    # The project's own logs at every level (the websockets library itself prints request headers at DEBUG).
    caplog.set_level(logging.DEBUG, logger="providers")
    wrong = "gm-wrong-key-abcdefghijkl"
    session = GoogleRealtime({"apiKey": wrong, "baseUrl": fake.url}, environ={}).create_session(
        Listener(), SessionSetup(instructions="x"))
    with pytest.raises(RealtimeError) as caught:
        await session.connect()
    assert "401" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in caplog.text
    assert not fake.connections


async def test_a_close_reason_echoing_the_key_is_redacted(fake: FakeGeminiLive, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="providers")
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        await fake.close(1008, f"API key {KEY} is not allowed here")
        await await_until(lambda: listener.closed, "the session to end")
        assert "[redacted]" in str(listener.closed[0])
        assert KEY not in str(listener.closed[0]) and KEY not in caplog.text
    finally:
        await session.close()


def test_missing_key_named_by_problems() -> None:
    bare = GoogleRealtime({}, environ={})
    [problem] = bare.problems()
    for name in ("realtime.providers.google.apiKey", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        assert name in problem
    assert not bare.configured()
    assert GoogleRealtime({}, environ={"GOOGLE_API_KEY": "g"}).api_key() == "g"
    assert GoogleRealtime({}, environ={"GOOGLE_API_KEY": "g", "GEMINI_API_KEY": "m"}).api_key() == "m"
    assert GoogleRealtime({"apiKey": "b"}, environ={"GEMINI_API_KEY": "m"}).api_key() == "b"
    assert GoogleRealtime({}, environ={"GEMINI_API_KEY": "m"}).problems() == []


async def test_malformed_messages_are_skipped(fake: FakeGeminiLive, caplog) -> None:
    caplog.set_level(logging.INFO)
    listener = Listener()
    session = await open_session(fake, listener)
    try:
        for junk in ("not json {", b"\x00\xff", "[1, 2]", json.dumps({"serverContent": "nope"}),
                     json.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "%%%"}}]}}}),
                     json.dumps({"serverContent": {"modelTurn": {"parts": "x"}}}),
                     json.dumps({"toolCall": {"functionCalls": [{"id": "x"}]}}),
                     json.dumps({"toolCall": "x"}),
                     json.dumps({"sessionResumptionUpdate": {"newHandle": "h-x", "resumable": False}}),
                     "[" * 20_000 + "]" * 20_000, '{"serverContent": NaN}', b'{"serverContent": {"x": "\\ud83d"}}'):
            fake.send_raw(junk)
        await session.respond("Say hello.")
        await await_until(lambda: listener.of("done"), "the reply after the junk")
        assert not listener.closed and not listener.of("tool")
        assert session.handle_token == "h-1"  # from the reply, never the unresumable "h-x"
        assert "not JSON" in caplog.text
        for reason in ("nesting deeper than 64 levels", "non-finite number NaN", "lone surrogate U+D83D"):
            assert reason in caplog.text, reason
    finally:
        await session.close()


async def test_threaded_fake_serves_another_loop() -> None:
    """The fake on its own thread, as a gateway served from another thread uses it."""
    with FakeGeminiLive(api_key=KEY) as threaded:
        listener = Listener()
        session = await open_session(threaded, listener)
        try:
            await session.respond("Say hello.")
            await await_until(lambda: listener.of("done"), "the threaded fake's reply")
            threaded.close(1008, "Policy violation.").result(5)
            await await_until(lambda: listener.closed, "the session to end")
        finally:
            await session.close()


def test_gemini_schema_drops_what_gemini_refuses() -> None:
    assert gemini_schema({"type": "object", "$schema": "x", "properties": {"n": {"type": "integer", "minimum": 1}}}) \
        == {"type": "OBJECT", "properties": {"n": {"type": "INTEGER", "minimum": 1}}}
