"""Agent consults: through the scripted and llm responders, deadlines, fast context, the forced consult's answer."""
from __future__ import annotations

import time

import pytest

from calls.models import CallEvent
from calls.realtime import consult as consult_module
from calls.realtime.consult import NOT_IN_TIME, NOTHING_FOUND, consult, forced_consult_answer, question_words
from calls.realtime.tools import CONSULT_TOOL, ConsultRequest, tool_run
from calls.selectors import call_timeline
from providers.realtime.base import ToolCall
from providers.responders.spoken import OUTPUT_CONTRACT
from tests.fakes.agent import FakeAgentWebhook
from tests.fakes.ai.llm import FakeChatCompletions

from .helpers import base_config, ring, said

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-fake-llm"
HOURS = ConsultRequest(question="When does the bakery open on Sunday?", reason="current_external_data")


def scripted(*replies, **extra):
    return base_config(agents={"main": {"responder": {"type": "scripted", "replies": list(replies)}}}, **extra)


def test_consult_through_the_scripted_responder(configure):
    configure(scripted("First: {transcript}", "Second answer."))
    call = ring()
    assert consult(call_id=str(call.pk), request=HOURS) == {
        "answer": "First: When does the bakery open on Sunday?", "source": "agent"}
    assert consult(call_id=str(call.pk), request=HOURS)["answer"] == "Second answer."
    stored = [e.payload for e in CallEvent.objects.filter(call=call, type="realtime.consult")]
    assert [p["answer"] for p in stored] == ["First: When does the bakery open on Sunday?", "Second answer."]
    assert stored[0]["question"] == HOURS.question and stored[0]["source"] == "agent"
    row = next(r for r in call_timeline(call=call) if r["label"] == "realtime.consult")
    assert row["detail"].startswith("consult: When does the bakery open on Sunday? → First: When")


def test_consult_tool_run_returns_the_answer(configure):
    configure(scripted("Nine o'clock."))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall(
        "fc-1", CONSULT_TOOL, '{"query": "When do you open?", "reason": "current_external_data"}'))
    assert outcome.output == {"answer": "Nine o'clock.", "source": "agent"} and not outcome.end_call


@pytest.fixture
def llm():
    with FakeChatCompletions(api_key=KEY, reply='{"spoken": "We open at ten on Sundays."}') as fake:
        yield fake


def llm_config(llm, **extra):
    return base_config(responseModel="fake/shop-model",
                       models={"providers": {"fake": {"baseUrl": llm.url, "apiKey": KEY}}}, **extra)


def test_consult_through_the_llm_responder_carries_the_call(configure, llm):
    configure(llm_config(llm, responseSystemPrompt="You answer the bakery's phone."))
    earlier = ring()
    said(earlier, "user", "Do you sell rye bread?")
    said(earlier, "bot", "Yes, every day.")
    call = ring()  # the greeting is the call's first line
    said(call, "user", "I have a question about Sunday.")
    request = ConsultRequest(question="Sunday opening hours", reason="current_external_data",
                             context="caller plans a visit", response_style="one short sentence")
    output = consult(call_id=str(call.pk), request=request, partial="and is parking free")
    assert output == {"answer": "We open at ten on Sundays.", "source": "agent"}
    messages = llm.last.json["messages"]
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    assert system.startswith("You answer the bakery's phone.")
    assert consult_module.CONSULT_SYSTEM_PROMPT in system and OUTPUT_CONTRACT in system
    prompt = messages[-1]["content"]
    assert messages[-1]["role"] == "user"
    assert "The caller needs: Sunday opening hours" in prompt
    assert "Why the voice model is asking: current external data" in prompt
    assert "Context from the voice model: caller plans a visit" in prompt
    assert "Answer style: one short sentence" in prompt
    assert ("Call transcript so far (newest last):\nYou: Hello from the shop.\nCaller: I have a question about Sunday.\n"
            "Caller (still speaking): and is parking free") in prompt
    assert prompt.endswith("no markdown, no tool logs, no private reasoning.")
    # the session's memory goes as history: the same caller's earlier call is part of it
    history = [(m["role"], m["content"]) for m in messages[1:-1]]
    assert ("user", "Do you sell rye bread?") in history and ("assistant", "Yes, every day.") in history


def test_the_transcript_in_the_prompt_is_the_last_twelve_lines(configure, llm):
    configure(llm_config(llm))
    call = ring()
    for n in range(15):
        said(call, "user", f"line {n}")
    consult(call_id=str(call.pk), request=HOURS)
    prompt = llm.last.json["messages"][-1]["content"]
    assert "Caller: line 2\n" not in prompt and "Caller: line 3\n" in prompt and "Caller: line 14" in prompt


def test_plain_text_answers_are_made_speakable(configure, llm):
    llm.reply = "Thinking process: look it up.\n\nWe open at ten."
    configure(llm_config(llm))
    call = ring()
    assert consult(call_id=str(call.pk), request=HOURS)["answer"] == "We open at ten."


def test_a_consult_that_runs_out_of_time_is_an_error_result_within_the_deadline(configure, llm):
    llm.hang = True
    configure(llm_config(llm, responseTimeoutMs=300))
    call = ring()
    started = time.monotonic()
    output = consult(call_id=str(call.pk), request=HOURS)
    assert time.monotonic() - started < 2.0
    assert output == {"error": NOT_IN_TIME}
    (stored,) = [e.payload for e in CallEvent.objects.filter(call=call, type="realtime.consult")]
    assert stored["error"] == NOT_IN_TIME


def test_a_slow_agent_webhook_times_out_too(configure):
    with FakeAgentWebhook(secret="s", delay=30).start() as agent:
        configure(base_config(responseTimeoutMs=300,
                              agents={"main": {"responder": {"type": "webhook", "url": agent.url, "secret": "s"}}}))
        call = ring()
        started = time.monotonic()
        assert consult(call_id=str(call.pk), request=HOURS) == {"error": NOT_IN_TIME}
        assert time.monotonic() - started < 2.0


def test_a_failing_agent_is_an_error_result(configure, llm):
    llm.status = 500
    configure(llm_config(llm))
    call = ring()
    output = consult(call_id=str(call.pk), request=HOURS)
    assert output["error"].startswith("the agent could not answer: ")
    assert KEY not in output["error"]


# --- fast context ---------------------------------------------------------------------------------


def fast(**settings):
    return {"fastContext": {"enabled": True, **settings}}


def test_question_words_skip_filler():
    assert question_words("What are the Sunday opening hours, please? Sunday!") == ["sunday", "opening", "hours"]


def test_fast_context_answers_from_memory_and_earlier_calls(configure):
    configure(scripted("from the agent", realtime=fast(maxResults=2)))
    earlier = ring()
    said(earlier, "bot", "On Sunday we open at ten.")
    said(earlier, "user", "Thanks, bye.")
    stranger = ring(caller="+15550009999")
    said(stranger, "bot", "Sunday opening hours are secret.")
    call = ring()
    output = consult(call_id=str(call.pk), request=HOURS)
    assert output["source"] == "fastContext"
    assert output["answer"] == "On Sunday we open at ten."
    assert "secret" not in output["answer"]


def test_fast_context_prefers_more_shared_words_and_caps_results(configure):
    configure(scripted("from the agent", realtime=fast(maxResults=2, sources=["sessions"])))
    earlier = ring()
    said(earlier, "bot", "Bakery Sunday: open.")  # bakery, open, sunday: the oldest, and the best match
    said(earlier, "bot", "The bakery sells bread.")  # bakery
    said(earlier, "bot", "Sunday opening hours: ten to two.")  # sunday, open(ing)
    said(earlier, "bot", "Another bakery line.")  # bakery
    call = ring()
    output = consult(call_id=str(call.pk), request=HOURS)
    # most shared words first, however old; two at most
    assert output["answer"] == "Bakery Sunday: open. Sunday opening hours: ten to two."


def test_fast_context_miss_says_nothing_was_found(configure):
    configure(scripted("from the agent", realtime=fast()))
    call = ring()
    assert consult(call_id=str(call.pk), request=HOURS) == {"answer": NOTHING_FOUND, "source": "fastContext"}


def test_fast_context_miss_falls_back_to_the_agent_when_configured(configure):
    configure(scripted("from the agent", realtime=fast(fallbackToConsult=True)))
    call = ring()
    assert consult(call_id=str(call.pk), request=HOURS) == {"answer": "from the agent", "source": "agent"}


def test_fast_context_that_runs_out_of_time_finds_nothing(configure, monkeypatch):
    configure(scripted("from the agent", realtime=fast(timeoutMs=50)))
    earlier = ring()
    said(earlier, "bot", "On Sunday we open at ten.")
    call = ring()
    clock = [1000.0]
    monkeypatch.setattr(consult_module, "_clock", lambda: clock[0])
    real = consult_module._search_memory

    def slow(*args):
        clock[0] += 0.2  # the search took longer than the budget
        return real(*args)

    monkeypatch.setattr(consult_module, "_search_memory", slow)
    output = consult(call_id=str(call.pk), request=HOURS)
    assert output["answer"] == NOTHING_FOUND and output["note"] == "the search stopped after 50 ms"


def test_forced_consult_answer_is_cut_and_recorded(configure):
    configure(scripted("word " * 600))
    call = ring()
    answer = forced_consult_answer(call_id=str(call.pk), text="tell me everything")
    assert answer is not None and len(answer) <= 1800 and answer.endswith("…")
    (stored,) = [e.payload for e in CallEvent.objects.filter(call=call, type="realtime.consult")]
    assert stored["forced"] is True and stored["question"] == "tell me everything"
    row = next(r for r in call_timeline(call=call) if r["label"] == "realtime.consult")
    assert row["detail"].startswith("forced consult: tell me everything → word")


def test_consult_through_the_agent_webhook_says_it_is_a_consult(configure):
    with FakeAgentWebhook(secret="s", reply="Ten on Sundays.").start() as agent:
        configure(base_config(agents={"main": {"responder": {"type": "webhook", "url": agent.url, "secret": "s"}}}))
        call = ring()
        request = ConsultRequest(question="Sunday hours?", reason="current_external_data", context="visit",
                                 response_style="short", confirmation_id="")
        assert consult(call_id=str(call.pk), request=request, partial="and parking") == {
            "answer": "Ten on Sundays.", "source": "agent"}
        (turn,) = agent.turns
    assert turn["type"] == "turn" and turn["transcript"] == "Sunday hours?"
    assert turn["consult"] == {"question": "Sunday hours?", "reason": "current_external_data", "context": "visit",
                               "responseStyle": "short", "confirmationId": "", "partial": "and parking"}
