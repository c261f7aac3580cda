"""Responders against loopback fakes: the llm responder's Chat Completions stream, the signed webhook, the script."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from calls.free_ports import free_port
from core.config.models import ResolvedModel
from core.config.schema import ResponderConfig
from providers.responders import RESPONDERS, responder_for
from providers.responders.base import Hangup, HistoryMessage, ResponderError, Turn
from providers.responders.llm import NO_MODEL, LlmResponder
from providers.responders.scripted import ScriptedResponder
from providers.responders.webhook import SIGNATURE_HEADER, WebhookResponder, sign, verify
from tests.fakes.agent import FakeAgentWebhook
from tests.fakes.ai.llm import FakeChatCompletions, openai_error

API_KEY = "sk-test-0123456789abcdefSECRET"
SECRET = "whsec-0123456789-shared"
REPLY = "We open at nine in the morning and close at six in the evening."

HISTORY = (
    HistoryMessage("user", "Hi, is this the bakery?"),
    HistoryMessage("assistant", "Yes, Rosa's Bakery. How can I help?"),
)


def assert_out_of_time(error: Exception, head: str, budget_ms: int) -> None:
    """`<head> within N ms`, N being the budget left when the request went out: the turn's budget
    less what passed since the turn began (a millisecond or more on a loaded machine)."""
    said = re.fullmatch(rf"{re.escape(head)} within (\d+) ms", str(error))
    assert said and budget_ms - 100 <= int(said[1]) <= budget_ms, str(error)


def make_turn(model: ResolvedModel | None = None, *, budget: float = 5.0, **overrides: Any) -> Turn:
    values: dict[str, Any] = dict(
        call_id="call-123",
        agent_id="main",
        session_key="agent:main:voice:+15550001111",
        direction="inbound",
        from_number="+15550001111",
        to_number="+15550002222",
        transcript="What time do you open?",
        history=HISTORY,
        system_prompt="You are a phone agent. Keep replies short.",
        user_message="What time do you open?",
        model=model,
        deadline=time.monotonic() + budget,
    )
    values.update(overrides)
    return Turn(**values)


def llm_settings(**values: Any) -> ResponderConfig:
    return ResponderConfig.model_validate({"type": "llm", **values})


def model_for(fake: FakeChatCompletions, api_key: str | None = API_KEY, model: str = "gpt-test") -> ResolvedModel:
    return ResolvedModel(provider="fake", model=model, base_url=fake.url, api_key=api_key)


def collect(responder: Any, turn: Turn) -> list[str | Hangup]:
    return list(responder.respond(turn))


@pytest.fixture
def llm_fake():
    with FakeChatCompletions(api_key=API_KEY, reply=REPLY) as fake:
        yield fake
    assert not fake.errors, fake.errors


@pytest.fixture
def llm():
    responder = LlmResponder(None)
    yield responder
    responder.close()


_opened: list[Any] = []


@pytest.fixture(autouse=True)
def _close_responders():
    # pooled keep-alive connections would otherwise linger until garbage collection
    yield
    while _opened:
        _opened.pop().close()


def opened(responder: Any) -> Any:
    _opened.append(responder)
    return responder


@pytest.fixture
def agent():
    with FakeAgentWebhook(SECRET) as fake:
        yield fake
    assert not fake.errors, fake.errors


def webhook_for(fake: FakeAgentWebhook, secret: str = SECRET, url: str | None = None) -> WebhookResponder:
    return opened(WebhookResponder(ResponderConfig.model_validate(
        {"type": "webhook", "url": url or fake.url, "secret": secret})))


# --------------------------------------------------------------------------- llm: the request


def test_llm_sends_the_conversation_as_chat_completions_request(llm_fake):
    responder = LlmResponder(llm_settings(temperature=0.3, maxTokens=120))
    try:
        pieces = collect(responder, make_turn(model_for(llm_fake)))
    finally:
        responder.close()
    assert "".join(pieces) == REPLY
    request = llm_fake.last
    assert request.path == "/v1/chat/completions"
    assert request.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are a phone agent. Keep replies short."},
            {"role": "user", "content": "Hi, is this the bakery?"},
            {"role": "assistant", "content": "Yes, Rosa's Bakery. How can I help?"},
            {"role": "user", "content": "What time do you open?"},
        ],
        "stream": True,
        "temperature": 0.3,
        "max_tokens": 120,
    }
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["content-type"] == "application/json"


def test_llm_sends_the_wrapped_user_message_not_the_bare_transcript(llm_fake, llm):
    turn = make_turn(model_for(llm_fake), history=(), transcript="Hello?",
                     user_message="[The call opened with: 'Thanks for calling'] Hello?")
    collect(llm, turn)
    assert llm_fake.last.json["messages"][-1] == {"role": "user",
                                                  "content": "[The call opened with: 'Thanks for calling'] Hello?"}


def test_llm_leaves_out_unset_options_and_the_authorization_header():
    with FakeChatCompletions(reply="Hi.") as fake:  # no key: a local server such as Ollama
        responder = LlmResponder(llm_settings())
        try:
            assert collect(responder, make_turn(model_for(fake, api_key=None))) == ["Hi."]
        finally:
            responder.close()
        request = fake.last
    assert "temperature" not in request.json and "max_tokens" not in request.json
    assert "authorization" not in request.headers


def test_llm_sends_a_temperature_of_zero():
    # 0 is a real setting (deterministic replies), not "unset"
    with FakeChatCompletions(reply="Hi.") as fake:
        responder = LlmResponder(llm_settings(temperature=0))
        try:
            collect(responder, make_turn(model_for(fake, api_key=None)))
        finally:
            responder.close()
        assert fake.last.json["temperature"] == 0


# --------------------------------------------------------------------------- llm: the stream


def test_llm_yields_pieces_in_order_as_they_arrive(llm_fake, llm):
    llm_fake.chunk_chars = 8
    llm_fake.delay_between_chunks = 0.15
    seen: list[tuple[float, str]] = []
    for piece in llm.respond(make_turn(model_for(llm_fake))):
        seen.append((time.monotonic(), piece))
    pieces = [piece for _, piece in seen]
    assert pieces == llm_fake.pieces(REPLY)
    sent = llm_fake.last.chunk_times
    assert len(sent) == len(pieces) >= 8
    # the first piece reached the consumer long before the server sent its last delta
    assert seen[0][0] < sent[-1] - 0.5


def test_llm_never_yields_reasoning(llm_fake, llm):
    for field_name in ("reasoning_content", "reasoning"):
        llm_fake.reasoning = "PRIVATE: the user seems impatient, I should be brief."
        llm_fake.reasoning_field = field_name
        pieces = collect(llm, make_turn(model_for(llm_fake)))
        assert "".join(pieces) == REPLY, field_name
        assert not any("PRIVATE" in piece or "impatient" in piece for piece in pieces)


def test_llm_reads_a_plain_json_completion(llm_fake, llm):
    llm_fake.non_streaming = True
    llm_fake.reasoning = "PRIVATE thoughts"
    assert collect(llm, make_turn(model_for(llm_fake))) == [REPLY]


def test_llm_ignores_comments_and_other_sse_fields(llm_fake, llm):
    llm_fake.sse_noise = True
    assert "".join(collect(llm, make_turn(model_for(llm_fake)))) == REPLY


def test_llm_keeps_multibyte_characters_split_across_reads(llm, llm_fake):
    text = "¿Mañana? Sí — abrimos a las 9 ☎️ 谢谢"
    llm_fake.reply = text
    llm_fake.chunk_chars = 3
    llm_fake.split_events = True
    assert "".join(collect(llm, make_turn(model_for(llm_fake)))) == text


def test_llm_skips_garbage_lines_and_logs_their_count_once(llm_fake, llm, caplog):
    llm_fake.garbage = 3
    with caplog.at_level(logging.INFO, logger="providers.responders.llm"):
        assert "".join(collect(llm, make_turn(model_for(llm_fake)))) == REPLY
    notes = [r.getMessage() for r in caplog.records if "not JSON" in r.getMessage()]
    assert len(notes) == 1 and " 3 " in notes[0]
    assert "not json at all" not in notes[0]


def test_llm_reuses_its_connection_across_turns(llm_fake, llm):
    collect(llm, make_turn(model_for(llm_fake)))
    collect(llm, make_turn(model_for(llm_fake)))
    first, second = llm_fake.requests
    assert first.client_port == second.client_port


def test_llm_serves_turns_from_several_threads_at_once(llm_fake, llm):
    llm_fake.reply = lambda body: f"echo: {body['messages'][-1]['content']}"
    llm_fake.delay_between_chunks = 0.01
    results: dict[int, str] = {}

    def turn(index: int) -> None:
        results[index] = "".join(collect(llm, make_turn(model_for(llm_fake), user_message=f"caller {index}")))

    threads = [threading.Thread(target=turn, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {i: f"echo: caller {i}" for i in range(6)}


# --------------------------------------------------------------------------- llm: failures


def test_llm_without_a_model_names_the_settings(llm):
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(None))
    assert str(caught.value) == NO_MODEL


def test_llm_wrong_key_is_reported_without_the_key(llm_fake, llm):
    wrong = "sk-wrong-key-ABCDEFGHIJKLMNOP"
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake, api_key=wrong)))
    message = str(caught.value)
    assert message.startswith("llm responder: fake/gpt-test answered HTTP 401: Incorrect API key provided")
    assert wrong not in message and API_KEY not in message


def test_llm_missing_key_is_refused_by_the_fake(llm_fake, llm):
    with pytest.raises(ResponderError, match="HTTP 401: You didn't provide an API key"):
        collect(llm, make_turn(model_for(llm_fake, api_key=None)))


def test_llm_server_error_carries_status_and_message(llm_fake, llm):
    llm_fake.status = 500
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake)))
    assert str(caught.value) == ("llm responder: fake/gpt-test answered HTTP 500: "
                                 "The server had an error while processing your request. Sorry about that!")


def test_llm_bad_request_carries_the_validation_message(llm_fake, llm):
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake, model="")))
    assert "answered HTTP 400: you must provide a model parameter" in str(caught.value)


def test_llm_error_messages_are_clipped_and_never_echo_the_key(llm_fake, llm):
    llm_fake.status = 400
    llm_fake.error_body = openai_error(f"Key {API_KEY} is not valid for this model. " + "blah " * 200)
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake)))
    message = str(caught.value)
    assert API_KEY not in message and "[redacted]" in message
    detail = message.split("answered HTTP 400: ", 1)[1]
    assert len(detail) <= 200


def test_llm_html_error_page_is_reported_as_text(llm_fake, llm):
    llm_fake.status = 502
    llm_fake.error_body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    with pytest.raises(ResponderError, match="answered HTTP 502: <html><body><h1>502 Bad Gateway"):
        collect(llm, make_turn(model_for(llm_fake)))


def test_llm_error_event_mid_stream_fails_after_the_pieces_before_it(llm_fake, llm):
    llm_fake.error_after_chunks = 2
    pieces: list[Any] = []
    with pytest.raises(ResponderError) as caught:
        for piece in llm.respond(make_turn(model_for(llm_fake))):
            pieces.append(piece)
    assert pieces == llm_fake.pieces(REPLY)[:2]
    assert "mid-stream" in str(caught.value) and "Sorry about that" in str(caught.value)


def test_llm_dropped_stream_keeps_what_came(llm_fake, llm, caplog):
    llm_fake.drop_after_chunks = 3
    with caplog.at_level(logging.INFO, logger="providers.responders.llm"):
        pieces = collect(llm, make_turn(model_for(llm_fake)))
    assert pieces == llm_fake.pieces(REPLY)[:3]
    assert any("without [DONE]" in r.getMessage() for r in caplog.records)


def test_llm_dropped_stream_without_content_fails(llm_fake, llm):
    llm_fake.drop_after_chunks = 0
    with pytest.raises(ResponderError, match="ended the stream without any reply"):
        collect(llm, make_turn(model_for(llm_fake)))


def test_llm_server_that_never_answers_fails_by_the_deadline(llm_fake, llm):
    llm_fake.hang = True
    started = time.monotonic()
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake), budget=1.0))
    elapsed = time.monotonic() - started
    assert_out_of_time(caught.value, "llm responder: no complete reply", 1000)
    assert 0.9 <= elapsed < 2.0


def test_llm_stall_late_in_the_stream_still_meets_the_deadline(llm_fake, llm):
    # the last delta arrives shortly before the deadline: a read timeout alone would wait a whole budget more
    llm_fake.delay_between_chunks = 0.35
    llm_fake.hang = 3
    pieces: list[Any] = []
    started = time.monotonic()
    with pytest.raises(ResponderError) as caught:
        for piece in llm.respond(make_turn(model_for(llm_fake), budget=1.2)):
            pieces.append(piece)
    assert_out_of_time(caught.value, "llm responder: no complete reply", 1200)
    assert pieces == llm_fake.pieces(REPLY)[:3]
    assert time.monotonic() - started < 1.2 + 0.3


def test_llm_server_that_trickles_bytes_forever_fails_by_the_deadline(llm_fake, llm):
    llm_fake.trickle = 0.05
    started = time.monotonic()
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model_for(llm_fake), budget=1.0))
    assert_out_of_time(caught.value, "llm responder: no complete reply", 1000)
    assert time.monotonic() - started < 2.0


def test_llm_deadline_already_passed_sends_nothing(llm_fake, llm):
    with pytest.raises(ResponderError, match="no complete reply within 0 ms"):
        collect(llm, make_turn(model_for(llm_fake), deadline=time.monotonic() - 1))
    assert llm_fake.requests == []


def test_llm_consumer_closing_early_closes_the_connection(llm_fake, llm):
    llm_fake.delay_between_chunks = 0.1  # about six seconds of reply left when the consumer stops
    replies = llm.respond(make_turn(model_for(llm_fake), budget=20))
    assert next(replies) == llm_fake.pieces(REPLY)[0]
    replies.close()
    request = llm_fake.last
    assert request.finished.wait(2), "the server is still streaming to a consumer that left"
    assert request.outcome == "client-closed"


def test_llm_consumer_breaking_out_during_a_stall_closes_the_connection(llm_fake, llm):
    llm_fake.hang = 1  # the server would sit on the open stream until the fake stops
    for piece in llm.respond(make_turn(model_for(llm_fake), budget=20)):
        assert piece == llm_fake.pieces(REPLY)[0]
        break
    request = llm_fake.last
    assert request.finished.wait(2), "the stalled connection was left open"
    assert request.outcome == "client-closed"
    # the responder's pool is still usable after dropping that connection
    llm_fake.hang = None
    assert "".join(collect(llm, make_turn(model_for(llm_fake)))) == REPLY


def test_llm_unreachable_server(llm):
    port = free_port()
    model = ResolvedModel(provider="fake", model="gpt-test", base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
    with pytest.raises(ResponderError) as caught:
        collect(llm, make_turn(model))
    assert str(caught.value).startswith(f"llm responder: cannot reach 127.0.0.1:{port}: ")
    assert API_KEY not in str(caught.value)


# --------------------------------------------------------------------------- webhook: signing


def test_sign_and_verify_roundtrip_and_refusals():
    body = b'{"type":"turn"}'
    header = sign(SECRET, body, 1_700_000_000)
    assert header == "t=1700000000,v1=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(SECRET, body, header, now=1_700_000_000)
    assert verify(SECRET, body, header, now=1_700_000_300)
    assert not verify(SECRET, body, header, now=1_700_000_301)  # stale
    assert not verify(SECRET, body, header, now=1_699_999_699)  # from the future
    assert not verify("other-secret", body, header, now=1_700_000_000)
    assert not verify(SECRET, body + b" ", header, now=1_700_000_000)
    assert not verify(SECRET, body, header.replace("t=1700000000", "t=1700000001"), now=1_700_000_000)
    for broken in ("", "v1=abc", "t=1700000000", "t=soon,v1=abc", "t=1700000000,v1=é"):
        assert not verify(SECRET, body, broken, now=1_700_000_000), broken
    # a sender rotating secrets may send two signatures
    rotated = header + ",v1=" + "0" * 64
    assert verify(SECRET, body, rotated, now=1_700_000_000)


def test_webhook_sends_a_signed_compact_turn(agent):
    responder = webhook_for(agent)
    turn = make_turn(transcript="¿A qué hora abren?", replies_so_far=2)
    try:
        assert collect(responder, turn) == ["Sure, I can help with that."]
    finally:
        responder.close()
    request = agent.requests[-1]
    assert request.verified
    expected = {
        "type": "turn",
        "callId": "call-123",
        "agentId": "main",
        "sessionKey": "agent:main:voice:+15550001111",
        "direction": "inbound",
        "from": "+15550001111",
        "to": "+15550002222",
        "transcript": "¿A qué hora abren?",
        "history": [{"role": "user", "text": "Hi, is this the bakery?"},
                    {"role": "assistant", "text": "Yes, Rosa's Bakery. How can I help?"}],
        "replyNumber": 2,
    }
    assert request.body == json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "voicecall-gateway"
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert verify(SECRET, request.body, header)
    # independently of the module's helpers
    fields = dict(part.split("=", 1) for part in header.split(","))
    assert abs(int(fields["t"]) - time.time()) < 5
    digest = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], digest)


def test_webhook_with_the_wrong_secret_is_refused_by_the_agent(agent):
    responder = webhook_for(agent, secret="not-the-shared-secret")
    with pytest.raises(ResponderError, match="answered HTTP 401"):
        collect(responder, make_turn())
    assert agent.requests[-1].refusal == "mismatch"
    assert agent.turns == []


@pytest.mark.parametrize(("header", "refusal"), [
    (None, "missing"),
    ("garbage", "malformed"),
    ("stale", "stale"),
    ("tampered", "mismatch"),
])
def test_fake_agent_refuses_unsigned_stale_and_tampered_turns(agent, header, refusal):
    body = b'{"type":"turn","transcript":"hi"}'
    if header == "stale":
        header = sign(SECRET, body, int(time.time()) - 301)
    elif header == "tampered":
        header = sign(SECRET, b'{"type":"turn","transcript":"bye"}', int(time.time()))
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers[SIGNATURE_HEADER] = header
    answer = httpx.post(agent.url, content=body, headers=headers)
    assert answer.status_code == 401
    assert agent.requests[-1].refusal == refusal
    fresh = sign(SECRET, body, int(time.time()))
    good = httpx.post(agent.url, content=body, headers={**headers, SIGNATURE_HEADER: fresh})
    assert good.status_code == 200


# --------------------------------------------------------------------------- webhook: answers


def test_webhook_hangup_after_the_words(agent):
    agent.reply = {"spoken": "Goodbye, and thanks for calling!", "hangup": True}
    assert collect(webhook_for(agent), make_turn()) == ["Goodbye, and thanks for calling!", Hangup()]


def test_webhook_hangup_without_words(agent):
    agent.reply = {"spoken": "", "hangup": True}
    assert collect(webhook_for(agent), make_turn()) == [Hangup()]


def test_webhook_reply_can_depend_on_the_turn(agent):
    agent.reply = lambda turn: f"You said {turn['transcript']} (reply {turn['replyNumber']})"
    assert collect(webhook_for(agent), make_turn(replies_so_far=4)) == ["You said What time do you open? (reply 4)"]


def test_webhook_204_says_nothing(agent):
    agent.status = 204
    assert collect(webhook_for(agent), make_turn()) == []


def test_webhook_plain_text_is_the_words(agent):
    agent.content_type = "text/plain; charset=utf-8"
    agent.reply = "Abrimos a las nueve. ¡Hasta pronto!"
    assert collect(webhook_for(agent), make_turn()) == ["Abrimos a las nueve. ¡Hasta pronto!"]


def test_webhook_other_content_types_are_refused(agent):
    agent.content_type = "text/html"
    agent.body = b"<html>hello</html>"
    with pytest.raises(ResponderError) as caught:
        collect(webhook_for(agent), make_turn())
    assert str(caught.value) == "webhook responder: the agent answered with text/html, not JSON"


@pytest.mark.parametrize(("reply", "got"), [
    ({"text": "hello"}, "missing"),
    ({"spoken": 42}, "a int"),
    ({"spoken": None}, "a NoneType"),
])
def test_webhook_needs_spoken_as_a_string(agent, reply, got):
    agent.reply = reply
    with pytest.raises(ResponderError) as caught:
        collect(webhook_for(agent), make_turn())
    assert '"spoken"' in str(caught.value) and got in str(caught.value)


def test_webhook_refuses_a_non_boolean_hangup(agent):
    agent.reply = {"spoken": "ok", "hangup": "yes"}
    with pytest.raises(ResponderError, match='"hangup" must be true or false'):
        collect(webhook_for(agent), make_turn())


def test_webhook_refuses_json_that_does_not_parse(agent):
    agent.body = b'{"spoken": "unterminated'
    with pytest.raises(ResponderError, match="does not parse"):
        collect(webhook_for(agent), make_turn())


def test_webhook_server_error_carries_the_status_but_not_the_secret(agent):
    agent.status = 500
    agent.body = f"crashed while checking secret {SECRET}".encode()
    agent.content_type = "text/plain"
    with pytest.raises(ResponderError) as caught:
        collect(webhook_for(agent), make_turn())
    message = str(caught.value)
    assert message.startswith(f"webhook responder: {agent.url} answered HTTP 500: crashed while checking")
    assert SECRET not in message


def test_webhook_slow_agent_fails_by_the_deadline(agent):
    agent.delay = 3
    started = time.monotonic()
    with pytest.raises(ResponderError) as caught:
        collect(webhook_for(agent), make_turn(budget=0.5))
    assert_out_of_time(caught.value, f"webhook responder: {agent.url} did not answer", 500)
    assert time.monotonic() - started < 1.5


def test_webhook_answer_size_limit(agent):
    agent.reply = {"spoken": "x" * (64 * 1024 - 40)}
    assert collect(webhook_for(agent), make_turn()) == ["x" * (64 * 1024 - 40)]
    agent.reply = {"spoken": "x" * (64 * 1024)}
    with pytest.raises(ResponderError, match="larger than 64 KiB"):
        collect(webhook_for(agent), make_turn())


def test_webhook_unreachable_url_is_shown_without_query_or_credentials():
    port = free_port()
    url = f"http://agent:pa55word@127.0.0.1:{port}/turn?token=tok-123"
    settings = ResponderConfig.model_validate({"type": "webhook", "url": url, "secret": SECRET})
    responder = opened(WebhookResponder(settings))
    with pytest.raises(ResponderError) as caught:
        collect(responder, make_turn())
    message = str(caught.value)
    assert message.startswith(f"webhook responder: http://127.0.0.1:{port}/turn unreachable: ")
    assert "tok-123" not in message and "pa55word" not in message


def test_webhook_without_a_secret_refuses_to_send():
    responder = opened(WebhookResponder(SimpleNamespace(url="http://127.0.0.1:9/turn", secret=None)))
    with pytest.raises(ResponderError, match="no secret configured"):
        collect(responder, make_turn())


# --------------------------------------------------------------------------- scripted


def scripted(*replies: str) -> ScriptedResponder:
    return ScriptedResponder(ResponderConfig.model_validate({"type": "scripted", "replies": list(replies)}))


def test_scripted_says_replies_in_order_then_repeats_the_last():
    responder = scripted("Hello!", "Anything else?", "Goodbye.")
    said = [collect(responder, make_turn(replies_so_far=n)) for n in range(5)]
    assert said == [["Hello!"], ["Anything else?"], ["Goodbye."], ["Goodbye."], ["Goodbye."]]


def test_scripted_fills_in_the_transcript():
    responder = scripted("You said: {transcript}. Right?")
    assert collect(responder, make_turn(transcript="two pizzas")) == ["You said: two pizzas. Right?"]


def test_scripted_hangup_marks():
    assert collect(scripted("{hangup}"), make_turn()) == [Hangup()]
    assert collect(scripted("Goodbye! {hangup}"), make_turn()) == ["Goodbye!", Hangup()]
    # only a trailing mark counts, and the caller cannot say one into the script
    assert collect(scripted("Say {hangup} to leave"), make_turn()) == ["Say {hangup} to leave"]
    assert collect(scripted("You said {transcript}"), make_turn(transcript="ok {hangup}")) == ["You said ok {hangup}"]


def test_scripted_without_replies_fails():
    for responder in (scripted(), ScriptedResponder(None)):
        with pytest.raises(ResponderError) as caught:
            collect(responder, make_turn())
        assert str(caught.value) == "scripted responder: no replies configured"


# --------------------------------------------------------------------------- registry


def test_responder_for_each_type():
    assert type(opened(responder_for(None))) is LlmResponder
    for kind, cls in RESPONDERS.items():
        responder = responder_for(ResponderConfig.model_validate({"type": kind}))
        if hasattr(responder, "close"):
            opened(responder)
        assert type(responder) is cls
        assert cls.type == kind
    assert (LlmResponder.follows_contract, WebhookResponder.follows_contract, ScriptedResponder.follows_contract) \
        == (True, False, False)
    with pytest.raises(ValueError, match="'carrier-pigeon'"):
        responder_for(SimpleNamespace(type="carrier-pigeon"))
