"""Big mock webhook batches: statements per event stay bounded, and every event is applied in order, once."""
from __future__ import annotations

import json

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls import background
from calls.models import Call, CallEvent, ReplyTurn, SessionMessage, TranscriptEntry
from calls.services import webhook_process
from providers.carriers.base import WebhookRequest

pytestmark = pytest.mark.django_db(transaction=True)

# Statements a batch may run beyond its events' share (transaction, lookups, the replay record),
# and statements per event on top: bulk inserts are split by the database's parameter limit, so
# a few per hundred events, never one per event.
FIXED_STATEMENTS = 25
PER_EVENT = 0.1


@pytest.fixture
def conversational(configure, monkeypatch):
    """Open inbound calls that answer by themselves; the reply jobs are recorded, not run."""
    configure({"provider": "mock", "inboundPolicy": "open", "responseModel": "openai/gpt-4o-mini",
               "maxConcurrentCalls": 10_000})
    submitted: list[tuple[str, dict]] = []
    monkeypatch.setattr(background, "submit", lambda name, **kwargs: submitted.append((name, kwargs)))
    return submitted


def request(events: list[dict]) -> WebhookRequest:
    return WebhookRequest(method="POST", path="/voice/webhook", query_string="", headers={"content-type": "application/json"},
                          body=json.dumps({"events": events}).encode())


def counted(events: list[dict]) -> int:
    with CaptureQueriesContext(connection) as queries:
        reply = webhook_process(request=request(events))
    assert reply.status == 200, reply.body
    return len(queries)


def ring(sid: str) -> list[dict]:
    return [{"type": "call.initiated", "callId": sid, "providerCallId": sid, "direction": "inbound", "from": "+15550001234"},
            {"type": "call.answered", "callId": sid}]


def speech(sid: str, count: int, **extra) -> list[dict]:
    return [{"type": "call.speech", "callId": sid, "transcript": f"utterance {n}", **extra} for n in range(count)]


def within_budget(statements: int, events: int) -> bool:
    return statements <= FIXED_STATEMENTS + PER_EVENT * events


@pytest.mark.parametrize("count", [20, 400])
def test_speech_on_a_conversational_call(conversational, count):
    statements = counted(ring("batch-call") + speech("batch-call", count))
    assert within_budget(statements, count + 2), f"{statements} statements for {count + 2} events"
    call = Call.objects.get(provider_call_id="batch-call")
    said = [f"utterance {n}" for n in range(count)]
    assert list(TranscriptEntry.objects.filter(call=call).values_list("text", flat=True)) == said
    assert list(SessionMessage.objects.filter(call=call).values_list("text", flat=True)) == said
    replies = list(ReplyTurn.objects.filter(call=call).order_by("id").values_list("transcript", "status", "user_message__text"))
    # Each utterance supersedes the one before, as separate requests would: only the last is answered.
    assert replies == [(text, "superseded", text) for text in said[:-1]] + [(said[-1], "pending", said[-1])]
    [last] = ReplyTurn.objects.filter(call=call, status="pending")
    assert [kw for name, kw in conversational if name == "calls.auto_reply"] == [{"reply_id": last.pk}]
    assert CallEvent.objects.filter(call=call).count() == count + 2
    assert call.state == "listening"


def test_a_later_batch_supersedes_the_pending_reply_of_the_one_before(conversational):
    counted(ring("two-batches") + speech("two-batches", 3))
    counted(speech("two-batches", 2, isFinal=True))
    call = Call.objects.get(provider_call_id="two-batches")
    assert list(ReplyTurn.objects.filter(call=call).order_by("id").values_list("status", flat=True)) == [
        "superseded"] * 4 + ["pending"]


def test_many_new_calls(conversational):
    events = [event for n in range(300) for event in ring(f"new-{n}")[:1]]
    statements = counted(events)
    assert within_budget(statements, len(events)), f"{statements} statements for {len(events)} events"
    assert Call.objects.filter(provider_call_id__startswith="new-").count() == 300


def test_duplicates_within_and_before_the_batch_are_skipped_in_one_pass(conversational):
    counted(ring("dupes") + speech("dupes", 10, id="stored"))  # "stored" seen once, then 9 repeats skipped
    events = [{"type": "call.speech", "callId": "dupes", "transcript": f"u {n}", "id": f"e{n % 100}"} for n in range(300)]
    events.insert(150, {"type": "call.speech", "callId": "dupes", "transcript": "again", "id": "stored"})
    with CaptureQueriesContext(connection) as queries:
        assert webhook_process(request=request(events)).status == 200
    assert within_budget(len(queries), len(events))
    assert not [q for q in queries.captured_queries if "SAVEPOINT" in q["sql"]]  # no event-by-event fallback
    call = Call.objects.get(provider_call_id="dupes")
    # The first of each id is applied, in order; the repeats and the stored one are not.
    assert list(TranscriptEntry.objects.filter(call=call).values_list("text", flat=True)) == ["utterance 0"] + [
        f"u {n}" for n in range(100)]


def test_events_for_unknown_calls(conversational):
    events = [{"type": "call.ringing", "callId": f"nobody-{n}"} for n in range(300)]
    assert within_budget(counted(events), len(events))
    assert not CallEvent.objects.exists()


def test_a_64_kb_body_through_the_real_server(live_gateway, configure):
    configure({"provider": "mock", "inboundPolicy": "open", "maxConcurrentCalls": 10_000})
    events = ring("big") + speech("big", 2000)
    while len(body := json.dumps({"events": events}).encode()) > 64 * 1024:
        events.pop()
    response = httpx.post(f"{live_gateway}/voice/webhook", content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    call = Call.objects.get(provider_call_id="big")
    assert TranscriptEntry.objects.filter(call=call, speaker="user").count() == len(events) - 2
    assert CallEvent.objects.filter(call=call).count() == len(events)
