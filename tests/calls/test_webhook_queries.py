"""SQL statements per carrier webhook, counted through the service entry point, so the cost cannot creep back."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls.models import Call, CallEvent, ProcessedWebhook, TranscriptEntry
from calls.services import webhook_process
from providers.carriers.base import WebhookRequest
from providers.carriers.twilio.webhook import signature

pytestmark = pytest.mark.django_db(transaction=True)

# Each kind of signed Twilio webhook may run at most this many statements (docs/operations.md).
MAX_STATEMENTS = 8
URL = "https://gw.example.com/voice/webhook"
TOKEN = "query-count-token"
BASE = {
    "CallSid": "CA" + "5" * 32, "AccountSid": "AC" + "1" * 32, "From": "+15550007777",
    "To": "+15550000001", "Direction": "inbound", "ApiVersion": "2010-04-01",
}


@pytest.fixture
def twilio(configure):
    configure({
        "provider": "twilio", "fromNumber": "+15550000001", "publicUrl": URL, "inboundPolicy": "open",
        "twilio": {"accountSid": "AC" + "1" * 32, "authToken": TOKEN},
    })


def signed(params: dict[str, str], query: str = "") -> WebhookRequest:
    url = URL + (f"?{query}" if query else "")
    return WebhookRequest(
        method="POST", path="/voice/webhook", query_string=query,
        headers={
            "x-twilio-signature": signature(TOKEN, url, list(params.items())),
            "content-type": "application/x-www-form-urlencoded", "host": "gw.example.com",
        },
        body=urlencode(params).encode(), remote_addr="10.0.0.1", scheme="https",
    )


def counted(request: WebhookRequest) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        reply = webhook_process(request=request)
    return reply.status, len(queries)


def test_each_kind_of_twilio_webhook_stays_within_its_statement_budget(twilio):
    ring = counted(signed({**BASE, "CallStatus": "ringing"}))
    speech = [
        counted(signed({**BASE, "CallStatus": "in-progress", "SpeechResult": f"utterance {n}", "Confidence": "0.9"}))
        for n in range(3)
    ]
    completed = counted(signed({**BASE, "CallStatus": "completed", "CallDuration": "42"}, query="type=status"))

    assert ring[0] == 200 and all(status == 200 for status, _ in speech) and completed[0] == 200
    print(f"statements per webhook: ring {ring[1]}, speech {[n for _, n in speech]}, completed {completed[1]}")
    assert ring[1] <= MAX_STATEMENTS, f"ring: {ring[1]} statements"
    assert max(n for _, n in speech) <= MAX_STATEMENTS, f"speech: {[n for _, n in speech]} statements"
    assert completed[1] <= MAX_STATEMENTS, f"completed: {completed[1]} statements"
    # The work was done, not skipped: the call, its events, the caller's lines and every first answer.
    call = Call.objects.get(provider_call_id=BASE["CallSid"])
    assert call.is_terminal
    assert CallEvent.objects.filter(call=call).count() >= 5
    assert TranscriptEntry.objects.filter(call=call, speaker="user").count() == 3
    assert ProcessedWebhook.objects.filter(call=call).count() == 5


def test_a_replayed_webhook_gets_its_first_answer_within_the_budget_and_changes_nothing(twilio):
    ring = signed({**BASE, "CallStatus": "ringing"})
    first = webhook_process(request=ring)
    rows = (Call.objects.count(), CallEvent.objects.count(), TranscriptEntry.objects.count(), ProcessedWebhook.objects.count())
    with CaptureQueriesContext(connection) as queries:
        again = webhook_process(request=ring)
    assert again == first
    assert len(queries) <= MAX_STATEMENTS
    assert rows == (Call.objects.count(), CallEvent.objects.count(), TranscriptEntry.objects.count(), ProcessedWebhook.objects.count())


class _Deadlock(Exception):
    sqlstate = "40P01"  # what PostgreSQL's driver reports when it broke a deadlock by rolling this back


def test_a_webhook_rolled_back_by_a_deadlock_is_applied_event_by_event(twilio, monkeypatch):
    """Two batches locking two calls in opposite orders deadlock on PostgreSQL; the loser is not lost."""
    from django.db import OperationalError

    from calls.services import webhooks

    def deadlocked(*args, **kwargs):
        raise OperationalError("deadlock detected") from _Deadlock()

    monkeypatch.setattr(webhooks, "_process_at_once", deadlocked)
    status, _ = counted(signed({**BASE, "CallStatus": "ringing"}))
    assert status == 200
    call = Call.objects.get(provider_call_id=BASE["CallSid"])
    assert CallEvent.objects.filter(call=call).exists()
    assert ProcessedWebhook.objects.count() == 1


def test_other_database_errors_are_not_taken_for_a_deadlock(twilio, monkeypatch):
    from django.db import OperationalError

    from calls.services import webhooks

    def broken(*args, **kwargs):
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(webhooks, "_process_at_once", broken)
    with pytest.raises(OperationalError, match="disk I/O"):
        webhook_process(request=signed({**BASE, "CallStatus": "ringing"}))
    assert not Call.objects.exists()
