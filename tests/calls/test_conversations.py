"""Automatic replies through the mock carrier: responders, routes, memory, superseding, failures."""
from __future__ import annotations

import logging

import pytest

from calls import background
from calls.models import Call, ConversationSession, ReplyStatus, ReplyTurn, SessionMessage, TranscriptEntry
from calls.services import event_process
from core.events import CallAnswered, CallInitiated, CallSpeech, now_ms
from providers.carriers import mock
from providers.responders.spoken import OPENING_CONTEXT_POLICY, OUTPUT_CONTRACT
from routing.models import NumberRoute
from tests.fakes.agent import FakeAgentWebhook
from tests.fakes.ai.llm import FakeChatCompletions
from tests.logs import records_of
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CALLER = "+15557654321"
LINE_A = "+15550001111"
LINE_B = "+15550002222"
KEY = "sk-fake-llm"


@pytest.fixture
def llm():
    with FakeChatCompletions(api_key=KEY, reply='{"spoken": "We open at nine."}') as fake:
        yield fake


def llm_config(llm, **extra):
    return {
        "provider": "mock",
        "inboundPolicy": "open",
        "inboundGreeting": "Welcome to the shop.",
        "responseModel": "fake/shop-model",
        "models": {"providers": {"fake": {"baseUrl": llm.url, "apiKey": KEY}}},
        **extra,
    }


_calls = iter(range(1, 10**6))


def ring(caller: str = CALLER, to: str = LINE_A) -> Call:
    """An inbound call rings and is answered; the greeting is said. Returns the call."""
    sid = f"mock-in-{next(_calls)}"
    event_process(event=CallInitiated(call_id=sid, provider_call_id=sid, direction="inbound", from_number=caller, to_number=to))
    event_process(event=CallAnswered(call_id=sid, provider_call_id=sid))
    return Call.objects.get(provider_call_id=sid)


def say(call: Call, text: str, **fields) -> None:
    event_process(event=CallSpeech(call_id=str(call.pk), provider_call_id=call.provider_call_id, transcript=text, **fields))


def spoken(call: Call) -> list[str]:
    return [r.params["text"] for r in mock.outbox if r.action == "play_tts" and r.provider_call_id == call.provider_call_id]


def bot_lines(call: Call) -> list[str]:
    return list(TranscriptEntry.objects.filter(call=call, speaker="bot").values_list("text", flat=True))


def messages_of(request) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request.json["messages"]]


# --- one turn, with a route ------------------------------------------------------------------


def test_reply_uses_the_route_prompt_model_and_voice(configure, llm):
    configure(llm_config(llm, numbers={LINE_A: {
        "inboundGreeting": "Bakery, good morning.",
        "responseModel": "fake/bakery-model",
        "responseSystemPrompt": "You answer the bakery's phone.",
        "tts": {"provider": "openai", "providers": {"openai": {"voice": "nova"}}},
    }}))
    call = ring()
    say(call, "When do you open?")
    request = llm.last
    assert request.json["model"] == "bakery-model" and request.json["stream"] is True
    assert request.headers["authorization"] == f"Bearer {KEY}"
    (system, system_text), (user, user_text) = messages_of(request)
    assert (system, user) == ("system", "user")
    assert system_text == "\n\n".join(["You answer the bakery's phone.", OPENING_CONTEXT_POLICY, OUTPUT_CONTRACT])
    # The caller has not spoken before: the greeting travels as untrusted opening context.
    assert user_text == ("[Audible call-opening context]\nAssistant: Bakery, good morning.\n"
                         "[End audible call-opening context]\n\nCurrent caller message:\nWhen do you open?")
    assert spoken(call) == ["Bakery, good morning.", "We open at nine."]
    assert {r.params["voice"] for r in mock.outbox if r.action == "play_tts"} == {"nova"}
    assert bot_lines(call) == ["Bakery, good morning.", "We open at nine."]
    reply = ReplyTurn.objects.get(call=call)
    assert (reply.status, reply.transcript, reply.reply) == (ReplyStatus.SPOKEN, "When do you open?", "We open at nine.")
    assert reply.first_text_ms is not None and reply.first_audio_ms is not None and reply.total_ms is not None
    assert reply.first_text_ms <= reply.first_audio_ms <= reply.total_ms
    call.refresh_from_db()
    assert call.route_key == LINE_A and "tts" not in call.route
    assert not call.is_terminal


def test_unrouted_number_uses_the_generated_prompt_and_global_settings(configure, llm):
    configure(llm_config(llm, numbers={LINE_A: {"responseModel": "fake/bakery-model"}},
                         agents={"main": {"name": "Ada", "responder": {"type": "llm"}}}))
    call = ring(to=LINE_B)
    say(call, "Hello?")
    request = llm.last
    assert request.json["model"] == "shop-model"
    system_text = request.json["messages"][0]["content"]
    assert system_text.startswith("You are Ada, a helpful voice assistant on a phone call. Keep responses brief and "
                                  f"conversational (1-2 sentences max). Be natural and friendly. The caller's phone number is {CALLER}.")
    assert call.route is None and spoken(call) == ["Welcome to the shop.", "We open at nine."]


def test_second_turn_sends_the_first_as_history_without_the_opening_envelope(configure, llm):
    configure(llm_config(llm))
    llm.reply = lambda body: '{"spoken": "Reply to: %s"}' % body["messages"][-1]["content"].splitlines()[-1]
    call = ring()
    say(call, "First question.")
    say(call, "Second question.")
    second = llm.requests[-1]
    assert messages_of(second)[1:] == [
        ("user", "First question."), ("assistant", "Reply to: First question."), ("user", "Second question."),
    ]
    assert spoken(call)[1:] == ["Reply to: First question.", "Reply to: Second question."]


# --- sessions and memory ------------------------------------------------------------------------


def test_per_phone_memory_continues_in_the_next_call(configure, llm):
    configure(llm_config(llm))
    llm.reply = '{"spoken": "Noted, a table for two."}'
    first = ring()
    say(first, "Book a table for two.")
    event_process(event=_ended(first))
    second = ring()
    assert second.session_key == first.session_key == "agent:main:voice:15557654321"
    say(second, "What did I book?")
    history = messages_of(llm.last)[1:-1]
    assert history == [("user", "Book a table for two."), ("assistant", "Noted, a table for two.")]
    session = ConversationSession.objects.get(key=first.session_key)
    assert list(session.messages.values_list("role", flat=True)) == ["user", "assistant", "user", "assistant"]


def test_per_call_scope_starts_each_call_fresh(configure, llm):
    configure(llm_config(llm, sessionScope="per-call"))
    first = ring()
    say(first, "Book a table for two.")
    second = ring()
    assert second.session_key == f"agent:main:voice:call:{second.pk}".lower()
    say(second, "What did I book?")
    assert len(messages_of(llm.last)) == 2  # system and this turn only


def test_main_scope_shares_one_session_between_callers(configure, llm):
    configure(llm_config(llm, sessionScope="main"))
    say(ring(caller="+15557650001"), "I am the first caller.")
    other = ring(caller="+15557650002")
    assert other.session_key == "agent:main:main"
    say(other, "And I am the second.")
    assert ("user", "I am the first caller.") in messages_of(llm.last)


def test_memory_survives_a_restart_because_it_is_in_the_database(configure, llm):
    configure(llm_config(llm))
    say(ring(), "Remember the blue door.")
    from calls import conversation

    conversation._responders.clear()  # as a fresh process would
    configure(llm_config(llm))
    say(ring(), "Which door?")
    assert ("user", "Remember the blue door.") in messages_of(llm.last)


def test_history_is_capped_by_history_messages(configure, llm):
    configure(llm_config(llm, agents={"main": {"responder": {"type": "llm", "historyMessages": 2}}}))
    call = ring()
    for n in range(3):
        say(call, f"Question {n}.")
    assert messages_of(llm.last)[1:-1] == [("user", "Question 1."), ("assistant", "We open at nine.")]


def _ended(call: Call):
    from core.events import CallEnded

    return CallEnded(call_id=str(call.pk), provider_call_id=call.provider_call_id, reason="completed")


# --- superseded replies ----------------------------------------------------------------------------


def test_a_newer_utterance_discards_a_reply_still_being_generated(configure, llm):
    configure(llm_config(llm))
    llm.reply = lambda body: ('{"spoken": "Answer to the old question."}' if "old" in body["messages"][-1]["content"]
                              else '{"spoken": "Answer to the new question."}')
    llm.chunk_chars, llm.delay_between_chunks = 2, 0.05  # the old answer takes about a second to stream
    background.set_mode("thread")
    call = ring()
    background.drain(10)
    say(call, "An old question.")
    wait_until(lambda: llm.requests and llm.requests[-1].chunk_times)
    say(call, "A new question.")
    background.drain(20)
    assert spoken(call) == ["Welcome to the shop.", "Answer to the new question."]
    old, new = ReplyTurn.objects.filter(call=call).order_by("pk")
    assert (old.status, old.reply) == (ReplyStatus.SUPERSEDED, "")
    assert new.status == ReplyStatus.SPOKEN
    # The discarded generation was stopped, not read to its end.
    wait_until(lambda: llm.requests[0].finished.is_set())
    assert llm.requests[0].outcome == "client-closed"
    # The old question is still part of the conversation.
    assert ("user", "An old question.") in messages_of(llm.requests[-1])


# --- bad replies and failures --------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "heard", "status"), [
    (lambda fake: setattr(fake, "reply", "Thinking process: the user wants hours. I should answer.\n\nWe open at nine."),
     "We open at nine.", ReplyStatus.SPOKEN),
    (lambda fake: setattr(fake, "reply", '```json\n{"spoken": "Fenced but fine."}\n```'), "Fenced but fine.", ReplyStatus.SPOKEN),
    (lambda fake: setattr(fake, "reply", '{"spoken": ""}'), None, ReplyStatus.SILENT),
    (lambda fake: setattr(fake, "status", 500), "Sorry, I'm having trouble answering right now.", ReplyStatus.FAILED),
    (lambda fake: setattr(fake, "hang", True), "Sorry, I'm having trouble answering right now.", ReplyStatus.FAILED),
    (lambda fake: (setattr(fake, "garbage", 5), setattr(fake, "reply", "Despite the noise, hello.")),
     "Despite the noise, hello.", ReplyStatus.SPOKEN),
    (lambda fake: setattr(fake, "drop_after_chunks", 0), "Sorry, I'm having trouble answering right now.", ReplyStatus.FAILED),
], ids=["planning-lead-in", "fenced-json", "empty-spoken", "http-500", "timeout", "garbage-lines", "dropped-before-text"])
def test_bad_model_output_and_failures(configure, llm, caplog, setup, heard, status):
    configure(llm_config(llm, responseTimeoutMs=1500))
    setup(llm)
    call = ring()
    with caplog.at_level(logging.WARNING, logger="calls"):
        say(call, "When do you open?")
    assert spoken(call)[1:] == ([heard] if heard else [])
    reply = ReplyTurn.objects.get(call=call)
    assert reply.status == status
    warnings = records_of(caplog, "calls", logging.WARNING)
    assert len(warnings) == (1 if status == ReplyStatus.FAILED else 0), [r.getMessage() for r in warnings]
    if status == ReplyStatus.FAILED:
        assert "llm responder" in reply.error and KEY not in reply.error
    call.refresh_from_db()
    assert not call.is_terminal and call.state in ("speaking", "listening")
    say(call, "Are you there?")  # the call goes on: the next turn is answered again
    assert ReplyTurn.objects.filter(call=call).count() == 2


def test_a_silent_fallback_says_nothing(configure, llm):
    configure(llm_config(llm, agents={"main": {"responder": {"type": "llm", "fallbackText": ""}}}))
    llm.status = 503
    call = ring()
    say(call, "Hello?")
    assert spoken(call) == ["Welcome to the shop."]
    assert ReplyTurn.objects.get(call=call).status == ReplyStatus.FAILED


def test_an_unknown_model_provider_at_reply_time_falls_back(configure, llm):
    configure(llm_config(llm, agents={"main": {"responder": {"type": "llm", "fallbackText": "One moment please."}}}))
    call = ring()
    llm.stop()  # the endpoint is gone
    say(call, "Hello?")
    assert spoken(call) == ["Welcome to the shop.", "One moment please."]


def test_no_responder_and_no_model_means_no_automatic_reply(configure):
    configure({"provider": "mock", "inboundPolicy": "open"})
    call = ring()
    say(call, "Hello?")
    assert spoken(call) == ["Hello! How can I help you today?"]
    assert not ReplyTurn.objects.exists() and not SessionMessage.objects.exists()


def test_outbound_notify_calls_never_reply(configure, llm):
    configure(llm_config(llm))
    from calls.services import call_initiate

    call = call_initiate(to=LINE_B, message="Your order is ready.", mode="notify")
    event_process(event=CallAnswered(call_id=str(call.pk), provider_call_id=call.provider_call_id))
    say(Call.objects.get(pk=call.pk), "Thanks!")
    assert not ReplyTurn.objects.exists() and llm.requests == []


# --- webhook and scripted responders --------------------------------------------------------------


@pytest.fixture
def agent():
    fake = FakeAgentWebhook(secret="agent-secret").start()
    yield fake
    fake.stop()


def test_webhook_agent_gets_the_signed_turn_and_can_hang_up(configure, agent):
    configure({
        "provider": "mock", "inboundPolicy": "open", "inboundGreeting": "Hi there.",
        "agents": {"desk": {"responder": {"type": "webhook", "url": agent.url, "secret": "agent-secret"}}},
    })
    agent.reply = lambda turn: {"spoken": f"You said {turn['transcript']}", "hangup": "bye" in turn["transcript"]}
    call = ring()
    assert call.agent_id == "desk"
    say(call, "hello")
    # Heard in a later millisecond than the reply's first words: event times are whole milliseconds,
    # and the reply inline can finish within the one its words started in.
    say(call, "bye now", timestamp=now_ms() + 1)
    assert spoken(call) == ["Hi there.", "You said hello", "You said bye now"]
    first, second = agent.turns
    assert (first["callId"], first["agentId"], first["from"], first["to"]) == (str(call.pk), "desk", CALLER, LINE_A)
    assert first["sessionKey"] == "agent:desk:voice:15557654321"
    assert second["history"] == [{"role": "user", "text": "hello"}, {"role": "assistant", "text": "You said hello"}]
    assert [r.action for r in mock.outbox if r.action == "hangup_call"] == ["hangup_call"]
    call.refresh_from_db()
    assert call.is_terminal


def test_webhook_agent_down_gives_the_fallback_line(configure, agent, caplog):
    configure({
        "provider": "mock", "inboundPolicy": "open", "inboundGreeting": "Hi there.",
        "agents": {"desk": {"responder": {"type": "webhook", "url": agent.url, "secret": "agent-secret"}}},
    })
    agent.stop()
    call = ring()
    with caplog.at_level(logging.WARNING, logger="calls"):
        say(call, "hello")
    assert spoken(call) == ["Hi there.", "Sorry, I'm having trouble answering right now."]
    assert len(records_of(caplog, "calls", logging.WARNING)) == 1
    assert not Call.objects.get(pk=call.pk).is_terminal


def test_scripted_replies_follow_the_callers_utterances(configure):
    configure({"provider": "mock", "inboundPolicy": "open",
               "agents": {"main": {"responder": {"type": "scripted", "replies": ["One: {transcript}", "Two."]}}}})
    call = ring()
    for text in ("a", "b", "c"):
        say(call, text)
    assert spoken(call)[1:] == ["One: a", "Two.", "Two."]


# --- routes -----------------------------------------------------------------------------------------


def test_admin_route_wins_over_the_config_route_and_is_kept_for_the_whole_call(configure, llm):
    configure(llm_config(llm, numbers={LINE_A: {"inboundGreeting": "Config greeting.", "responseSystemPrompt": "Config prompt."}}))
    NumberRoute.objects.create(number=LINE_A, inbound_greeting="Admin greeting.", response_system_prompt="Admin prompt.")
    call = ring()
    NumberRoute.objects.filter(number=LINE_A).update(response_system_prompt="Edited mid-call.")
    say(call, "Hi.")
    assert spoken(call)[0] == "Admin greeting."
    assert llm.last.json["messages"][0]["content"].startswith("Admin prompt.")
    assert call.route_key == LINE_A


def test_route_matches_on_digits_when_the_carrier_formats_the_number_differently(configure, llm):
    configure(llm_config(llm, numbers={LINE_A: {"inboundGreeting": "Line A."}}))
    call = ring(to="1 (555) 000-1111")
    assert call.route_key == LINE_A and spoken(call) == ["Line A."]
