"""SQL statements per speaking job (automatic reply, greeting) on a streamed call, so the cost cannot creep back."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls.clock import now
from calls import conversation
from calls.conversation import auto_reply
from calls.models import Call, MediaStream, MessageRole, ReplyStatus, ReplyTurn, SessionMessage, TranscriptEntry
from calls.services.greeting import greeting_job
from calls.services.memory import session_message_add

pytestmark = pytest.mark.django_db(transaction=True)

# Statements before the first sentence is handed to the stream (on the caller's turn latency),
# after it (once playback is over), and for a whole greeting.
MAX_BEFORE_SPEECH = 5
MAX_AFTER_SPEECH = 9
MAX_GREETING = 12
CALLER = "+15550007777"
LINE = "+15550000001"


@pytest.fixture
def streamed(configure):
    configure({
        "provider": "twilio", "fromNumber": LINE, "publicUrl": "https://gw.example.com/voice/webhook",
        "inboundPolicy": "open", "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "reply-query-token"},
        "streaming": {"enabled": True, "provider": "openai"},
        "agents": {"main": {"responder": {"type": "scripted", "replies": ["One: {transcript}. Anything else?", "Two."]}}},
    })


class Stream:
    """The call's media stream as the jobs see it: every sentence accepted and played in full."""

    def __init__(self, monkeypatch, queries: CaptureQueriesContext) -> None:
        self.queries = queries
        self.sentences: list[str] = []
        self.statements_at_first: int | None = None
        monkeypatch.setattr("calls.conversation.stream_enqueue", self.enqueue)
        monkeypatch.setattr("calls.conversation.stream_outcome", lambda channel, *, timeout: {"outcome": "played"})
        monkeypatch.setattr("calls.streams.commands.stream_speak", self.speak)

    def _handed(self, text: str) -> None:
        if self.statements_at_first is None:
            self.statements_at_first = len(self.queries)
        self.sentences.append(text)

    def enqueue(self, call_id, text, voice, *, interruptible=True, group=None) -> str:
        self._handed(text)
        return f"reply-{len(self.sentences)}"

    def speak(self, call_id, text, voice, *, interruptible=True, timeout):
        self._handed(text)
        return {"type": "stream.result", "outcome": "played"}


def streamed_call(n: int, **fields) -> Call:
    call = Call.objects.create(
        provider="twilio", provider_call_id=f"CA{n:032d}", direction="inbound", state="listening",
        from_number=CALLER, to_number=LINE, session_key=f"agent:main:voice:{CALLER}-{n}", agent_id="main",
        answered_at=now(), **fields,
    )
    MediaStream.objects.create(call=call, stream_id=f"MZ{n:032d}", carrier="twilio")
    return call


def caller_said(call: Call, text: str) -> ReplyTurn:
    TranscriptEntry.objects.create(call=call, speaker="user", text=text, is_final=True, timestamp=now())
    message = session_message_add(call=call, role=MessageRole.USER, text=text, at=now())
    return ReplyTurn.objects.create(call=call, transcript=text, user_message=message, heard_at=now())


def test_an_automatic_reply_on_a_stream_stays_within_its_statement_budget(streamed, monkeypatch):
    call = streamed_call(1)
    counts = []
    for text in ("opening hours", "thanks"):
        reply = caller_said(call, text)
        with CaptureQueriesContext(connection) as queries:
            stream = Stream(monkeypatch, queries)
            auto_reply(reply_id=reply.pk)
        counts.append((stream.statements_at_first, len(queries) - stream.statements_at_first))

    print(f"statements per reply (before speech, after speech): {counts}")
    assert max(before for before, _ in counts) <= MAX_BEFORE_SPEECH, counts
    assert max(after for _, after in counts) <= MAX_AFTER_SPEECH, counts
    # The work was done: both replies spoken and settled, heard words in the transcript and memory.
    assert list(ReplyTurn.objects.filter(call=call).order_by("pk").values_list("status", "reply")) == [
        (ReplyStatus.SPOKEN, "One: opening hours. Anything else?"), (ReplyStatus.SPOKEN, "Two."),
    ]
    assert list(TranscriptEntry.objects.filter(call=call).order_by("pk").values_list("speaker", "text")) == [
        ("user", "opening hours"), ("bot", "One: opening hours. Anything else?"), ("user", "thanks"), ("bot", "Two."),
    ]
    assert list(SessionMessage.objects.filter(call=call).order_by("pk").values_list("role", "text"))[-1] == ("assistant", "Two.")
    assert Call.objects.get(pk=call.pk).state == "listening"


def test_a_greeting_on_a_stream_stays_within_its_statement_budget(streamed, monkeypatch):
    call = streamed_call(2, initial_message="Hello from the shop.")
    with CaptureQueriesContext(connection) as queries:
        stream = Stream(monkeypatch, queries)
        greeting_job(call_id=str(call.pk))

    print(f"statements per greeting: {len(queries)} ({stream.statements_at_first} before speech)")
    assert len(queries) <= MAX_GREETING, len(queries)
    assert stream.sentences == ["Hello from the shop."]
    call.refresh_from_db()
    assert call.initial_message == "" and call.greeting_claimed_at is None and call.state == "listening"
    assert list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text")) == [("bot", "Hello from the shop.")]


def test_a_reply_superseded_before_its_first_words_says_nothing_and_leaves_the_call_listening(streamed, monkeypatch):
    call = streamed_call(3)
    reply = caller_said(call, "opening hours")
    counted = conversation.replies_before_count

    def newer_speech_meanwhile(*, reply):
        # The caller speaks again while the reply is being planned.
        ReplyTurn.objects.filter(pk=reply.pk).update(status=ReplyStatus.SUPERSEDED)
        return counted(reply=reply)

    monkeypatch.setattr("calls.conversation.replies_before_count", newer_speech_meanwhile)
    with CaptureQueriesContext(connection) as queries:
        stream = Stream(monkeypatch, queries)
        auto_reply(reply_id=reply.pk)

    assert stream.sentences == []
    assert ReplyTurn.objects.get(pk=reply.pk).status == ReplyStatus.SUPERSEDED
    assert not TranscriptEntry.objects.filter(call=call, speaker="bot").exists()
    assert Call.objects.get(pk=call.pk).state == "listening"


def test_a_greeting_claimed_by_another_trigger_is_not_spoken_twice_and_an_abandoned_claim_is_taken_over(
        streamed, monkeypatch):
    from datetime import timedelta

    from calls.services.common import CLAIM_TTL

    busy = streamed_call(4, initial_message="Hello.", greeting_claimed_at=now())
    abandoned = streamed_call(5, initial_message="Hello.", greeting_claimed_at=now() - CLAIM_TTL - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        stream = Stream(monkeypatch, queries)
        greeting_job(call_id=str(busy.pk))
        assert stream.sentences == []
        greeting_job(call_id=str(abandoned.pk))
    assert stream.sentences == ["Hello."]
    busy.refresh_from_db()
    abandoned.refresh_from_db()
    assert busy.initial_message == "Hello." and busy.greeting_claimed_at is not None
    assert abandoned.initial_message == "" and abandoned.greeting_claimed_at is None
