"""Failed hang-ups: exponential backoff with a cap, the give-up, and both paths that hang up (deadlines and the carrier_hangup job)."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from calls.free_ports import free_port
from calls.models import Call
from calls.services import call_initiate, deadlines_sweep, next_deadline
from calls.services.ending import carrier_hangup
from calls.services.hangup_retry import MAX_HANGUP_ATTEMPTS, retry_delay
from providers.carriers import mock
from tests.fake_clock import fake_clock
from tests.fakes import FakeTwilio
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SCHEDULE = [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_the_delay_doubles_from_5_seconds_up_to_5_minutes():
    assert [retry_delay(attempt).total_seconds() for attempt in range(1, MAX_HANGUP_ATTEMPTS)] == SCHEDULE
    assert retry_delay(10_000) == timedelta(seconds=300)  # capped, and no huge number built on the way


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_numbers_start_at_one(attempt):
    with pytest.raises(ValueError, match="start at 1"):
        retry_delay(attempt)


def failing_hangup(monkeypatch, message="carrier unreachable"):
    def hangup_call(self, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(mock.MockCarrier, "hangup_call", hangup_call)


def live_call(**extra) -> Call:
    fields = {"state": "listening", **extra}
    return Call.objects.create(
        provider="mock", provider_call_id="mock-live", direction="outbound",
        from_number="+15550000000", to_number="+15550001111", **fields,
    )


def run_retries(clock, call: Call) -> list[float]:
    """Sweep at each next try until none is scheduled; the delays seen between tries (seconds)."""
    delays = []
    for _ in range(2 * MAX_HANGUP_ATTEMPTS):
        call.refresh_from_db()
        if call.end_retry_at is None:
            return delays
        delays.append((call.end_retry_at - clock()).total_seconds())
        assert next_deadline() == call.end_retry_at  # the sweeper wakes for it
        assert deadlines_sweep(at=call.end_retry_at - timedelta(milliseconds=1)) == 0  # not a moment early
        clock.set(call.end_retry_at)
        assert deadlines_sweep() == 1
    raise AssertionError("the retries never stopped")


def test_deadline_hangup_backs_off_then_gives_up_with_error(monkeypatch, caplog):
    failing_hangup(monkeypatch)
    with fake_clock() as clock:
        call = live_call(max_duration_deadline=clock() - timedelta(seconds=1))
        with caplog.at_level(logging.WARNING, logger="calls.services"):
            deadlines_sweep()
            delays = run_retries(clock, call)
    assert delays == SCHEDULE
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.end_attempts, call.end_retry_at) == ("error", "error", 10, None)
    assert call.last_error == "the carrier hang-up failed 10 times, giving up: carrier unreachable"
    lines = [r.getMessage() for r in caplog.records if r.name == "calls.services" and r.levelno == logging.WARNING]
    assert len(lines) == 10  # one line per failed attempt, not two
    assert lines[0].startswith(f"call {call.pk}: hang-up attempt 1 of 10 failed: carrier unreachable; next try at ")
    assert lines[-1] == f"call {call.pk}: hang-up attempt 10 of 10 failed: carrier unreachable; giving up, the call ends with error"
    assert next_deadline() is None


def test_the_log_line_names_the_next_try_time(monkeypatch, caplog):
    failing_hangup(monkeypatch)
    with fake_clock() as clock:
        call = live_call(max_duration_deadline=clock())
        with caplog.at_level(logging.WARNING, logger="calls.services"):
            deadlines_sweep()
    call.refresh_from_db()
    [line] = [r.getMessage() for r in caplog.records if r.name == "calls.services" and r.levelno == logging.WARNING]
    assert line.endswith("next try at " + call.end_retry_at.isoformat(timespec="seconds"))


def test_an_ended_call_hangup_backs_off_and_keeps_its_state_on_give_up(monkeypatch):
    failing_hangup(monkeypatch, "503 Service Unavailable")
    with fake_clock() as clock:
        call = live_call(state="hangup-bot", end_reason="hangup-bot", rejection_reason="not-allowlisted")
        carrier_hangup(call_id=str(call.pk), reason="hangup-bot")  # what the rejection submits
        delays = run_retries(clock, call)
    assert delays == SCHEDULE
    call.refresh_from_db()
    # Terminal states never change; the failure is on the record.
    assert (call.state, call.end_reason, call.end_attempts) == ("hangup-bot", "hangup-bot", 10)
    assert call.last_error == "the carrier hang-up failed 10 times, giving up: 503 Service Unavailable"


def test_an_ended_call_hangup_recovers(monkeypatch, outbox):
    failing_hangup(monkeypatch)
    with fake_clock() as clock:
        call = live_call(state="timeout", end_reason="timeout")
        carrier_hangup(call_id=str(call.pk), reason="timeout")
        call.refresh_from_db()
        assert call.end_attempts == 1
        monkeypatch.undo()
        clock.set(call.end_retry_at)
        assert deadlines_sweep() == 1
    call.refresh_from_db()
    assert (call.state, call.end_retry_at, call.last_error) == ("timeout", None, "")
    assert outbox[-1].action == "hangup_call" and outbox[-1].params["reason"] == "timeout"


def test_the_carrier_ending_the_call_cancels_the_retry(monkeypatch):
    from calls.services import event_process
    from core.events import CallEnded

    failing_hangup(monkeypatch)
    with fake_clock() as clock:
        call = live_call(max_duration_deadline=clock())
        deadlines_sweep()
        event_process(event=CallEnded(call_id=str(call.pk), reason="completed"))
        call.refresh_from_db()
        assert call.is_terminal and call.end_retry_at is None
        clock.advance(3600)
        assert deadlines_sweep() == 0


def test_the_dial_racing_an_end_hangs_up_with_backoff(monkeypatch):
    """A call ended while it was being dialed is hung up by the carrier_hangup job, retried alike."""
    from calls.services.common import finalize_by_id

    original = mock.MockCarrier.initiate_call

    def initiate_and_race(self, *, dial):
        result = original(self, dial=dial)
        finalize_by_id(dial.call_id, "hangup-bot")  # an end that came in while the carrier dialed
        return result

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", initiate_and_race)
    failing_hangup(monkeypatch)
    with fake_clock() as clock:
        call = call_initiate(to="+15550001111")
        call.refresh_from_db()
        assert (call.state, call.end_attempts, call.end_retry_at) == ("hangup-bot", 1, clock() + timedelta(seconds=5))


# --- through a fake carrier's REST API and the real gateway ------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with FakeTwilio() as fake:
        block = {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url}
        configure({"enabled": True, "provider": "twilio", "fromNumber": "+15550000001",
                   "publicUrl": f"{live_gateway}/voice/webhook", "twilio": block})
        fake.block = block
        yield fake
        assert not fake.errors


def answered_call(twilio, clock) -> Call:
    call = call_initiate(to="+15550001111")
    sid = Call.objects.get(pk=call.pk).provider_call_id
    twilio.answer(sid)
    call = wait_until(lambda: Call.objects.filter(pk=call.pk, state="answered").first())
    clock.set(call.max_duration_deadline)
    return call


def hangups(twilio, call: Call):
    return twilio.requests_to("POST", rf"/Calls/{call.provider_call_id}\.json$")


def test_a_carrier_answering_503_is_retried_with_backoff_then_given_up(twilio):
    with fake_clock() as clock:
        call = answered_call(twilio, clock)
        twilio.fail_next("POST", rf"/Calls/{call.provider_call_id}\.json$", 503,
                         {"code": 20503, "message": "Service Unavailable", "status": 503}, times=100)
        assert deadlines_sweep() == 1
        delays = run_retries(clock, call)
    assert delays == SCHEDULE
    assert [r.status for r in hangups(twilio, call)] == [503] * 10
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.end_attempts) == ("error", "error", 10)
    assert call.last_error.startswith("the carrier hang-up failed 10 times, giving up: twilio POST ")
    assert "(503, code 20503): Service Unavailable" in call.last_error


def test_a_carrier_refusing_connections_is_given_up(twilio, configure):
    with fake_clock() as clock:
        call = answered_call(twilio, clock)
        configure({"enabled": True, "provider": "twilio", "fromNumber": "+15550000001",
                   "publicUrl": "https://gw.example.com/voice/webhook",
                   "twilio": {**twilio.block, "baseUrl": f"http://127.0.0.1:{free_port()}"}})
        deadlines_sweep()
        assert run_retries(clock, call) == SCHEDULE
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.end_attempts) == ("error", "error", 10)
    assert "ConnectError" in call.last_error


def test_a_carrier_recovering_after_two_failures_ends_the_call_normally(twilio):
    with fake_clock() as clock:
        call = answered_call(twilio, clock)
        twilio.fail_next("POST", rf"/Calls/{call.provider_call_id}\.json$", 503,
                         {"code": 20503, "message": "Service Unavailable", "status": 503}, times=2)
        deadlines_sweep()
        assert run_retries(clock, call) == [5, 10]
    assert [r.status for r in hangups(twilio, call)] == [503, 503, 200]
    twilio.wait_idle()
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.end_attempts, call.last_error) == ("timeout", "timeout", 2, "")
    assert twilio.call(call.provider_call_id).status == "completed"
