"""SQL statements per media-stream service call, counted at the service entry points, so the cost cannot creep back."""
from __future__ import annotations

import os
import secrets

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from calls import background
from calls.clock import now, to_ms
from calls.documents import stream_token
from calls.models import Call, CallEvent, MediaStream, ReplyStatus, ReplyTurn, SessionMessage, TranscriptEntry
from calls.services import (
    stream_closed,
    stream_dtmf,
    stream_open,
    stream_ready,
    stream_speech_started,
    stream_transcript,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Statements (BEGIN, COMMIT and SAVEPOINT included) each service may run. "transcript" is a
# call's first, which creates its conversation session; "duplicate" is a transcript whose key was
# seen: rare (a stream numbers its own), so it is refused at the end and rolled back, not looked up first.
BUDGET = {
    "open": 5, "reopen": 6, "ready": 1, "speech_started": 1, "transcript": 13, "transcript_again": 10,
    "duplicate": 11, "dtmf": 5, "closed": 5, "closed_again": 4,
}


@pytest.fixture
def jobs(configure, monkeypatch) -> list[tuple[str, dict]]:
    """A streaming Twilio config whose calls reply by themselves; submitted jobs are kept, not run."""
    loaded = configure({
        "provider": "twilio", "fromNumber": "+15550100000", "publicUrl": "https://gw.example.com",
        "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "stream-query-token"},
        "streaming": {"enabled": True, "provider": "local"}, "tts": {"provider": "local"},
        "responseModel": "ollama/llama3.2",
    })
    assert not loaded.errors, loaded.errors
    submitted: list[tuple[str, dict]] = []
    monkeypatch.setattr(background.get_gateway().jobs, "dispatch", lambda name, kwargs: submitted.append((name, kwargs)))
    return submitted


def new_call() -> Call:
    return Call.objects.create(
        provider="twilio", provider_call_id="CA" + secrets.token_hex(16), direction="inbound", state="answered",
        from_number="+15550100001", to_number="+15550100000", mode="conversation", session_key="agent:main:+15550100001",
        initial_message="Hello there", answered_at=now(),
    )


def counted(name: str, measured: dict[str, int], func, **kwargs):
    with CaptureQueriesContext(connection) as queries:
        result = func(**kwargs)
    measured[name] = len(queries)
    if os.environ.get("SHOW_QUERIES"):
        print(f"--- {name}: {len(queries)}")
        for query in queries:
            print("   ", query["sql"][:300])
    return result


def within_budget(measured: dict[str, int]) -> None:
    print("statements per stream service:", measured)
    over = {name: n for name, n in measured.items() if n > BUDGET[name]}
    assert not over, f"over budget {BUDGET}: {over}"


def test_a_streamed_conversation_stays_within_its_statement_budgets(jobs):
    call = new_call()
    measured: dict[str, int] = {}
    opened = counted("open", measured, stream_open, provider_call_id=call.provider_call_id, stream_id="MZ1",
                     token=stream_token(str(call.pk)))
    counted("ready", measured, stream_ready, call_id=opened.call_id)
    counted("transcript", measured, stream_transcript, call_id=opened.call_id, stream_id="MZ1", sequence=1,
            text="hello", heard_ms=to_ms(now()))
    counted("speech_started", measured, stream_speech_started, call_id=opened.call_id, since_ms=to_ms(now()) + 1)
    counted("transcript_again", measured, stream_transcript, call_id=opened.call_id, stream_id="MZ1", sequence=2,
            text="are you there", heard_ms=to_ms(now()))
    counted("duplicate", measured, stream_transcript, call_id=opened.call_id, stream_id="MZ1", sequence=2,
            text="are you there", heard_ms=to_ms(now()))
    counted("dtmf", measured, stream_dtmf, call_id=opened.call_id, stream_id="MZ1", sequence=3, digit="5")
    deadlines: list = []
    background.on_deadline(deadlines.append)
    try:
        counted("closed", measured, stream_closed, stream_pk=opened.stream_pk, reason="stop", stats={"framesIn": 10})
    finally:
        background.off_deadline(deadlines.append)
    counted("closed_again", measured, stream_closed, stream_pk=opened.stream_pk, reason="disconnected",
            stats={"framesIn": 12})
    within_budget(measured)

    # The work was done, not skipped.
    assert opened.call_id == str(call.pk) and opened.direction == "inbound" and opened.mode == "conversation"
    assert ("calls.greeting", {"call_id": str(call.pk)}) in jobs
    replies = list(ReplyTurn.objects.filter(call=call).order_by("pk"))
    assert [(r.transcript, r.status) for r in replies] == [
        ("hello", ReplyStatus.SUPERSEDED), ("are you there", ReplyStatus.PENDING)]
    assert [name for name, _ in jobs].count("calls.auto_reply") == 2
    assert list(TranscriptEntry.objects.filter(call=call, speaker="user").values_list("text", flat=True)) == [
        "hello", "are you there"]
    assert SessionMessage.objects.filter(call=call).count() == 2
    assert CallEvent.objects.filter(call=call, type="call.speech").count() == 2
    assert CallEvent.objects.filter(call=call, type="call.dtmf").count() == 1
    stream = MediaStream.objects.get(pk=opened.stream_pk)
    assert stream.close_reason == "stop" and stream.stats == {"framesIn": 12}
    call.refresh_from_db()
    assert call.state == "listening" and call.stream_grace_deadline is not None
    assert deadlines == [call.stream_grace_deadline]  # the scheduler was told when the grace ends


def test_a_reconnect_within_the_budget_replaces_the_stream_and_keeps_the_call(jobs):
    call = new_call()
    measured: dict[str, int] = {}
    token = stream_token(str(call.pk))
    first = stream_open(provider_call_id=call.provider_call_id, stream_id="MZ1", token=token)
    stream_closed(stream_pk=first.stream_pk, reason="disconnected", stats={})
    assert Call.objects.get(pk=call.pk).stream_grace_deadline is not None
    second = counted("reopen", measured, stream_open, provider_call_id=call.provider_call_id, stream_id="MZ2", token=token)
    within_budget(measured)
    assert second.stream_pk != first.stream_pk
    assert Call.objects.get(pk=call.pk).stream_grace_deadline is None
    assert list(MediaStream.objects.open().filter(call=call).values_list("stream_id", flat=True)) == ["MZ2"]


def test_a_replaced_stream_closing_late_keeps_its_reason_and_starts_no_grace(jobs):
    call = new_call()
    token = stream_token(str(call.pk))
    first = stream_open(provider_call_id=call.provider_call_id, stream_id="MZ1", token=token)
    stream_open(provider_call_id=call.provider_call_id, stream_id="MZ2", token=token)
    measured: dict[str, int] = {}
    counted("closed_again", measured, stream_closed, stream_pk=first.stream_pk, reason="disconnected", stats={"framesIn": 3})
    within_budget(measured)
    replaced = MediaStream.objects.get(pk=first.stream_pk)
    assert replaced.close_reason == "replaced" and replaced.stats == {"framesIn": 3}
    assert Call.objects.get(pk=call.pk).stream_grace_deadline is None
