"""A reply's outcome written while a newer utterance supersedes it, on PostgreSQL: the two never deadlock."""
from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.db import connection, transaction

from calls.clock import now
from calls.models import Call, ReplyStatus, ReplyTurn, SessionMessage
from calls.services.replies import ReplyHeard, reply_settle
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
                       reason="row locks: SQLite takes one writer at a time"),
    pytest.mark.django_db(transaction=True),
]


def a_lock_is_awaited() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0] > 0


def test_settling_a_reply_while_an_event_batch_supersedes_it_does_not_deadlock():
    call = Call.objects.create(provider="twilio", direction="inbound", from_number="+15550001111",
                               to_number="+15550002222", state="listening", session_key="agent:main:voice:15550001111")
    reply = ReplyTurn.objects.create(call=call, transcript="opening hours?", heard_at=now())
    batch_holds_the_call, failures = threading.Event(), []

    def event_batch() -> None:
        """What a batch applying newer caller speech does: the call row first, then the replies it supersedes."""
        try:
            with transaction.atomic():
                Call.objects.select_for_update().get(pk=call.pk)
                batch_holds_the_call.set()
                wait_until(a_lock_is_awaited, "the reply's settle to wait for a row lock", timeout=10, interval=0.02)
                ReplyTurn.objects.filter(call=call, status=ReplyStatus.PENDING).update(
                    status=ReplyStatus.SUPERSEDED, completed_at=now())
        except Exception as exc:  # a deadlock is reported to one of the two
            failures.append(exc)
        finally:
            connection.close()

    batch = threading.Thread(target=event_batch)
    batch.start()
    try:
        assert batch_holds_the_call.wait(10)
        # The carrier path's reply: no transcript line of its own, the words go to the session memory
        # (a row that names the call, checked at commit).
        heard = ReplyHeard(call=call, text="We open at nine.", at=now(), transcript_line=False, memory=True,
                           speaking_over=False)
        status = reply_settle(reply_id=reply.pk, status=ReplyStatus.SPOKEN, reply="We open at nine.", heard=heard)
    finally:
        batch.join(20)
    assert failures == []
    assert status == ReplyStatus.SUPERSEDED  # the batch got there first; the outcome's details are still kept
    assert ReplyTurn.objects.get(pk=reply.pk).reply == "We open at nine."
    assert SessionMessage.objects.filter(call=call, role="assistant", text="We open at nine.").exists()
