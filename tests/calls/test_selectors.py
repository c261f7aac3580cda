"""Selectors: the admin timeline's rows and the tail's view of changed calls."""
from __future__ import annotations

from datetime import timedelta

import pytest

from calls.models import CallTurn, ReplyTurn, TurnStatus
from calls.selectors import call_timeline, calls_last_update, calls_recently_updated, calls_updated_since
from calls.services import call_initiate, event_process
from core.events import CallAnswered, CallSpeech

pytestmark = pytest.mark.django_db(transaction=True)


def test_timeline_has_events_lines_turns_and_replies_in_time_order():
    call = call_initiate(to="+15550001111", message="Hi there", mode="conversation")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="Who is this?"))
    start = call.started_at
    CallTurn.objects.create(call=call, token="", status=TurnStatus.COMPLETED, started_at=start + timedelta(seconds=1),
                            completed_at=start + timedelta(seconds=3), turn_latency_ms=2000, listen_wait_ms=1500)
    CallTurn.objects.create(call=call, token="t2", status=TurnStatus.FAILED, started_at=start + timedelta(seconds=4),
                            error="Call ended: hangup-user")
    ReplyTurn.objects.create(call=call, transcript="Who is this?", heard_at=start + timedelta(seconds=5),
                             completed_at=start + timedelta(seconds=6), status="spoken", first_audio_ms=700, total_ms=900)
    ReplyTurn.objects.create(call=call, transcript="Hello?", heard_at=start + timedelta(seconds=7), status="failed",
                             error="responder down")

    rows = call_timeline(call=call)
    assert [row["at"] for row in rows] == sorted(row["at"] for row in rows)
    by_label = {row["label"]: row for row in rows}
    assert by_label["caller said"]["detail"] == "Who is this?" and by_label["caller said"]["kind"] == "user"
    assert by_label["call.answered"]["kind"] == "event"
    assert by_label["turn completed"] == {
        "at": start + timedelta(seconds=3), "kind": "turn", "label": "turn completed",
        "detail": "latency 2000 ms, listen wait 1500 ms", "offset": 3.0,
    }
    assert by_label["turn failed"]["detail"] == "Call ended: hangup-user"
    assert by_label["reply spoken"]["detail"] == "first words after 700 ms, done after 900 ms"
    assert by_label["reply failed"]["detail"] == "responder down"


def test_tail_reads_recent_calls_and_the_changes_after_the_newest(configure):
    configure({"maxConcurrentCalls": 5})
    first = call_initiate(to="+15550001111")
    second = call_initiate(to="+15550002222")
    assert [call.pk for call in calls_recently_updated(limit=1)] == [second.pk]
    assert [call.pk for call in calls_recently_updated(limit=5)] == [first.pk, second.pk]
    mark, seen = calls_last_update()
    assert mark == second.updated_at and seen == {(second.pk, second.updated_at)}
    event_process(event=CallAnswered(call_id=str(first.pk)))
    assert [call.pk for call in calls_updated_since(mark=mark)] == [second.pk, first.pk]
    assert len(calls_updated_since(mark=None)) == 2


def test_reply_find_reads_the_reply_with_its_call_message_stream_and_earlier_replies():
    from calls.clock import now
    from calls.models import Call, ConversationSession, MediaStream, SessionMessage
    from calls.selectors import reply_find

    call = Call.objects.create(provider="mock", provider_call_id="mock-rf", direction="inbound", state="listening",
                               from_number="+15550001", to_number="+15550002", session_key="s-rf")
    session = ConversationSession.objects.create(key="s-rf")
    message = SessionMessage.objects.create(session=session, call=call, role="user", text="hi", spoken_at=now())
    first = ReplyTurn.objects.create(call=call, transcript="hi", heard_at=now())
    second = ReplyTurn.objects.create(call=call, transcript="hi", user_message=message, heard_at=now())

    found = reply_find(reply_id=first.pk)
    assert (found.pk, found.call.pk, found.user_message, found.earlier_replies, found.call.has_open_stream) == (
        first.pk, call.pk, None, 0, False)
    MediaStream.objects.create(call=call, stream_id="MZ-rf", carrier="mock")
    found = reply_find(reply_id=second.pk)
    assert (found.user_message.text, found.heard_at, found.earlier_replies, found.call.has_open_stream) == (
        "hi", second.heard_at, 1, True)
    assert found.call.session_key == "s-rf" and found.call.state == "listening"
    assert reply_find(reply_id=second.pk + 100) is None
