"""The OpenAI Realtime (GA) client against a loopback fake of the service, over real sockets."""
from __future__ import annotations

import base64
import json
import logging
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from core.audio import FRAME_BYTES, SILENCE_FRAME, samples_to_ulaw
from providers.realtime import base
from providers.realtime.base import RealtimeError, SessionSetup, ToolCall, ToolSpec
from providers.realtime.openai import OpenAIRealtime, OpenAIRealtimeSession
from providers.registry import realtime_class
from tests.fakes.ai.realtime_openai import FakeOpenAIRealtime, Script, ToolScript, Turn
from tests.waiting import await_stays, await_until

KEY = "sk-test-realtime-key-123"
LOOKUP = ToolSpec("lookup_order", "Find an order by its number.",
                  {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]})


# --- audio and a recording listener ------------------------------------------------------------------


def tone(ms: int = 300, hz: float = 300.0) -> list[bytes]:
    """A loud sine as 20 ms μ-law frames: what the fake takes for the caller's speech."""
    t = np.arange(8 * ms) / 8000
    ulaw = samples_to_ulaw((8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16))
    return [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]


def silence(ms: int) -> list[bytes]:
    return [SILENCE_FRAME] * (ms // 20)


def utterance(quiet_ms: int = 240) -> list[bytes]:
    return tone() + silence(quiet_ms)


def feed(session: Any, frames: list[bytes]) -> None:
    for frame in frames:
        session.send_audio(frame)


class Recorder:
    """A RealtimeListener that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.audio: dict[str, bytearray] = {}

    def on_audio(self, ulaw: bytes, item_id: str) -> None:
        self.audio.setdefault(item_id, bytearray()).extend(ulaw)
        self.events.append(("audio", item_id))

    def on_output_transcript(self, item_id: str, text: str) -> None:
        self.events.append(("output_transcript", (item_id, text)))

    def on_response_done(self, item_id: str | None, status: str) -> None:
        self.events.append(("response_done", (item_id, status)))

    def on_speech_started(self) -> None:
        self.events.append(("speech_started", None))

    def on_speech_stopped(self) -> None:
        self.events.append(("speech_stopped", None))

    def on_input_transcript(self, text: str) -> None:
        self.events.append(("input_transcript", text))

    def on_tool_call(self, call: ToolCall) -> None:
        self.events.append(("tool_call", call))

    def on_closed(self, error: Exception | None) -> None:
        self.events.append(("closed", error))

    def of(self, kind: str) -> list[Any]:
        return [value for event, value in self.events if event == kind]

    async def wait(self, kind: str, count: int = 1) -> list[Any]:
        await await_until(lambda: len(self.of(kind)) >= count, f"{count} × {kind}; heard {self.kinds()}")
        return self.of(kind)

    def kinds(self) -> list[str]:
        """Event kinds in order, runs of audio collapsed to one."""
        out: list[str] = []
        for event, _ in self.events:
            if not (event == "audio" and out and out[-1] == "audio"):
                out.append(event)
        return out


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
async def sessions():
    opened: list[OpenAIRealtimeSession] = []
    yield opened
    for session in opened:
        await session.close()


@pytest.fixture
async def fake(sessions):
    async with FakeOpenAIRealtime(api_key=KEY) as server:
        yield server
        # Sessions close before the fake stops, or they would see a close and reconnect.
        for session in sessions:
            await session.close()
        assert not server.errors, "the fake itself failed"


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch):
    monkeypatch.setattr(base, "RECONNECT_FIRST_DELAY", 0.05)


def make(fake: FakeOpenAIRealtime, sessions: list, setup: SessionSetup | None = None,
         **settings: Any) -> tuple[OpenAIRealtimeSession, Recorder]:
    provider = OpenAIRealtime({"apiKey": KEY, "baseUrl": fake.url, "silenceDurationMs": 200, **settings}, environ={})
    listener = Recorder()
    session = provider.create_session(listener, setup or SessionSetup(instructions="Be brief.", tools=(LOOKUP,),
                                                                      language="en-US"))
    sessions.append(session)
    return session, listener


async def opened(fake, sessions, setup=None, **settings) -> tuple[OpenAIRealtimeSession, Recorder]:
    session, listener = make(fake, sessions, setup, **settings)
    await session.connect()
    return session, listener


# --- the provider ------------------------------------------------------------------------------------


def test_registered_with_ga_defaults():
    cls = realtime_class("openai")
    assert cls is OpenAIRealtime
    provider = cls({}, environ={"OPENAI_API_KEY": KEY})
    assert provider.base_url() == "wss://api.openai.com"
    assert provider.model() == "gpt-realtime"
    assert provider.problems() == []
    session = provider.create_session(Recorder(), SessionSetup(instructions="x"))
    assert session.url() == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert session.headers() == {"Authorization": f"Bearer {KEY}"}
    assert session.session_config()["audio"]["output"]["voice"] == "marin"


async def test_a_missing_key_is_a_problem_naming_the_setting(caplog):
    provider = OpenAIRealtime({}, environ={})
    [problem] = provider.problems()
    assert "realtime.providers.openai.apiKey" in problem and "OPENAI_API_KEY" in problem
    session = provider.create_session(Recorder(), SessionSetup(instructions="x"))
    with pytest.raises(RealtimeError, match=r"realtime\.providers\.openai\.apiKey"):
        await session.connect()


async def test_bad_settings_are_problems_naming_the_setting():
    provider = OpenAIRealtime({"apiKey": KEY, "silenceDurationMs": "soon", "noiseReduction": "loud"}, environ={})
    problems = provider.problems()
    assert any("realtime.providers.openai.silenceDurationMs" in p for p in problems)
    assert any("realtime.providers.openai.noiseReduction" in p for p in problems)
    session = provider.create_session(Recorder(), SessionSetup(instructions="x"))
    with pytest.raises(RealtimeError, match="silenceDurationMs"):
        await session.connect()


# --- setup -------------------------------------------------------------------------------------------


async def test_setup_is_the_ga_session_update_in_telephone_audio(fake, sessions):
    setup = SessionSetup(instructions="You answer the phone.", tools=(LOOKUP,), language="en-US", voice="cedar")
    await opened(fake, sessions, setup, vadThreshold=0.6, prefixPaddingMs=200, idleTimeoutMs=8000,
                 transcriptionModel="gpt-4o-transcribe", noiseReduction="near_field")
    conn = fake.last
    assert conn.path == "/v1/realtime" and conn.query == {"model": "gpt-realtime"}
    assert conn.headers["authorization"] == f"Bearer {KEY}"
    assert "openai-beta" not in conn.headers
    [update] = conn.messages("session.update")
    session = update["session"]
    assert session["type"] == "realtime"
    assert session["instructions"] == "You answer the phone."
    assert session["output_modalities"] == ["audio"]
    audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
    assert audio_in["format"] == {"type": "audio/pcmu"} and audio_out["format"] == {"type": "audio/pcmu"}
    assert audio_out["voice"] == "cedar"
    assert audio_in["turn_detection"] == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                                          "silence_duration_ms": 200, "create_response": True,
                                          "interrupt_response": True, "idle_timeout_ms": 8000}
    assert audio_in["transcription"] == {"model": "gpt-4o-transcribe", "language": "en"}
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert session["tools"] == [{"type": "function", "name": "lookup_order", "description": "Find an order by its number.",
                                 "parameters": LOOKUP.parameters}]
    assert session["tool_choice"] == "auto"
    assert "temperature" not in session and "voice" not in session
    assert conn.events("session.updated"), "the fake accepted the setup"
    assert fake.last.session["audio"]["output"]["format"] == {"type": "audio/pcmu"}


async def test_defaults_voice_from_the_provider_block_and_transcription_model(fake, sessions):
    await opened(fake, sessions, SessionSetup(instructions="x"), voice="sage")
    session = fake.last.messages("session.update")[0]["session"]
    assert session["audio"]["output"]["voice"] == "sage"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert session["audio"]["input"]["turn_detection"]["threshold"] == 0.5
    assert "noise_reduction" not in session["audio"]["input"]
    assert session["tools"] == []


async def test_a_refused_setup_fails_connect_naming_the_param_without_the_key(fake, sessions):
    # A tool name the service refuses: the setup error is the connect error.
    bad = SessionSetup(instructions="x", tools=(ToolSpec("no spaces allowed", "d"),))
    session, _ = make(fake, sessions, bad)
    with pytest.raises(RealtimeError) as caught:
        await session.connect()
    assert "session.tools[0].name" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_a_server_that_never_answers_fails_connect_within_the_timeout(fake, sessions, monkeypatch):
    monkeypatch.setattr(base, "CONNECT_TIMEOUT", 0.3)
    fake.never_answer = True
    session, _ = make(fake, sessions)
    with pytest.raises(RealtimeError, match=r"cannot connect \(no answer within 0.3 s, waiting for session.created\)"):
        await session.connect()
    assert fake.connections, "the socket was accepted, the session never created"


async def test_a_wrong_key_fails_connect_without_showing_it(fake, sessions):
    provider = OpenAIRealtime({"apiKey": "sk-wrong-secret-999", "baseUrl": fake.url}, environ={})
    session = provider.create_session(Recorder(), SessionSetup(instructions="x"))
    sessions.append(session)
    with pytest.raises(RealtimeError) as caught:
        await session.connect()
    assert "401" in str(caught.value) and "sk-wrong-secret-999" not in str(caught.value)


# --- a conversation ----------------------------------------------------------------------------------


async def test_caller_audio_is_appended_as_base64_ulaw(fake, sessions):
    session, _ = await opened(fake, sessions)
    frames = silence(100) + tone(60)
    feed(session, frames)
    await await_until(lambda: len(fake.last.messages("input_audio_buffer.append")) == len(frames), "every frame appended")
    appended = fake.last.messages("input_audio_buffer.append")
    assert [base64.b64decode(m["audio"]) for m in appended] == frames
    assert set(appended[0]) == {"type", "audio"}
    session.send_audio(b"")  # nothing to send
    await await_stays(lambda: len(fake.last.messages("input_audio_buffer.append")) == len(frames), seconds=0.05)


async def test_a_caller_turn_is_heard_transcribed_and_answered_in_order(fake, sessions):
    fake.script = Script(turns=[Turn(transcript="what are your opening hours", reply="We open at nine every day.")])
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    [(item, status)] = await listener.wait("response_done")
    assert status == "completed"
    assert listener.of("input_transcript") == ["what are your opening hours"]
    assert listener.of("output_transcript") == [(item, "We open at nine every day.")]
    kinds = listener.kinds()
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("audio")
    assert kinds.index("audio") < kinds.index("output_transcript") < kinds.index("response_done")
    # The audio is the μ-law the fake streamed, whole and in order, under the answer's item id.
    sent = b"".join(base64.b64decode(e["delta"]) for e in fake.last.events("response.output_audio.delta"))
    assert list(listener.audio) == [item] and bytes(listener.audio[item]) == sent
    assert len(sent) == 8 * fake.last.responses[0].audio_ms_sent > 0


async def test_respond_asks_for_a_response_with_instructions(fake, sessions):
    fake.script = Script(instructed_reply=lambda instructions: "Hello from the clinic")
    session, listener = await opened(fake, sessions)
    await session.respond("Greet the caller and say: Hello from the clinic")
    [(item, status)] = await listener.wait("response_done")
    [create] = fake.last.messages("response.create")
    assert create.pop("event_id").startswith("response_create_")
    assert create == {"type": "response.create", "response": {"instructions": "Greet the caller and say: Hello from the clinic"}}
    assert fake.last.instructions == ["Greet the caller and say: Hello from the clinic"]
    assert status == "completed" and listener.of("output_transcript") == [(item, "Hello from the clinic")]
    assert listener.audio[item]


async def test_a_tool_call_is_reported_and_its_result_answered(fake, sessions):
    fake.script = Script(turns=[Turn(
        transcript="where is order seven", say_first="Let me look.",
        tool=ToolScript("lookup_order", {"id": "7"}, call_id="call_seven"),
        reply=lambda output: f"Your order is {json.loads(output)['status']}.")])
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    [call] = await listener.wait("tool_call")
    assert call == ToolCall(call_id="call_seven", name="lookup_order", arguments='{"id": "7"}')
    [(spoken_item, status)] = await listener.wait("response_done")
    assert status == "completed" and listener.of("output_transcript") == [(spoken_item, "Let me look.")]
    await session.send_tool_result(call, {"status": "shipped"})
    await listener.wait("response_done", 2)
    create, respond = fake.last.messages("conversation.item.create")[0], fake.last.messages("response.create")[0]
    assert create == {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_seven", "output": '{"status": "shipped"}'}}
    assert respond.pop("event_id") and respond == {"type": "response.create"}
    assert fake.last.tool_outputs == [("call_seven", '{"status": "shipped"}')]
    answer_item, answer_status = listener.of("response_done")[1]
    assert answer_status == "completed"
    assert (answer_item, "Your order is shipped.") in listener.of("output_transcript")
    assert listener.audio[answer_item]


async def test_barge_in_cancels_and_truncate_is_checked_against_the_audio_sent(fake, sessions):
    fake.delta_ms, fake.delta_gap = 20, 0.01  # a long answer still streaming when the caller talks again
    fake.script = Script(turns=[Turn(reply="A long answer " * 20), Turn(transcript="stop")])
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    await await_until(lambda: sum(len(a) for a in listener.audio.values()) >= 8 * 200, "200 ms of the answer")
    feed(session, tone(100))
    [(item, status)] = await listener.wait("response_done")
    assert status == "cancelled"
    assert listener.of("speech_started") == [None, None]
    # No transcript.done for a cancelled answer: the words streamed so far are its transcript.
    [(said_item, said)] = listener.of("output_transcript")
    whole = ("A long answer " * 20).strip()
    assert said_item == item and said and whole.startswith(said) and said != whole, said
    done = fake.last.events("response.done")[0]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # Its transcript never got its ".done": the words made before the cut are the item's text.
    [(said_item, said)] = listener.of("output_transcript")
    assert said_item == item and said and ("A long answer " * 20).startswith(said) and len(said) < len("A long answer " * 20)
    assert listener.kinds()[-2:] == ["output_transcript", "response_done"]
    heard_ms = len(listener.audio[item]) // 8 - 100
    await session.truncate(item, heard_ms)
    await await_until(lambda: fake.last.events("conversation.item.truncated"), "the truncation acknowledged")
    [truncate] = fake.last.messages("conversation.item.truncate")
    assert truncate == {"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": heard_ms}
    assert fake.last.truncations[0]["ok"] and heard_ms <= fake.last.truncations[0]["sent_ms"]


async def test_cancel_response_stops_the_answer(fake, sessions, caplog):
    fake.delta_ms, fake.delta_gap = 20, 0.01
    fake.script = Script(instructed_reply="A long greeting " * 20)
    session, listener = await opened(fake, sessions)
    await session.respond("Greet the caller")
    await listener.wait("audio")
    await session.cancel_response()
    [(item, status)] = await listener.wait("response_done")
    assert status == "cancelled" and item is not None
    assert fake.last.messages("response.cancel") == [{"type": "response.cancel"}]
    assert fake.last.events("response.done")[0]["response"]["status_details"]["reason"] == "client_cancelled"
    # Cancelling with nothing running: the service's error is logged, the session carries on.
    with caplog.at_level(logging.WARNING, logger="providers.realtime.openai"):
        await session.cancel_response()
        await await_until(lambda: "response_cancel_not_active" in caplog.text, "the error logged")
    fake.script.instructed_reply = "Hi."
    await session.respond("Again")
    await listener.wait("response_done", 2)


# --- errors, bad events, closes ----------------------------------------------------------------------


async def test_error_events_are_logged_and_the_session_carries_on(fake, sessions, caplog):
    session, listener = await opened(fake, sessions)
    with caplog.at_level(logging.WARNING, logger="providers.realtime.openai"):
        await session.truncate("item_unknown", 100)
        await await_until(lambda: session.errors == 1, "the error event")
    assert "invalid_request_error" in caplog.text and "item_not_found" in caplog.text and "item_unknown" in caplog.text
    feed(session, utterance())
    await listener.wait("response_done")
    assert not listener.of("closed")
    assert KEY not in caplog.text


async def test_malformed_events_are_skipped_and_logged(fake, sessions, caplog):
    session, listener = await opened(fake, sessions)
    junk = [
        "not json {", "[1, 2]", {"no": "type"},
        {"type": "response.output_audio.delta", "item_id": "item_x", "delta": "%%% not base64 %%%"},
        {"type": "response.output_audio.delta", "delta": base64.b64encode(b"\xff" * 8).decode()},
        {"type": "response.output_audio_transcript.done", "transcript": "no item"},
        {"type": "response.done"},
        {"type": "response.done", "response": "not an object"},
        {"type": "response.function_call_arguments.done", "name": "lookup_order", "arguments": "{}"},
        {"type": "response.function_call_arguments.done", "call_id": "call_x", "arguments": "{}"},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i"},
        {"type": "error", "error": "a plain string"},
        {"type": "some.future.event", "payload": 1},
        # Frames the JSON parser must not be handed as they are (recursion) or whose values nothing can store.
        "[" * 20_000 + "]" * 20_000, '{"type": "error", "error": NaN}',
        '{"type": "response.output_audio_transcript.done", "item_id": "i", "transcript": "\\ud83d"}',
    ]
    with caplog.at_level(logging.INFO, logger="providers.realtime"):
        for message in junk:
            await fake.send_event(message)
        feed(session, utterance())
        await listener.wait("response_done")
    # The nameless call is still reported (the bridge answers it with an error result); the id-less one is not.
    assert listener.of("tool_call") == [ToolCall("call_x", "", "{}")] and len(listener.audio) == 1
    assert listener.kinds().count("response_done") == 1
    for what in ("not valid base64", "without its item_id or delta", "output transcript without its item_id",
                 "response.done without its response", "function call without its call_id",
                 "function call without its name", "input transcription without its transcript", "not JSON",
                 "nesting deeper than 64 levels", "non-finite number NaN", "lone surrogate U+D83D"):
        assert what in caplog.text, what
    assert "Traceback" not in caplog.text and KEY not in caplog.text


async def test_a_failed_input_transcription_is_logged(fake, sessions, caplog):
    session, listener = await opened(fake, sessions)
    with caplog.at_level(logging.WARNING, logger="providers.realtime.openai"):
        await fake.send_event({"type": "conversation.item.input_audio_transcription.failed", "item_id": "item_9",
                               "content_index": 0, "error": {"type": "server_error", "code": "busy", "message": "try later"}})
        await await_until(lambda: "item_9 failed" in caplog.text, "the failure logged")
    assert "server_error; code busy; message try later" in caplog.text
    assert listener.of("input_transcript") == []


async def test_beta_event_names_are_understood(fake, sessions):
    fake.beta_names = True
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    [(item, status)] = await listener.wait("response_done")
    assert fake.last.events("response.audio.delta") and not fake.last.events("response.output_audio.delta")
    assert status == "completed" and listener.audio[item]
    assert listener.of("output_transcript") == [(item, "Sure, I can help with that.")]


@pytest.mark.parametrize("code", [1011, 1001])
async def test_a_recoverable_close_reconnects_and_sends_the_setup_again(fake, sessions, caplog, code):
    fake.close_after_events, fake.close_code = 5, code  # after session.update and four frames
    session, listener = await opened(fake, sessions)
    with caplog.at_level(logging.INFO, logger="providers.realtime"):
        feed(session, silence(200))
        await fake.wait_connections(2)
        await await_until(lambda: fake.connections[1].events("session.updated"), "the setup on the new connection")
        feed(session, utterance())
        await listener.wait("response_done")
    first, second = fake.connections
    assert first.closed_with == code
    assert len(second.messages("session.update")) == 1
    assert second.messages("session.update")[0] == first.messages("session.update")[0]
    assert second.messages()[0]["type"] == "session.update", "the setup goes before any audio"
    assert second.audio, "audio flows on the new connection"
    assert session.reconnects == 1 and not listener.of("closed")
    assert "reconnected as a new session" in caplog.text and KEY not in caplog.text


async def test_a_normal_close_ends_the_session_without_reconnecting(fake, sessions):
    session, listener = await opened(fake, sessions)
    await fake.close(1000)
    [error] = await listener.wait("closed")
    assert error is None
    await await_stays(lambda: len(fake.connections) == 1, seconds=0.2)
    assert session.reconnects == 0


async def test_a_final_error_close_reports_an_error_without_the_key(fake, sessions):
    session, listener = await opened(fake, sessions)
    await fake.close(1008, "policy violation")
    [error] = await listener.wait("closed")
    assert isinstance(error, RealtimeError) and "1008" in str(error) and KEY not in str(error)


async def test_the_fake_runs_in_a_thread_of_its_own(sessions):
    with FakeOpenAIRealtime(api_key=KEY) as threaded:
        # As a gateway's config gives it: an http:// origin (the client speaks ws:// to it).
        session, listener = await opened(threaded, sessions, baseUrl=threaded.http_url)
        assert threaded.http_url.startswith("http://127.0.0.1:")
        await session.respond("Say hello")
        await listener.wait("response_done")
        assert threaded.last.instructions == ["Say hello"]
        await threaded.close(1000)
        await listener.wait("closed")


# --- the fake checks what it is sent ----------------------------------------------------------------


GOOD = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}


@pytest.mark.parametrize(("session", "param"), [
    ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.type"),
    ({**GOOD, "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format.rate"),
    ({**GOOD, "audio": {"output": {"format": {"type": "g711_ulaw"}}}}, "session.audio.output.format.type"),
    ({**GOOD, "tools": [{"type": "function", "name": "x"}]}, "session.tools[0].parameters"),
    ({**GOOD, "tools": [{"type": "code", "name": "x", "parameters": {"type": "object"}}]}, "session.tools[0].type"),
    ({**GOOD, "temperature": 0.8}, "session.temperature"),
    ({**GOOD, "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "session.audio.input.turn_detection.threshold"),
])
async def test_the_fake_refuses_session_updates_the_service_would(fake, session, param):
    async with ws_connect(f"{fake.url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "event_id": "evt_1", "session": session}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["param"] == param and error["error"]["event_id"] == "evt_1"
        await ws.send(json.dumps({"type": "session.update", "session": GOOD}))
        assert json.loads(await ws.recv())["type"] == "session.updated", "an error leaves the socket open"


async def test_the_fake_refuses_no_key_and_the_beta_header(fake):
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"{fake.url}/v1/realtime?model=gpt-realtime"):
            pass
    assert refused.value.response.status_code == 401
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}
    async with ws_connect(f"{fake.url}/v1/realtime?model=gpt-realtime", additional_headers=headers) as ws:
        error = json.loads(await ws.recv())
        assert error["error"]["code"] == "beta_api_shape_disabled"
        await ws.wait_closed()


async def test_the_fake_answers_unknown_events_and_early_truncation_with_errors(fake, sessions):
    session, listener = await opened(fake, sessions)
    session.send_json({"type": "session.frobnicate"})
    await session.respond("Say hi")
    [(item, _)] = await listener.wait("response_done")
    await session.truncate(item, len(listener.audio[item]) // 8 + 500)
    await await_until(lambda: session.errors == 2, "two error events")
    codes = [e["error"]["code"] for e in fake.last.events("error")]
    assert codes == ["invalid_value", "invalid_value"]
    assert fake.last.truncations[-1]["ok"] is False
    assert not fake.errors


# --- responses asked for while one is in progress -----------------------------------------------------


async def test_a_response_asked_for_during_another_waits_for_its_end(fake, sessions):
    fake.delta_ms, fake.delta_gap = 20, 0.005
    fake.script = Script(turns=[Turn(tool=ToolScript("lookup_order", {"id": "1"}), reply="It shipped.")],
                         instructed_reply=lambda instructions: "One moment while I check." * 3)
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    [call] = await listener.wait("tool_call")
    await listener.wait("response_done")
    # The "checking" notice, and at once the tool's answer: the service would refuse a second response.create.
    await session.respond("Say you are checking")
    await session.send_tool_result(call, {"status": "shipped"})
    await listener.wait("response_done", 3)
    conn = fake.last
    assert not conn.events("error"), conn.events("error")
    assert [r.cause for r in conn.responses] == ["turn", "instructed", "tool_answer"]
    assert [status for _, status in listener.of("response_done")] == ["completed"] * 3
    assert listener.of("output_transcript")[-1][1] == "It shipped."


async def test_a_refused_response_create_does_not_hold_up_the_next(fake, sessions, caplog):
    session, listener = await opened(fake, sessions)
    with caplog.at_level(logging.WARNING, logger="providers.realtime.openai"):
        # Instructions of the wrong type get response.create refused (an error naming the event), not started.
        session._request_response({"type": "response.create", "response": {"instructions": 42}})
        await await_until(lambda: session.errors == 1, "the refusal")
    await session.respond("Say hi")
    await listener.wait("response_done")
    assert [r.cause for r in fake.last.responses] == ["instructed"]


async def test_a_collision_with_the_servers_own_response_is_retried_after_it(fake, sessions):
    fake.delta_ms, fake.delta_gap = 20, 0.005
    fake.script = Script(turns=[Turn(reply="Answer to the caller " * 3)], instructed_reply="Injected.")
    session, listener = await opened(fake, sessions)
    feed(session, utterance())
    await listener.wait("audio")
    # As if the request crossed the server's own response on the wire: sent, then refused.
    session._requested = False
    session._responding = False
    await session.respond("Inject this")
    await await_until(lambda: session.errors == 1, "the refusal")
    await listener.wait("response_done", 2)
    assert [r.cause for r in fake.last.responses] == ["turn", "instructed"]
    assert listener.of("output_transcript")[-1][1] == "Injected."
