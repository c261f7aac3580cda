"""Deadlines on rows, the sweeper, the stale-call reaper, and restore after a restart."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import Call, CallTurn, ProcessedWebhook, TurnStatus
from calls.scheduler import Sweeper
from calls.services import (
    call_initiate,
    calls_restore,
    deadlines_sweep,
    event_process,
    next_deadline,
    processed_webhooks_purge,
    stale_calls_reap,
)
from core.events import CallAnswered, CallSpeech
from providers.carriers import mock
from tests.logs import records_of
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def make_call(*, provider_call_id="mock-live", state="initiated", age_seconds=0, answered_ago=None, **extra) -> Call:
    started = timezone.now() - timedelta(seconds=age_seconds)
    answered = timezone.now() - timedelta(seconds=answered_ago) if answered_ago is not None else None
    return Call.objects.create(
        provider="mock", provider_call_id=provider_call_id, direction="outbound", state=state,
        from_number="+15550000000", to_number="+15550001111", started_at=started, answered_at=answered, **extra,
    )


def test_max_duration_ends_the_call_with_timeout(outbox):
    call = call_initiate(to="+15550001111")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    due = call.max_duration_deadline
    assert deadlines_sweep(at=due - timedelta(seconds=1)) == 0
    assert deadlines_sweep(at=due) == 1
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("timeout", "timeout")
    assert outbox[-1].action == "hangup_call" and outbox[-1].params["reason"] == "timeout"
    assert deadlines_sweep(at=due + timedelta(hours=1)) == 0  # acted on once


def test_notify_hangup_after_delay(configure, outbox):
    configure({"outbound": {"notifyHangupDelaySec": 3}})
    call = call_initiate(to="+15550001111", message="Reminder: dentist at 3", mode="notify")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    delay = (call.notify_hangup_at - timezone.now()).total_seconds()
    assert 2 < delay <= 3
    deadlines_sweep(at=call.notify_hangup_at)
    call.refresh_from_db()
    assert call.end_reason == "hangup-bot"


def test_failed_deadline_hangup_is_retried(monkeypatch):
    call = make_call(answered_ago=400, max_duration_deadline=timezone.now() - timedelta(seconds=100))
    monkeypatch.setattr(mock.MockCarrier, "hangup_call", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("503")))
    deadlines_sweep()
    call.refresh_from_db()
    assert not call.is_terminal
    assert call.end_attempts == 1 and call.end_retry_at > timezone.now()  # scheduled for a retry
    assert next_deadline() == call.end_retry_at
    monkeypatch.undo()
    assert deadlines_sweep(at=call.end_retry_at) == 1
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.end_retry_at) == ("timeout", "timeout", None)


def test_a_carrier_that_is_down_for_every_call_is_warned_about_once_a_minute(monkeypatch, caplog):
    calls = [make_call(provider_call_id=f"mock-down-{index}", answered_ago=400,
                       max_duration_deadline=timezone.now() - timedelta(seconds=100)) for index in range(30)]
    monkeypatch.setattr(mock.MockCarrier, "hangup_call", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("503")))
    with caplog.at_level(logging.INFO, logger="calls"):
        deadlines_sweep()
    warnings = [r.getMessage() for r in records_of(caplog, "calls.services", logging.WARNING)]
    assert len([w for w in warnings if " hang-up attempt 1 of " in w]) == 1, warnings
    for call in calls:  # every call is still retried: only the lines are limited
        call.refresh_from_db()
        assert call.end_attempts == 1 and call.end_retry_at > timezone.now()


def test_turn_deadline_times_out_the_waiting_turn():
    call = make_call()
    turn = CallTurn.objects.create(call=call, token="", prompt="?", deadline=timezone.now() - timedelta(seconds=1))
    assert deadlines_sweep() == 1
    turn.refresh_from_db()
    assert turn.status == TurnStatus.TIMEOUT
    assert turn.error == "Timed out waiting for transcript after 180000ms"
    # A late answer is kept in the transcript but completes nothing.
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="late"))
    turn.refresh_from_db()
    assert turn.status == TurnStatus.TIMEOUT
    assert call.transcript_entries.get().text == "late"


def test_next_deadline_is_the_earliest_of_all_kinds():
    soon = timezone.now() + timedelta(seconds=5)
    later = timezone.now() + timedelta(seconds=50)
    make_call(provider_call_id="a", max_duration_deadline=later)
    call = make_call(provider_call_id="b", notify_hangup_at=later)
    assert next_deadline() == later
    CallTurn.objects.create(call=call, token="", prompt="?", deadline=soon)
    assert next_deadline() == soon
    make_call(provider_call_id="c", state="completed", max_duration_deadline=timezone.now())
    assert next_deadline() == soon  # ended calls do not count


def test_reaper_ends_only_unanswered_idle_calls(outbox):
    stale = make_call(provider_call_id="stale-1", age_seconds=200)
    fresh = make_call(provider_call_id="fresh", age_seconds=60)
    answered = make_call(provider_call_id="answered", age_seconds=200, answered_ago=100, state="answered")
    talking = make_call(provider_call_id="talking", age_seconds=200, state="listening")
    assert stale_calls_reap() == 1
    for call, state in [(stale, "hangup-bot"), (fresh, "initiated"), (answered, "answered"), (talking, "listening")]:
        call.refresh_from_db()
        assert call.state == state
    assert [r.action for r in outbox] == ["hangup_call"]


def test_reaper_disabled_with_zero(configure):
    configure({"staleCallReaperSeconds": 0})
    make_call(age_seconds=10_000)
    assert stale_calls_reap() == 0


def test_reaper_leaves_a_failed_hangup_to_its_backoff(monkeypatch):
    call = make_call(age_seconds=500)
    monkeypatch.setattr(mock.MockCarrier, "hangup_call", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("down")))
    stale_calls_reap()
    call.refresh_from_db()
    assert not call.is_terminal and call.hangup_claimed_at is None
    assert call.end_attempts == 1 and call.end_retry_at is not None
    assert stale_calls_reap() == 0  # not again on the next tick: the retry is due later
    monkeypatch.undo()
    deadlines_sweep(at=call.end_retry_at)
    call.refresh_from_db()
    assert call.state == "hangup-bot"


def test_restore_after_restart(outbox):
    never_dialed = make_call(provider_call_id=None, age_seconds=120)
    dialing_now = make_call(provider_call_id=None, age_seconds=2)
    too_old = make_call(provider_call_id="old-1", age_seconds=1000, answered_ago=990)
    over_at_carrier = make_call(provider_call_id="mock-ended-1", age_seconds=30)
    alive = make_call(provider_call_id="mock-alive", age_seconds=30, answered_ago=20, state="listening",
                      max_duration_deadline=timezone.now() + timedelta(seconds=280))
    report = calls_restore()
    assert report.failed_dials == [str(never_dialed.pk)]
    assert report.expired == [str(too_old.pk)]
    assert report.ended_at_carrier == [str(over_at_carrier.pk)]
    assert sorted(report.kept) == sorted([str(alive.pk)])
    states = {c.pk: (c.state, c.end_reason) for c in Call.objects.all()}
    assert states[never_dialed.pk] == ("failed", "failed")
    assert Call.objects.get(pk=never_dialed.pk).last_error.startswith("the dial did not finish")
    assert states[dialing_now.pk] == ("initiated", "")
    assert states[too_old.pk] == ("timeout", "timeout")
    assert states[over_at_carrier.pk] == ("completed", "completed")
    assert states[alive.pk] == ("listening", "")
    hangups = [(r.provider_call_id, r.params["reason"]) for r in outbox if r.action == "hangup_call"]
    assert hangups == [("old-1", "timeout")]
    alive.refresh_from_db()
    assert alive.max_duration_deadline is not None  # its remaining time is still on the row


def test_restore_keeps_calls_when_status_fails(monkeypatch):
    call = make_call(provider_call_id="mock-x", age_seconds=10)
    monkeypatch.setattr(mock.MockCarrier, "get_call_status", lambda self, pid: (_ for _ in ()).throw(RuntimeError("timeout")))
    report = calls_restore()
    assert report.kept == [str(call.pk)]


def test_purge_forgets_expired_replay_keys():
    ProcessedWebhook.objects.create(key="old", provider="mock", expires_at=timezone.now() - timedelta(seconds=1))
    ProcessedWebhook.objects.create(key="new", provider="mock", expires_at=timezone.now() + timedelta(minutes=5))
    assert processed_webhooks_purge() == 1
    assert list(ProcessedWebhook.objects.values_list("key", flat=True)) == ["new"]


def test_purge_forgets_carrier_documents_after_an_hour():
    from calls.documents import DatabaseDocuments, document_for
    from calls.models import CarrierDocument

    call = make_call(provider_call_id="mock-docs", age_seconds=10)
    old = DatabaseDocuments().put(str(call.pk), "<Response><Speak>old</Speak></Response>")
    fresh = DatabaseDocuments().put(str(call.pk), "<Response><Speak>fresh</Speak></Response>")
    CarrierDocument.objects.filter(token=old).update(created_at=timezone.now() - timedelta(hours=1, seconds=1))
    assert processed_webhooks_purge() == 1
    assert document_for(str(call.pk), old) is None
    assert document_for(str(call.pk), fresh) == "<Response><Speak>fresh</Speak></Response>"
    assert document_for("00000000-0000-0000-0000-000000000000", fresh) is None  # another call's token finds nothing


def test_embedded_sweeper_thread_fires_a_deadline_on_time(settings, configure):
    """The real sweeper thread: a notify hang-up 1 s after the greeting happens about 1 s later."""
    settings.VOICECALL_BACKGROUND = "thread"
    configure({"outbound": {"notifyHangupDelaySec": 1}})
    sweeper = Sweeper()
    sweeper.start()
    try:
        call = call_initiate(to="+15550001111", message="Bye soon", mode="notify")
        event_process(event=CallAnswered(call_id=str(call.pk)))
        from calls import background

        background.drain()
        call.refresh_from_db()
        hangup_at = call.notify_hangup_at
        assert hangup_at is not None
        wait_until(lambda: Call.objects.get(pk=call.pk).is_terminal, "the sweeper to hang up")
        background.drain()
        call.refresh_from_db()
        assert call.end_reason == "hangup-bot"
        lateness = (call.ended_at - hangup_at).total_seconds()
        assert 0 <= lateness < 0.5
    finally:
        sweeper.stop()
