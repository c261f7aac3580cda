"""Realtime calls end to end: a simulated Twilio caller, the real gateway (Daphne on loopback), the real
OpenAI Realtime provider against the fake Realtime server, and the llm responder against the fake LLM.

The caller's lines are loud tones: the fake model's voice detection hears them, and its script says
what the caller said (the input transcript) and how the model answers. Each test judges what the
gateway did: what the fake model received and recorded, what the caller's playout played, cleared
and acknowledged, and the rows the gateway stored.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from calls import background, services
from calls.models import Call, CallEvent, MediaStream, TranscriptEntry
from calls.realtime.instructions import checking_instructions, greeting_instructions, speak_instructions
from calls.simulator.call import FRAME_S, JITTER_MS, Gateway, Line
from calls.simulator.rest import TwilioRestStub
from calls.streams import realtime as bridge
from core.audio import FRAME_BYTES
from core.urls import webhook_url
from tests.calls.realtime_caller import start_call
from tests.calls.simulated import stream_recorded
from tests.fakes.ai.llm import FakeChatCompletions
from tests.fakes.ai.realtime_openai import FakeOpenAIRealtime, Script, ToolScript, Turn
from tests.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

ACCOUNT = "AC" + "3" * 32
TOKEN = "simulator-token"
MODEL_KEY = "sk-fake-realtime"
LLM_KEY = "sk-fake-llm"
GREETING = "Welcome to the bakery."
GREETED = "Hello, welcome to the bakery."  # what the fake model says for the greeting instruction
LLM_ANSWER = "We open at ten on Sundays."
FRAME_MS = int(FRAME_S * 1000)


def instructed(instructions: str) -> str:
    """The fake model's answer to a response.create with instructions: greeting, checking, injected speech."""
    if instructions.startswith("Start the call"):
        return GREETED
    if instructions == checking_instructions():
        return "Let me check."
    return instructions.rsplit(": ", 1)[-1]  # "say exactly this": it does


@pytest.fixture
def rest_stub():
    stub = TwilioRestStub(on_hangup=lambda sid: None).start()
    yield stub
    stub.stop()


@pytest.fixture
def model():
    with FakeOpenAIRealtime(api_key=MODEL_KEY, script=Script(instructed_reply=instructed)) as fake:
        yield fake
    assert not fake.errors, fake.errors


@pytest.fixture
def llm():
    with FakeChatCompletions(api_key=LLM_KEY, reply='{"spoken": "%s"}' % LLM_ANSWER) as fake:
        yield fake


@pytest.fixture
def gateway(live_gateway, configure, rest_stub, model, llm):
    def apply(realtime: dict | None = None, **extra) -> Gateway:
        loaded = configure({
            "provider": "twilio",
            "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_stub.base_url},
            "fromNumber": "+15550100000",
            "publicUrl": live_gateway,
            "inboundPolicy": "open",
            "inboundGreeting": GREETING,
            # The agent behind the consult tool: the llm responder, on the fake Chat Completions API.
            "responseModel": "fake/bakery-model",
            "models": {"providers": {"fake": {"baseUrl": llm.url, "apiKey": LLM_KEY}}},
            "realtime": {"enabled": True, "provider": "openai", "providers": {"openai": {
                "apiKey": MODEL_KEY, "baseUrl": model.http_url, "silenceDurationMs": 200}}, **(realtime or {})},
            **extra,
        })
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        return Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), account_sid=ACCOUNT,
                       auth_token=TOKEN)

    yield apply
    background.drain(10)


# --- reading what the gateway stored ----------------------------------------------------------------


def _call(sid: str) -> Call:
    return Call.objects.get(provider_call_id=sid)


@sync_to_async
def transcript(sid: str) -> list[tuple[str, str]]:
    return list(TranscriptEntry.objects.filter(call__provider_call_id=sid).order_by("timestamp", "pk")
                .values_list("speaker", "text"))


@sync_to_async
def events(sid: str, type: str) -> list[dict]:
    return list(CallEvent.objects.filter(call__provider_call_id=sid, type=type).order_by("pk")
                .values_list("payload", flat=True))


@sync_to_async
def ended(sid: str) -> Call | None:
    call = Call.objects.filter(provider_call_id=sid).first()
    return call if call is not None and call.is_terminal else None


async def finished(task: asyncio.Task, *, timeout: float = 30):
    report = await asyncio.wait_for(task, timeout)
    assert not report.error, report
    return report


def assert_playout_accounts_for_everything(report) -> None:
    assert report.frames_received > 0 and report.marks_received > 0, report
    assert report.frames_played + report.frames_cleared == report.frames_received, report
    assert report.marks_echoed == report.marks_received, report


# --- 1, 2: greeting, a line answered ---------------------------------------------------------------


async def test_the_caller_is_greeted_then_answered(gateway, rest_stub, model):
    model.script.turns = [Turn(transcript="When do you open on Sunday?", reply="At ten in the morning.", reply_ms=600)]
    sim, task = start_call(gateway(), [Line("question")], rest=rest_stub)
    report = await finished(task)
    assert report.outcome == "completed", report
    conn = model.last
    # The greeting was asked for as the model's first turn, with the configured words.
    assert conn.instructions[0] == greeting_instructions(GREETING)
    greeting, answer = conn.responses[0], conn.responses[1]
    assert greeting.cause == "instructed" and greeting.text == GREETED and greeting.status == "completed"
    # The caller played all of it before speaking: the first line waited for the greeting to end.
    assert sim.played_at_line["question"] * FRAME_MS >= greeting.audio_ms_sent > 0
    assert sim.frame_sizes == {FRAME_BYTES}  # 20 ms μ-law frames, nothing else
    # The line was heard (the input transcription), answered, and the answer played.
    assert conn.input_transcripts == ["When do you open on Sunday?"]
    assert answer.cause == "turn" and answer.status == "completed"
    assert report.frames_played * FRAME_MS >= greeting.audio_ms_sent + answer.audio_ms_sent
    assert len(report.turn_latencies_ms) == 1, report
    assert report.clears == 0
    assert_playout_accounts_for_everything(report)
    await stream_recorded(report.call_sid)
    assert await transcript(report.call_sid) == [
        ("bot", GREETED), ("user", "When do you open on Sunday?"), ("bot", "At ten in the morning.")]
    (turn,) = await events(report.call_sid, "realtime.turn")
    assert 0 <= turn["latencyMs"] < 5000, turn
    call = await ended(report.call_sid)
    assert call is not None and call.end_reason == "completed"  # the caller hung up
    # The gateway closed the model's socket when the call ended (the fake did not).
    await await_until(lambda: conn.ws.close_code is not None, "the model session closed")
    assert conn.closed_with is None


# --- 3: barge-in ----------------------------------------------------------------------------------


LONG_ANSWER = " ".join(f"word{n}" for n in range(60))


async def test_barge_in_clears_the_caller_and_truncates_at_what_was_heard(gateway, rest_stub, model):
    model.script.turns = [Turn(transcript="Read me the menu.", reply=LONG_ANSWER, reply_ms=6000),
                          Turn(transcript="Stop, that is enough.", reply="All right.", reply_ms=400)]
    # A little faster than real time, as the service streams: the answer is still being made when the
    # caller talks over it, so the model cancels it as well as the gateway cutting its playback.
    model.delta_gap = 0.08
    sim, task = start_call(gateway(), [Line("menu"), Line("stop", interrupt=True)], rest=rest_stub)
    report = await finished(task)
    assert report.outcome == "completed", report
    conn = model.last
    long = conn.responses[1]
    assert long.text == LONG_ANSWER and long.status == "cancelled" and long.reason == "turn_detected"
    assert report.clears >= 1, report
    interrupted_at = [t.at for t in report.transcript if t.who == "caller"][1]
    assert report.clear_at[0] > interrupted_at, report  # the clear answered the caller talking over
    assert_playout_accounts_for_everything(report)
    (truncation,) = conn.truncations
    assert truncation["ok"] and truncation["item_id"] == long.item_id, truncation
    heard_ms = truncation["audio_end_ms"]
    assert 0 < heard_ms <= truncation["sent_ms"] == long.audio_ms_sent
    # What the caller's playout played of that answer: the frames played between the first line and
    # the clear (the greeting had played out before the caller spoke). The gateway counts what was
    # heard from the marks the playout echoed (one every 200 ms of audio), so it may be up to one
    # mark interval short of it; and the playout goes on playing while the clear travels to it (the
    # barge-in decision, the clear over the socket, a jitter buffer's worth at most).
    played_ms = (sim.played_at_clear[0] - sim.played_at_line["menu"]) * FRAME_MS
    assert heard_ms <= played_ms <= heard_ms + 200 + JITTER_MS + 300, (heard_ms, played_ms)
    await stream_recorded(report.call_sid)
    lines = await transcript(report.call_sid)
    cut = [text for speaker, text in lines if speaker == "bot" and text.startswith("word0")]
    assert len(cut) == 1 and 0 < len(cut[0]) < len(LONG_ANSWER), lines
    assert ("user", "Stop, that is enough.") in lines and ("bot", "All right.") in lines, lines
    stats = (await sync_to_async(lambda: MediaStream.objects.get(call__provider_call_id=report.call_sid).stats)())
    assert stats["barge_ins"] >= 1 and stats["truncations"] == 1, stats


# --- 4, 10: a consult through the llm responder, and the admin page ------------------------------


CONSULT = ToolScript("openclaw_agent_consult", {"question": "Sunday opening hours", "reason": "current_external_data"},
                     call_id="call_sunday")


def spoken_answer(output: str) -> str:
    """The fake model speaks the consult's answer it was given."""
    return json.loads(output).get("answer") or "Sorry, I could not find out."


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


async def test_a_consult_runs_the_llm_agent_and_the_model_speaks_its_answer(gateway, rest_stub, model, llm, staff):
    model.script.turns = [Turn(transcript="Are you open on Sunday?", tool=CONSULT, reply=spoken_answer),
                          Turn(transcript="Thanks, bye.", reply="Bye now.", reply_ms=400)]
    sim, task = start_call(gateway(), [Line("sunday"), Line("bye")], rest=rest_stub, held=("bye",))
    conn = await _connected(model)
    answered = await await_until(lambda: [r for r in conn.responses if r.cause == "tool_answer" and r.status == "completed"],
                                 "the model to speak the consult's answer")
    sim.go("bye")
    report = await finished(task)
    assert report.outcome == "completed", report
    # The model called the tool; while the agent worked it was told to say it is checking.
    assert conn.responses[1].call_id == "call_sunday"
    assert checking_instructions() in conn.instructions
    checking = next(r for r in conn.responses if r.instructions == checking_instructions())
    assert checking.text == "Let me check." and checking.status == "completed"
    # The llm responder was asked, with the question and the call's transcript.
    (request,) = llm.requests
    prompt = request.json["messages"][-1]["content"]
    assert "Sunday opening hours" in prompt and "Are you open on Sunday?" in prompt, prompt
    # Its answer went back as the function output, and the model spoke it.
    (call_id, output), = conn.tool_outputs
    assert call_id == "call_sunday" and json.loads(output) == {"answer": LLM_ANSWER, "source": "agent"}
    assert answered[0].text == LLM_ANSWER
    await stream_recorded(report.call_sid)
    lines = await transcript(report.call_sid)
    assert lines == [("bot", GREETED), ("user", "Are you open on Sunday?"), ("bot", "Let me check."),
                     ("bot", LLM_ANSWER), ("user", "Thanks, bye."), ("bot", "Bye now.")], lines
    (tool_call,) = await events(report.call_sid, "realtime.tool_call")
    (tool_result,) = await events(report.call_sid, "realtime.tool_result")
    (consulted,) = await events(report.call_sid, "realtime.consult")
    assert tool_call["name"] == tool_result["name"] == "openclaw_agent_consult"
    assert LLM_ANSWER in json.dumps(tool_result) and consulted["answer"] == LLM_ANSWER
    turns = await events(report.call_sid, "realtime.turn")
    assert len(turns) == 2 and all(t["latencyMs"] >= 0 for t in turns)
    # The admin's call page shows the transcript, the turns' latencies and the tool events.
    call = await sync_to_async(_call)(report.call_sid)
    page = await sync_to_async(staff.get)(reverse("admin:calls_call_change", args=[call.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    for text in ("Are you open on Sunday?", LLM_ANSWER, "Bye now.", f"latency {turns[0]['latencyMs']} ms",
                 "realtime.tool_call", "realtime.tool_result", "openclaw_agent_consult", "consult: Sunday opening hours"):
        assert text in html, text


async def _connected(model: FakeOpenAIRealtime, count: int = 1):
    await model.wait_connections(count)
    conn = model.connections[count - 1]
    await await_until(lambda: conn.updates, "the session setup")
    return conn


# --- 5: the model ends the call -------------------------------------------------------------------


async def test_the_model_says_goodbye_then_hangs_up(gateway, rest_stub, model):
    model.script.turns = [Turn(transcript="That is all, thanks.", tool=ToolScript("openclaw_end_call", {}),
                               say_first="Goodbye, have a lovely day.", reply="Bye.")]
    sim, task = start_call(gateway(), [Line("done")], rest=rest_stub)
    report = await finished(task)
    conn = model.last
    last_words = conn.responses[1]
    assert last_words.text == "Goodbye, have a lovely day." and last_words.call_id
    assert conn.tool_outputs and conn.tool_outputs[0][0] == last_words.call_id
    # The gateway hung up the carrier call (the REST stub saw it) after the last words played.
    assert report.outcome == "hangup-bot", report
    assert ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{report.call_sid}.json") in [r[:2] for r in rest_stub.requests]
    assert rest_stub.status[report.call_sid] == "completed"
    greeting = conn.responses[0]
    assert report.frames_played * FRAME_MS >= greeting.audio_ms_sent + last_words.audio_ms_sent, report
    assert report.clears == 0
    call = await await_until(lambda: ended(report.call_sid), "the call to end")
    assert call.end_reason == "completed"
    (tool_call,) = await events(report.call_sid, "realtime.tool_call")
    assert tool_call["name"] == "openclaw_end_call"
    # The gateway closed the model's socket (the fake did not).
    await await_until(lambda: conn.ws.close_code is not None, "the model session closed")
    assert conn.closed_with is None


# --- 6: the provider drops ------------------------------------------------------------------------


async def test_a_dropped_model_connection_is_reopened_and_the_call_goes_on(gateway, rest_stub, model):
    model.script.turns = [Turn(transcript="First question.", reply="First answer.", reply_ms=400),
                          Turn(transcript="Second question.", reply="Second answer.", reply_ms=400)]
    sim, task = start_call(gateway(), [Line("first"), Line("second")], rest=rest_stub, held=("second",))
    first = await _connected(model)
    await await_until(lambda: [r for r in first.responses if r.cause == "turn" and r.status == "completed"],
                      "the first line answered")
    await model.close(1011, "internal error")
    second = await _connected(model, 2)
    sim.go("second")
    report = await finished(task)
    assert report.outcome == "completed", report
    # The new connection got the whole setup again, heard the next line and answered it.
    (update,) = second.messages("session.update")
    assert update["session"]["instructions"] and update["session"]["tools"]
    assert second.input_transcripts == ["Second question."]
    assert [r.text for r in second.responses if r.cause == "turn"] == ["Second answer."]
    await stream_recorded(report.call_sid)
    lines = await transcript(report.call_sid)
    assert lines[-2:] == [("user", "Second question."), ("bot", "Second answer.")], lines
    assert len(report.turn_latencies_ms) == 2, report
    call = await ended(report.call_sid)
    assert call is not None and call.end_reason == "completed"


@pytest.mark.parametrize("code, reason", [(1000, "completed"), (1008, "error")])
async def test_a_model_that_hangs_up_ends_the_call(gateway, rest_stub, model, code, reason):
    sim, task = start_call(gateway(), [Line("never said")], rest=rest_stub, held=("never said",))
    conn = await _connected(model)
    await await_until(lambda: conn.responses and conn.responses[0].status == "completed", "the greeting")
    await model.close(code, "policy violation" if code == 1008 else "")
    report = await finished(task, timeout=15)
    assert report.outcome == "hangup-bot", report
    assert rest_stub.status[report.call_sid] == "completed"
    call = await await_until(lambda: ended(report.call_sid), "the call to end")
    assert call.end_reason == reason
    assert len(model.connections) == 1  # a final close is not retried


# --- 7: the provider never answers ----------------------------------------------------------------


async def test_a_model_that_never_answers_ends_the_call_with_a_reason(gateway, rest_stub, model, monkeypatch, caplog):
    monkeypatch.setattr(bridge, "CONNECT_TIMEOUT", 0.5)
    model.never_answer = True
    sim, task = start_call(gateway(), [Line("hello?")], rest=rest_stub, held=("hello?",))
    report = await finished(task, timeout=15)
    assert report.outcome == "hangup-bot", report
    assert rest_stub.status[report.call_sid] == "completed"
    call = await await_until(lambda: ended(report.call_sid), "the call to end")
    assert call.end_reason == "error"
    assert "the realtime provider openai did not connect: no answer within 0.5 s" in caplog.text
    assert report.frames_received == 0  # nothing was said: the call was not left open in silence
    assert call.ended_at and call.answered_at and (call.ended_at - call.answered_at).total_seconds() < 5


# --- 8: consultPolicy always ----------------------------------------------------------------------


async def test_consult_policy_always_consults_for_a_model_that_did_not(gateway, rest_stub, model, llm):
    model.script.turns = [Turn(transcript="Do you have rye bread?", reply="Yes, we do.", reply_ms=400),
                          Turn(transcript="Thanks, bye.", reply="Bye now.", reply_ms=400)]
    sim, task = start_call(gateway(realtime={"consultPolicy": "always"}), [Line("rye"), Line("bye")], rest=rest_stub,
                           held=("bye",))
    conn = await _connected(model)
    injected = await await_until(lambda: [r for r in conn.responses if r.cause == "instructed"
                                          and r.instructions != conn.instructions[0] and r.status == "completed"],
                                 "the forced consult's answer spoken")
    sim.go("bye")
    report = await finished(task)
    assert report.outcome == "completed", report
    assert conn.responses[1].cause == "turn" and not conn.tool_outputs  # the model answered by itself
    # One forced consult per caller line the model answered without consulting (the goodbye too).
    assert "Do you have rye bread?" in llm.requests[0].json["messages"][-1]["content"]
    assert injected[0].instructions == speak_instructions(LLM_ANSWER) and injected[0].text == LLM_ANSWER
    await stream_recorded(report.call_sid)
    consulted = await events(report.call_sid, "realtime.consult")
    assert consulted[0]["forced"] and consulted[0]["question"] == "Do you have rye bread?"
    assert consulted[0]["answer"] == LLM_ANSWER
    assert len(consulted) == len(llm.requests) <= 2
    assert ("bot", LLM_ANSWER) in await transcript(report.call_sid)


# --- 9: voicecall.speak on a live realtime call ---------------------------------------------------


async def test_speak_is_said_by_the_model_and_refused_once_the_stream_is_gone(gateway, rest_stub, model, monkeypatch):
    from calls.services import streams

    monkeypatch.setattr(streams, "DISCONNECT_GRACE", streams.DISCONNECT_GRACE * 15)  # the call outlives its stream
    speak = sync_to_async(services.call_speak_request, thread_sensitive=False)
    sim, task = start_call(gateway(), [Line("ok")], rest=rest_stub, held=("ok",))
    sim.completed_gate = asyncio.Event()
    conn = await _connected(model)
    await await_until(lambda: conn.responses and conn.responses[0].status == "completed", "the greeting")
    call = await sync_to_async(_call)(sim.sid)
    result = await speak(call_id=str(call.pk), message="Your cake is ready.", allow_twiml_fallback=False)
    assert result.success, result
    spoken = await await_until(lambda: [r for r in conn.responses if r.text == "Your cake is ready."
                                        and r.status == "completed"], "the injected words spoken")
    assert spoken[0].instructions == speak_instructions("Your cake is ready.")
    sim.go("ok")
    await await_until(lambda: sim.stream_stopped, "the caller to stop the stream")
    await stream_recorded(sim.sid)
    result = await speak(call_id=str(call.pk), message="Are you still there?", allow_twiml_fallback=False)
    assert not result.success and result.error == "Realtime bridge is not active"
    sim.completed_gate.set()
    report = await finished(task)
    assert report.outcome == "completed", report
    assert len([i for i in conn.instructions if "Are you still there?" in i]) == 0


# --- transfer -------------------------------------------------------------------------------------


async def test_the_model_hands_the_caller_to_a_person(gateway, rest_stub, model):
    model.script.turns = [Turn(transcript="Can I talk to a person?", tool=ToolScript("openclaw_transfer_call", {}),
                               say_first="Of course, transferring you now.", reply="")]
    sim, task = start_call(gateway(agents={"main": {"transferTo": "sip:desk@bakery.example.com"}}), [Line("person")],
                           rest=rest_stub)
    report = await finished(task)
    conn = model.last
    assert "openclaw_transfer_call" in [tool["name"] for tool in conn.session.get("tools", [])]
    assert conn.responses[1].text == "Of course, transferring you now."
    # The carrier got the call's new TwiML (the <Dial>) and never a hang-up.
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{report.call_sid}.json"
    updates = [form for method, where, form in rest_stub.requests if (method, where) == ("POST", path)]
    assert len(updates) == 1 and "<Sip" in updates[0]["Twiml"][0] and "sip:desk@bakery.example.com" in updates[0]["Twiml"][0]
    assert rest_stub.status[report.call_sid] == "in-progress"
    # Its last words played before the hand-over.
    greeting, last_words = conn.responses[0], conn.responses[1]
    assert report.frames_played * FRAME_MS >= greeting.audio_ms_sent + last_words.audio_ms_sent, report
    call = await await_until(lambda: ended(report.call_sid), "the call to end")
    assert call.end_reason == "transferred"
    (result,) = await events(report.call_sid, "realtime.tool_result")
    assert result["name"] == "openclaw_transfer_call" and result["transferred"] is True
    transfer = await sync_to_async(lambda: call.transfers.get())()
    assert (transfer.target, transfer.kind, transfer.requested_by) == ("sip:desk@bakery.example.com", "cold", "realtime")
