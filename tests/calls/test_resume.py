"""Jobs a dead process left, started again from the rows; greeting claims as renewed leases; restore bounded in time."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from calls.gateway import get_gateway
from calls.leases import LeaseKeeper
from calls.models import Call, ReplyStatus, ReplyTurn
from calls.restoring import DONE, FAILED, RUNNING, TIMED_OUT, Restore
from calls.services import calls_restore, initial_message_speak, lost_jobs_resume
from calls.services.common import CLAIM_TTL
from calls.services.resume import ANSWER_GRACE
from providers.carriers import mock
from tests.calls.test_sweeps import make_call
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = "Hello from the clinic."


def answered_call(*, answered_ago: float = 60, claimed_ago: float | None = None, **extra) -> Call:
    claimed = timezone.now() - timedelta(seconds=claimed_ago) if claimed_ago is not None else None
    return make_call(provider_call_id=extra.pop("provider_call_id", "mock-live"), state=extra.pop("state", "answered"),
                     age_seconds=answered_ago + 5, answered_ago=answered_ago, initial_message=HELLO,
                     greeting_claimed_at=claimed, max_duration_deadline=timezone.now() + timedelta(seconds=200), **extra)


def spoken(outbox) -> list[str]:
    return [r.params["text"] for r in outbox if r.action == "play_tts"]


def test_a_greeting_claimed_by_a_dead_process_is_spoken_once_its_claim_expired(outbox):
    call = answered_call(claimed_ago=CLAIM_TTL.total_seconds() + 1)
    assert lost_jobs_resume() == 1
    assert spoken(outbox) == [HELLO]
    call.refresh_from_db()
    assert (call.state, call.initial_message, call.greeting_claimed_at) == ("listening", "", None)
    assert lost_jobs_resume() == 0  # said: nothing left to resume
    assert spoken(outbox) == [HELLO]


def test_a_live_claim_is_left_to_the_process_holding_it(outbox):
    call = answered_call(claimed_ago=CLAIM_TTL.total_seconds() - 5)
    assert lost_jobs_resume() == 0
    assert spoken(outbox) == []
    call.refresh_from_db()
    assert call.initial_message == HELLO and call.greeting_claimed_at is not None


def test_after_a_restart_a_claim_older_than_the_process_is_abandoned_at_once(outbox):
    """One gateway per database (embedded): a claim taken before this process started is a dead one's."""
    answered_call(claimed_ago=2)
    started = timezone.now() - timedelta(seconds=1)
    assert lost_jobs_resume(abandoned_before=started) == 1
    assert spoken(outbox) == [HELLO]


def test_a_claim_taken_after_the_restart_is_not_taken_over(outbox):
    started = timezone.now() - timedelta(seconds=5)
    answered_call(claimed_ago=1)  # claimed by this process, after it started
    assert lost_jobs_resume(abandoned_before=started) == 0
    assert spoken(outbox) == []


def test_a_greeting_that_waits_for_a_media_stream_is_released_for_the_next_stream(outbox, monkeypatch):
    from calls.models import MediaStream
    from calls.services import GreetingDecision

    waits = GreetingDecision(False, "spoken when the media stream's transcription is ready")
    monkeypatch.setattr("calls.services.resume.greeting_decision", lambda call: waits)
    call = answered_call(claimed_ago=CLAIM_TTL.total_seconds() + 1)
    assert lost_jobs_resume() == 0  # no stream up: its next stream's readiness says it
    call.refresh_from_db()
    assert (call.initial_message, call.greeting_claimed_at) == (HELLO, None)
    assert spoken(outbox) == []
    # A stream opened meanwhile (whose readiness found the greeting claimed): said on it now.
    Call.objects.filter(pk=call.pk).update(greeting_claimed_at=timezone.now() - CLAIM_TTL - timedelta(seconds=1))
    MediaStream.objects.create(call=call, stream_id="MZnew", carrier="mock")
    monkeypatch.setattr("calls.services.greeting.call_speak", lambda **kwargs: spoken_on_stream.append(kwargs["text"]))
    spoken_on_stream: list[str] = []
    assert lost_jobs_resume() == 1
    assert spoken_on_stream == [HELLO]


def test_an_answered_call_whose_answer_job_was_lost_is_greeted(outbox):
    call = answered_call(answered_ago=ANSWER_GRACE.total_seconds() + 2, pending_dtmf="1234")
    assert lost_jobs_resume() == 1
    actions = [r.action for r in outbox]
    assert actions == ["send_dtmf", "play_tts", "start_listening"]
    call.refresh_from_db()
    assert (call.pending_dtmf, call.initial_message) == ("", "")


def test_a_streamed_call_whose_greeting_job_was_lost_is_greeted_on_its_stream(outbox, monkeypatch):
    """The stream's readiness queued the greeting, and the job never ran (its worker died, or Redis was away)."""
    from calls.models import MediaStream
    from calls.services import GreetingDecision

    waits = GreetingDecision(False, "spoken when the media stream's transcription is ready", on_stream=True)
    monkeypatch.setattr("calls.services.resume.greeting_decision", lambda call: waits)
    spoken_on_stream: list[str] = []
    monkeypatch.setattr("calls.services.greeting.call_speak", lambda **kwargs: spoken_on_stream.append(kwargs["text"]))
    call = answered_call(answered_ago=ANSWER_GRACE.total_seconds() + 5)
    stream = MediaStream.objects.create(call=call, stream_id="MZjust", carrier="mock")
    assert lost_jobs_resume() == 0  # a stream that just opened: its own readiness greets
    assert spoken_on_stream == []
    MediaStream.objects.filter(pk=stream.pk).update(opened_at=timezone.now() - ANSWER_GRACE - timedelta(seconds=1))
    assert lost_jobs_resume() == 1
    assert spoken_on_stream == [HELLO]
    assert lost_jobs_resume() == 0  # said: nothing left to resume


def test_a_streamed_call_without_a_stream_waits_for_one(outbox, monkeypatch):
    from calls.services import GreetingDecision

    waits = GreetingDecision(False, "spoken when the media stream's transcription is ready", on_stream=True)
    monkeypatch.setattr("calls.services.resume.greeting_decision", lambda call: waits)
    answered_call(answered_ago=ANSWER_GRACE.total_seconds() + 5)
    assert lost_jobs_resume() == 0
    assert spoken(outbox) == []


def test_a_just_answered_call_is_left_to_its_own_answer_job(outbox):
    answered_call(answered_ago=1)
    assert lost_jobs_resume() == 0
    assert spoken(outbox) == []


def test_an_unanswered_or_ended_call_is_never_greeted(outbox):
    make_call(provider_call_id="mock-ringing", state="ringing", age_seconds=60, initial_message=HELLO)
    answered_call(provider_call_id="mock-ended", state="completed", claimed_ago=120)
    assert lost_jobs_resume() == 0
    assert spoken(outbox) == []


def test_an_abandoned_hang_up_is_done_again(outbox):
    call = make_call(provider_call_id="mock-hangup", state="listening", age_seconds=100, answered_ago=90,
                     hangup_claimed_at=timezone.now() - CLAIM_TTL - timedelta(seconds=1), hangup_reason="timeout")
    assert lost_jobs_resume() == 1
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("timeout", "timeout")
    assert [(r.action, r.params["reason"]) for r in outbox] == [("hangup_call", "timeout")]


def test_a_reply_left_pending_by_the_process_before_is_made_again(configure, outbox):
    configure({"agents": {"main": {"responder": {"type": "scripted", "replies": ["Monday at nine."]}}}})
    call = Call.objects.create(
        provider="mock", provider_call_id="mock-reply", direction="inbound", state="speaking",
        from_number="+15550000000", to_number="+15550001111", answered_at=timezone.now() - timedelta(seconds=30))
    reply = ReplyTurn.objects.create(call=call, transcript="when can I come", heard_at=timezone.now() - timedelta(seconds=5))
    assert lost_jobs_resume(replies_upto=reply.pk - 1) == 0  # created after this process started: its job is alive
    assert lost_jobs_resume(replies_upto=reply.pk) == 1
    reply.refresh_from_db()
    assert reply.status == ReplyStatus.SPOKEN and reply.reply == "Monday at nine."
    assert spoken(outbox) == ["Monday at nine."]


def test_after_a_restart_a_stream_of_the_dead_process_is_closed_and_its_grace_starts():
    from calls.models import MediaStream
    from calls.services import deadlines_sweep

    started = timezone.now()
    later = started + timedelta(seconds=200)
    call = make_call(provider_call_id="mock-streamed", state="listening", age_seconds=40, answered_ago=30,
                     max_duration_deadline=later)
    dead = MediaStream.objects.create(call=call, stream_id="MZdead", carrier="mock", opened_at=started - timedelta(seconds=20),
                                      stats={"framesIn": 900})
    other = make_call(provider_call_id="mock-new-stream", state="listening", age_seconds=5, answered_ago=4,
                      max_duration_deadline=later)
    fresh = MediaStream.objects.create(call=other, stream_id="MZfresh", carrier="mock", opened_at=started + timedelta(seconds=1))
    assert lost_jobs_resume() == 0  # without a restart nothing says which process holds a stream
    assert lost_jobs_resume(abandoned_before=started) == 1
    dead.refresh_from_db()
    fresh.refresh_from_db()
    assert dead.closed_at is not None and dead.close_reason == "gateway restarted" and dead.stats == {"framesIn": 900}
    assert fresh.closed_at is None
    call.refresh_from_db()
    assert call.stream_grace_deadline is not None
    assert deadlines_sweep(at=call.stream_grace_deadline) == 1
    call.refresh_from_db()
    assert call.state == "hangup-bot"


def test_after_a_restart_a_max_duration_end_the_dead_process_claimed_is_done(outbox):
    from calls.services import deadlines_sweep

    started = timezone.now()
    # The sweep had cleared the deadline (its claim) and the process died before the hang-up.
    lost = make_call(provider_call_id="mock-overdue", state="listening", age_seconds=400, answered_ago=300)
    kept = make_call(provider_call_id="mock-fine", state="listening", age_seconds=40, answered_ago=30,
                     max_duration_deadline=started + timedelta(seconds=270))
    # A failed hang-up waiting for its next try keeps its backoff.
    backing_off = make_call(provider_call_id="mock-backoff", state="listening", age_seconds=400, answered_ago=300,
                            end_attempts=2, end_retry_at=started + timedelta(seconds=60), hangup_reason="timeout")
    assert lost_jobs_resume() == 0  # without a restart the end may still be in flight
    assert lost_jobs_resume(abandoned_before=started) == 1
    assert deadlines_sweep() == 1
    backing_off.refresh_from_db()
    assert backing_off.state == "listening" and backing_off.max_duration_deadline is None
    lost.refresh_from_db()
    kept.refresh_from_db()
    assert (lost.state, lost.end_reason) == ("timeout", "timeout")
    assert kept.state == "listening" and kept.max_duration_deadline == started + timedelta(seconds=270)
    assert [(r.action, r.provider_call_id) for r in outbox] == [("hangup_call", "mock-overdue")]


def test_after_a_restart_an_inbound_call_never_picked_up_is_answered(monkeypatch):
    answered: list[str] = []
    monkeypatch.setattr(mock.MockCarrier, "supports_answer", True, raising=False)
    monkeypatch.setattr(mock.MockCarrier, "answer_call", lambda self, call_id, provider_call_id: answered.append(provider_call_id),
                        raising=False)
    started = timezone.now()
    Call.objects.create(provider="mock", provider_call_id="mock-ringing-in", direction="inbound", state="initiated",
                        from_number="+15550000000", to_number="+15550001111", started_at=started - timedelta(seconds=3))
    Call.objects.create(provider="mock", provider_call_id="mock-new-in", direction="inbound", state="initiated",
                        from_number="+15550000001", to_number="+15550001111", started_at=started + timedelta(seconds=1))
    assert lost_jobs_resume() == 0  # without a restart the answer job may be running
    assert lost_jobs_resume(abandoned_before=started) == 1
    assert answered == ["mock-ringing-in"]


def test_a_greeting_playing_longer_than_the_claim_lifetime_keeps_its_claim(outbox, monkeypatch):
    """The claim is renewed while it plays: the sweeper never takes a slow greeting over (no double greeting)."""
    keeper = LeaseKeeper(every=0.05)
    monkeypatch.setattr(get_gateway(), "leases", keeper)
    call = answered_call(answered_ago=120)
    playing, release = threading.Event(), threading.Event()
    original = mock.MockCarrier.play_tts

    def slow_play(self, **kwargs):
        playing.set()
        release.wait(10)
        original(self, **kwargs)

    monkeypatch.setattr(mock.MockCarrier, "play_tts", slow_play)
    speaker = threading.Thread(target=initial_message_speak, kwargs={"call_id": str(call.pk)})
    speaker.start()
    try:
        assert playing.wait(5)
        first = Call.objects.get(pk=call.pk).greeting_claimed_at
        wait_until(lambda: Call.objects.get(pk=call.pk).greeting_claimed_at != first, "the claim to be renewed",
                   timeout=5, interval=0.02)
        # Claims live 0.5 s here: well past that since it was taken, the renewed claim is still held.
        monkeypatch.setattr("calls.services.resume.CLAIM_TTL", timedelta(seconds=0.5))
        wait_until(lambda: timezone.now() - first > timedelta(seconds=1), "the first claim to be 1 s old",
                   timeout=5, interval=0.05)
        assert lost_jobs_resume() == 0
    finally:
        release.set()
        speaker.join(10)
    assert spoken(outbox) == [HELLO]
    wait_until(lambda: not keeper.held(), "the lease to be dropped once the greeting was said", timeout=5, interval=0.02)


def test_a_claim_taken_over_is_no_longer_renewed():
    call = answered_call(claimed_ago=1)
    token = Call.objects.get(pk=call.pk).greeting_claimed_at
    keeper = LeaseKeeper(every=60)
    with keeper.hold("greeting_claimed_at", call.pk, token):
        assert keeper.renew() == 1
        renewed = Call.objects.get(pk=call.pk).greeting_claimed_at
        assert renewed > token
        other = timezone.now() + timedelta(seconds=1)
        Call.objects.filter(pk=call.pk).update(greeting_claimed_at=other)  # another process took it over
        assert keeper.renew() == 0
        assert Call.objects.get(pk=call.pk).greeting_claimed_at == other
        assert keeper.held() == {}


def test_restore_stops_asking_the_carrier_at_its_time_bound(monkeypatch):
    """A carrier that never answers: restore returns at its bound; unchecked calls are kept with their deadlines."""
    calls = [make_call(provider_call_id=f"mock-slow-{n}", state="listening", age_seconds=30, answered_ago=20,
                       max_duration_deadline=timezone.now() + timedelta(seconds=200)) for n in range(20)]
    never = threading.Event()
    asked: list[str] = []

    def hanging(self, provider_call_id):
        asked.append(provider_call_id)
        never.wait(30)
        raise RuntimeError("timed out")

    monkeypatch.setattr(mock.MockCarrier, "get_call_status", hanging)
    began = time.monotonic()
    try:
        report = calls_restore(budget=0.5)
    finally:
        never.set()
    took = time.monotonic() - began
    assert took < 2, took
    assert report.timed_out and sorted(report.unchecked) == sorted(str(c.pk) for c in calls)
    assert "20 not checked in time" in report.summary()
    assert len(asked) == 8  # eight at a time; the rest were never sent
    assert all(c.max_duration_deadline is not None for c in Call.objects.all())
    assert Call.objects.live().count() == 20


def test_restore_state_for_readyz(settings, monkeypatch):
    settings.VOICECALL_MODE = "embedded"
    gate = threading.Event()
    monkeypatch.setattr("calls.services.calls_restore", lambda budget: (gate.wait(5), _report(timed_out=budget < 1))[1])
    restore = Restore()
    assert restore.as_dict() == {"state": "not started"}
    restore.start(process_started_at=timezone.now(), budget=0.2)
    assert restore.as_dict()["state"] == RUNNING and restore.as_dict()["limitSeconds"] == 0.2
    gate.set()
    assert restore.wait(5)
    body = restore.as_dict()
    assert body["state"] == TIMED_OUT and "not checked in time" in body["detail"], body
    restore = Restore()
    restore.start(process_started_at=timezone.now(), budget=5)
    assert restore.wait(5) and restore.as_dict()["state"] == DONE


def test_restore_that_fails_says_so(monkeypatch):
    def broken(budget):
        raise RuntimeError("database gone")

    monkeypatch.setattr("calls.services.calls_restore", broken)
    restore = Restore()
    restore.start(process_started_at=timezone.now(), budget=1)
    assert restore.wait(5)
    assert restore.as_dict()["state"] == FAILED and "database gone" in restore.as_dict()["detail"]


def _report(*, timed_out: bool):
    from calls.services import RestoreReport

    return RestoreReport(kept=["a"], unchecked=["b"] if timed_out else [])


def test_gateway_start_returns_at_once_while_restore_waits_on_the_carrier(settings, monkeypatch, client):
    make_call(provider_call_id="mock-waiting", state="listening", age_seconds=30, answered_ago=20,
              max_duration_deadline=timezone.now() + timedelta(seconds=200))
    settings.VOICECALL_EMBEDDED_SCHEDULER = False
    settings.VOICECALL_RESTORE_SECONDS = 30
    answer = threading.Event()

    def slow_status(self, provider_call_id):
        answer.wait(10)
        raise RuntimeError("no answer")

    monkeypatch.setattr(mock.MockCarrier, "get_call_status", slow_status)
    gateway = get_gateway()
    monkeypatch.setattr(gateway, "started", False)
    began = time.monotonic()
    try:
        assert gateway.start() is True
        assert time.monotonic() - began < 5  # not the carrier's 10 s: restore waits on its own thread
        body = client.get("/readyz").json()
        assert body["ready"] is True and body["restore"]["state"] == "running", body
        answer.set()
        assert gateway.restore.wait(10)
        body = client.get("/readyz").json()
        assert body["restore"]["state"] == "done" and "kept 1," in body["restore"]["detail"], body
    finally:
        answer.set()
        gateway.stop()
    assert client.get("/readyz").json()["restore"] == {"state": "not started"}


def test_readyz_says_restore_was_skipped_when_calls_are_disabled(settings, monkeypatch, configure, client):
    settings.VOICECALL_EMBEDDED_SCHEDULER = False
    configure({"enabled": False})
    gateway = get_gateway()
    monkeypatch.setattr(gateway, "started", False)
    try:
        gateway.start()
        body = client.get("/readyz").json()
        assert body["restore"]["state"] == "skipped" and body["ready"] is False, body
    finally:
        gateway.stop()
