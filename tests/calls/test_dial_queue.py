"""Outbound dials as queued jobs: claim, at most once, retries with backoff, the rate limit, idempotency, resume."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from calls import background, dial_rate
from calls.clock import now
from calls.models import Call
from calls.services import call_end, call_initiate, call_initiate_request, lost_jobs_resume
from calls.services.common import CLAIM_TTL, finalize_by_id
from calls.services.dial_job import DIAL_TRIES, dial_run, dial_status, retry_delay
from calls.services.dialing import DIAL_GRACE
from calls.services.resume import DIAL_LOST, DIAL_QUEUE_GRACE
from calls.services.sweeps import calls_restore, stale_calls_reap
from core.errors import CallFailed, CapacityReached, CarrierError, CarrierUnreachable, InvalidRequest
from core.events import CallAnswered
from providers.carriers import mock
from providers.carriers.http import CarrierHttpError, retry_after_seconds
from tests.private_redis import PrivateRedis
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TO = "+15550001111"


def queued_call(**extra) -> Call:
    """A call as call_initiate writes it, its dial job not run yet."""
    extra.setdefault("dial_queued_at", extra.get("started_at") or now())
    return Call.objects.create(provider="mock", direction="outbound", from_number="+15550000000", to_number=TO,
                               mode="notify", initial_message="Hi", **extra)


def dials() -> list[str]:
    return [request.provider_call_id for request in mock.outbox if request.action == "initiate_call"]


class Sleeps(list):
    """A sleep that only records how long it was asked for."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def carrier_answers(monkeypatch, *errors: Exception) -> list[Exception]:
    """The mock carrier raises these errors on the next dials, in order, then places the call."""
    pending = list(errors)
    placed = mock.MockCarrier.initiate_call

    def initiate(self, dial):
        self._record("initiate_attempt", None, call_id=dial.call_id)
        if pending:
            raise pending.pop(0)
        return placed(self, dial)

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", initiate)
    return pending


def http_error(status: int, retry_after: float | None = None) -> CarrierHttpError:
    return CarrierHttpError(f"twilio POST /Calls.json failed ({status}): no", status=status, retry_after=retry_after)


# --- the claim and at most once ------------------------------------------------------------


def test_a_queued_call_is_dialed_once_and_marked():
    call = queued_call()
    assert dial_run(call_id=str(call.pk)) == "placed"
    call.refresh_from_db()
    assert call.provider_call_id == f"mock-{call.pk}" and call.dialed_at is not None
    assert call.dial_attempts == 1 and call.dial_claimed_at is None and call.dial_claim_token is None
    assert dial_run(call_id=str(call.pk)) == "skipped"  # a redelivered job
    assert dials() == [f"mock-{call.pk}"]


def test_a_call_claimed_by_a_live_holder_is_left_to_it():
    call = queued_call(dial_claimed_at=now())
    assert dial_run(call_id=str(call.pk)) == "skipped"
    assert dials() == []


def test_an_abandoned_claim_before_the_request_is_taken_over_and_dialed():
    call = queued_call(dial_claimed_at=now() - CLAIM_TTL - timedelta(seconds=1))
    assert dial_run(call_id=str(call.pk)) == "placed"
    assert dials() == [f"mock-{call.pk}"]


def test_a_request_in_flight_when_its_process_died_is_never_sent_again():
    # The worker died mid-request: the carrier may have the call, so no job dials it again.
    lost = now() - CLAIM_TTL - timedelta(seconds=1)
    call = queued_call(dial_claimed_at=lost, dial_requested_at=lost, dial_attempts=1)
    assert dial_run(call_id=str(call.pk)) == "skipped"
    assert lost_jobs_resume() == 0
    assert dials() == []
    call.refresh_from_db()
    assert not call.is_terminal


def test_a_lost_request_fails_after_the_dial_grace():
    lost = now() - DIAL_GRACE - timedelta(seconds=1)
    call = queued_call(dial_claimed_at=lost, dial_requested_at=lost, dial_attempts=1)
    assert lost_jobs_resume() == 1
    call.refresh_from_db()
    assert (call.state, call.last_error) == ("failed", DIAL_LOST)
    assert dials() == []


def test_a_lost_request_the_carrier_placed_is_linked_by_its_webhook(client):
    from calls.services import event_process
    from core.events import CallRinging

    lost = now() - CLAIM_TTL - timedelta(seconds=1)
    call = queued_call(dial_claimed_at=lost, dial_requested_at=lost, dial_attempts=1)
    event_process(event=CallRinging(call_id=str(call.pk), provider_call_id="carrier-7"))
    call.refresh_from_db()
    assert call.provider_call_id == "carrier-7" and call.state == "ringing"
    assert dial_run(call_id=str(call.pk)) == "skipped"
    call.refresh_from_db()
    assert dial_status(call) == "placed"


def test_a_call_ended_before_its_dial_is_not_dialed():
    call = queued_call()
    call_end(call_id=str(call.pk))  # queued: nothing at the carrier, ended at once
    call.refresh_from_db()
    assert call.is_terminal
    assert dial_run(call_id=str(call.pk)) == "skipped"
    assert dials() == []


def test_a_call_ended_while_waiting_for_its_slot_is_not_dialed(monkeypatch):
    call = queued_call()

    def end_meanwhile(*args, **kwargs):
        call_end(call_id=str(call.pk))
        return 0.0

    monkeypatch.setattr(dial_rate, "slot_wait", end_meanwhile)
    assert dial_run(call_id=str(call.pk)) == "ended"
    call.refresh_from_db()
    assert call.is_terminal and call.dial_claimed_at is None and call.dial_attempts == 0
    assert dials() == []


def test_a_call_ended_while_the_carrier_dials_is_hung_up(monkeypatch):
    call = queued_call()
    placed = mock.MockCarrier.initiate_call

    def end_during_the_request(self, dial):
        result = placed(self, dial)
        finalize_by_id(dial.call_id, "hangup-bot")  # ended elsewhere while the request was in flight
        return result

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", end_during_the_request)
    background.set_mode("inline")
    dial_run(call_id=str(call.pk))
    call.refresh_from_db()
    assert call.is_terminal and call.provider_call_id == f"mock-{call.pk}"
    assert ("hangup_call", f"mock-{call.pk}") in [(r.action, r.provider_call_id) for r in mock.outbox]


# --- retries and backoff ---------------------------------------------------------------------


@pytest.mark.parametrize("error", [http_error(429), http_error(500), http_error(503), CarrierUnreachable("refused")],
                         ids=["429", "500", "503", "unreachable"])
def test_a_try_that_may_pass_later_is_retried_with_backoff(monkeypatch, error):
    carrier_answers(monkeypatch, error, error)
    call = queued_call()
    sleeps = Sleeps()
    assert dial_run(call_id=str(call.pk), sleep=sleeps) == "placed"
    assert sleeps == [1.0, 2.0]
    call.refresh_from_db()
    assert call.dial_attempts == 3 and call.provider_call_id and not call.is_terminal
    assert dials() == [f"mock-{call.pk}"]


def test_retry_after_is_honoured_up_to_a_minute(monkeypatch):
    carrier_answers(monkeypatch, http_error(429, retry_after=7), http_error(429, retry_after=3600))
    call = queued_call()
    sleeps = Sleeps()
    assert dial_run(call_id=str(call.pk), sleep=sleeps) == "placed"
    assert sleeps == [7.0, 60.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_a_refusal_that_will_not_change_fails_at_once(monkeypatch, status):
    carrier_answers(monkeypatch, http_error(status))
    call = queued_call()
    sleeps = Sleeps()
    assert dial_run(call_id=str(call.pk), sleep=sleeps) == "failed"
    assert sleeps == []
    call.refresh_from_db()
    assert (call.state, call.dial_attempts) == ("failed", 1)
    assert call.last_error == f"twilio POST /Calls.json failed ({status}): no"
    assert call.dial_claimed_at is None


def test_a_dial_is_tried_a_bounded_number_of_times_then_fails_with_the_last_error(monkeypatch):
    carrier_answers(monkeypatch, *[http_error(503)] * (DIAL_TRIES - 1), http_error(429))
    call = queued_call()
    sleeps = Sleeps()
    assert dial_run(call_id=str(call.pk), sleep=sleeps) == "failed"
    assert sleeps == [1.0, 2.0, 4.0]
    call.refresh_from_db()
    assert (call.state, call.dial_attempts) == ("failed", DIAL_TRIES)
    assert "(429)" in call.last_error
    assert dials() == []


def test_retry_delay_rules():
    assert retry_delay(CarrierError("bad number"), 1) is None  # not a status: a request that cannot be known unsent
    assert retry_delay(http_error(404), 1) is None
    assert [retry_delay(http_error(502), attempt) for attempt in (1, 2, 3, 6, 10)] == [1.0, 2.0, 4.0, 30.0, 30.0]
    assert retry_delay(http_error(429, retry_after=0), 2) == 2.0


def test_retry_after_header_forms():
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_a_connection_that_never_reached_the_carrier_is_unreachable():
    import httpx

    from providers.carriers.http import CarrierHttp

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    http = CarrierHttp(carrier="twilio", base_url="https://api.twilio.test", error_reader=lambda r: ("", None),
                       transport=httpx.MockTransport(refuse))
    with pytest.raises(CarrierUnreachable):
        http.request("POST", "/Calls.json", form=[("To", TO)])

    def slow_answer(request):
        raise httpx.ReadTimeout("no answer", request=request)

    http = CarrierHttp(carrier="twilio", base_url="https://api.twilio.test", error_reader=lambda r: ("", None),
                       transport=httpx.MockTransport(slow_answer))
    with pytest.raises(CarrierError) as raised:
        http.request("POST", "/Calls.json", form=[("To", TO)])
    assert not isinstance(raised.value, CarrierUnreachable)  # sent: the carrier may have acted on it


def test_a_429_carries_its_retry_after():
    import httpx

    from providers.carriers.http import CarrierHttp

    http = CarrierHttp(carrier="twilio", base_url="https://api.twilio.test", error_reader=lambda r: ("slow down", "20429"),
                       transport=httpx.MockTransport(lambda request: httpx.Response(429, headers={"Retry-After": "4"})))
    with pytest.raises(CarrierHttpError) as raised:
        http.request("POST", "/Calls.json", form=[("To", TO)])
    assert (raised.value.status, raised.value.retry_after) == (429, 4.0)


# --- call_initiate: waiting, idempotency, pre-assigned ids ---------------------------------------


def test_initiate_returns_the_placed_call_when_jobs_run_inline(configure, outbox):
    configure({"maxConcurrentCalls": 2})
    call = call_initiate(to=TO, message="Hi")
    assert dial_status(call) == "placed" and call.dial_attempts == 1
    assert call_initiate_request(to=TO, message="Hi").as_dict()["initiated"] is True


def test_initiate_raises_the_carriers_message_when_the_dial_fails(monkeypatch):
    carrier_answers(monkeypatch, http_error(400))
    with pytest.raises(CallFailed, match=r"failed \(400\): no") as raised:
        call_initiate(to=TO, message="Hi")
    assert Call.objects.get(pk=raised.value.call_id).state == "failed"


def test_initiate_with_wait_zero_returns_the_queued_call_at_once():
    background.set_mode("thread")
    release = threading.Event()
    placed = mock.MockCarrier.initiate_call

    def held(self, dial):
        release.wait(10)
        return placed(self, dial)

    original = mock.MockCarrier.initiate_call
    mock.MockCarrier.initiate_call = held
    try:
        result = call_initiate_request(to=TO, message="Hi", wait=0)
        assert result.as_dict() == {"callId": result.call_id, "initiated": False, "queued": True,
                                    "status": result.status_text()}
        assert result.dial in ("queued", "dialing")
        release.set()
        wait_until(lambda: dial_status(Call.objects.get(pk=result.call_id)) == "placed", "the dial")
    finally:
        release.set()
        mock.MockCarrier.initiate_call = original
        background.drain()


def test_initiate_waits_a_bounded_time_then_says_queued(configure):
    configure({"maxConcurrentCalls": 2})
    background.set_mode("thread")
    release = threading.Event()
    placed = mock.MockCarrier.initiate_call
    original = mock.MockCarrier.initiate_call
    mock.MockCarrier.initiate_call = lambda self, dial: (release.wait(10), placed(self, dial))[1]
    try:
        started = time.monotonic()
        result = call_initiate_request(to=TO, message="Hi", wait=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert result.dial == "dialing" and result.as_dict()["initiated"] is False
        assert "queued" in result.as_dict()["status"]
        release.set()
        wait_until(lambda: dial_status(Call.objects.get(pk=result.call_id)) == "placed", "the dial")
        # Within the wait, the answer is the carrier's.
        assert call_initiate_request(to="+15550002222", message="Hi", wait=5).as_dict()["initiated"] is True
    finally:
        release.set()
        mock.MockCarrier.initiate_call = original
        background.drain()


def test_the_same_idempotency_key_places_one_call(configure, outbox):
    configure({"maxConcurrentCalls": 1})
    first = call_initiate(to=TO, message="Hi", idempotency_key="order-17")
    # No second admission either: at capacity, the repeat still answers with the first call.
    again = call_initiate(to=TO, message="Hi", idempotency_key="order-17")
    assert again.pk == first.pk and first.idempotency_key == "order-17"
    assert dials() == [f"mock-{first.pk}"] and Call.objects.count() == 1
    with pytest.raises(CapacityReached):
        call_initiate(to=TO, message="Hi", idempotency_key="order-18")


def test_concurrent_requests_with_one_key_place_one_call(configure):
    configure({"maxConcurrentCalls": 5})
    results: list[str] = []

    def place() -> None:
        results.append(str(call_initiate(to=TO, message="Hi", idempotency_key="twice").pk))

    threads = [threading.Thread(target=place) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 4 and len(set(results)) == 1
    assert Call.objects.count() == 1 and len(dials()) == 1


def test_a_key_reused_for_another_number_is_refused():
    call_initiate(to=TO, message="Hi", idempotency_key="k1")
    with pytest.raises(InvalidRequest, match="idempotencyKey: already used for a call to another number"):
        call_initiate(to="+15550002222", message="Hi", idempotency_key="k1")


@pytest.mark.parametrize(("key", "message"), [
    ("", "idempotencyKey: must be a non-empty string"),
    ("  ", "idempotencyKey: must be a non-empty string"),
    ("x" * 256, "idempotencyKey: at most 255 characters"),
    ("a\nb", "idempotencyKey: control characters are not allowed"),
])
def test_bad_idempotency_keys_are_refused_by_name(key, message):
    with pytest.raises(InvalidRequest, match=message):
        call_initiate(to=TO, message="Hi", idempotency_key=key)
    assert Call.objects.count() == 0


def test_a_pre_assigned_call_id_becomes_the_calls_id():
    import uuid

    chosen = uuid.uuid4()
    call = call_initiate(to=TO, message="Hi", call_id=str(chosen), idempotency_key="list:1:1", wait=0)
    assert call.pk == chosen and Call.objects.get(pk=chosen).provider_call_id == f"mock-{chosen}"
    with pytest.raises(InvalidRequest, match="callId: a call with id"):
        call_initiate(to=TO, message="Hi", call_id=str(chosen))
    with pytest.raises(InvalidRequest, match="callId: not a call id"):
        call_initiate(to=TO, message="Hi", call_id="nope")
    with pytest.raises(InvalidRequest, match="wait: must be a number"):
        call_initiate(to=TO, message="Hi", wait=-1)


# --- resume of dials lost before their request ------------------------------------------------


def test_a_dial_never_picked_up_is_queued_again(outbox):
    call = queued_call(started_at=now() - DIAL_QUEUE_GRACE - timedelta(seconds=1))
    fresh = queued_call()
    never_queued = queued_call(started_at=now() - DIAL_QUEUE_GRACE - timedelta(seconds=1), dial_queued_at=None)
    assert lost_jobs_resume() == 1
    assert dials() == [f"mock-{call.pk}"]
    fresh.refresh_from_db()
    assert dial_status(fresh) == "queued"
    never_queued.refresh_from_db()  # written before dials were queued: maybe mid-dial, left to restore
    assert dial_status(never_queued) == "queued"


def test_a_long_queue_is_queued_again_once_per_grace(monkeypatch):
    background.set_mode("thread")  # submitted, never run: the workers are busy
    submitted = []
    monkeypatch.setattr(background, "submit", lambda name, **kwargs: submitted.append(kwargs["call_id"]))
    call = queued_call(started_at=now() - DIAL_QUEUE_GRACE * 3)
    assert lost_jobs_resume() == 1
    assert lost_jobs_resume() == 0
    assert lost_jobs_resume(at=now() + DIAL_QUEUE_GRACE + timedelta(seconds=1)) == 1
    assert submitted == [str(call.pk)] * 2


def test_an_abandoned_claim_is_released_and_queued_again(outbox):
    call = queued_call(dial_claimed_at=now() - CLAIM_TTL - timedelta(seconds=1), dial_attempts=1)
    assert lost_jobs_resume() == 1
    assert dials() == [f"mock-{call.pk}"]


def test_after_a_restart_an_old_queued_call_fails_and_a_recent_one_is_dialed(outbox, settings):
    settings.VOICECALL_MODE = "embedded"  # the one gateway restarted: its queue died with it
    started = now()
    old = queued_call(started_at=started - DIAL_GRACE - timedelta(seconds=5))
    recent = queued_call(started_at=started - DIAL_QUEUE_GRACE - timedelta(seconds=1))
    lost_jobs_resume(abandoned_before=started)
    report = calls_restore()
    assert report.failed_dials == [str(old.pk)]
    assert dials() == [f"mock-{recent.pk}"]


def test_restore_with_a_shared_queue_leaves_queued_dials_to_the_workers(settings):
    settings.VOICECALL_MODE = "distributed"
    queued = queued_call(started_at=now() - DIAL_GRACE * 3)
    lost = queued_call(started_at=now() - DIAL_GRACE * 3, dial_requested_at=now() - DIAL_GRACE * 2,
                       dial_claimed_at=now() - DIAL_GRACE * 2, dial_attempts=1)
    never_queued = queued_call(started_at=now() - DIAL_GRACE * 3, dial_queued_at=None)
    assert sorted(calls_restore().failed_dials) == sorted([str(lost.pk), str(never_queued.pk)])
    queued.refresh_from_db()
    assert not queued.is_terminal


def test_the_stale_reaper_leaves_queued_dials_and_counts_from_the_dial(configure):
    configure({"staleCallReaperSeconds": 60})
    queued_call(started_at=now() - timedelta(seconds=600))  # waiting for its slot
    dialed_late = queued_call(started_at=now() - timedelta(seconds=600), provider_call_id="p-1", dialed_at=now())
    unanswered = queued_call(started_at=now() - timedelta(seconds=600), provider_call_id="p-2",
                             dialed_at=now() - timedelta(seconds=61))
    assert stale_calls_reap() == 1
    dialed_late.refresh_from_db()
    assert not dialed_late.is_terminal
    assert Call.objects.get(pk=unanswered.pk).is_terminal


def test_an_answered_call_after_a_queued_dial_goes_on(outbox):
    from calls.services import event_process

    call = call_initiate(to=TO, message="Hi", mode="conversation")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    assert call.answered_at is not None and not call.is_terminal


# --- the rate limit ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_local_slots_space_dials_by_the_interval():
    clock = FakeClock()
    slots = dial_rate.LocalSlots(clock)
    assert [slots.reserve("twilio:AC1", 0.2) for _ in range(3)] == pytest.approx([0.0, 0.2, 0.4])
    assert slots.reserve("twilio:AC2", 0.2) == 0.0  # another account has its own limit
    clock.now += 10
    assert slots.reserve("twilio:AC1", 0.2) == 0.0  # idle again


def test_redis_slots_are_shared_by_every_client():
    with PrivateRedis() as server:
        first, second = dial_rate.RedisSlots(server.url), dial_rate.RedisSlots(server.url)
        waits = [client.reserve("mock:-", 0.5) for client in (first, second, first, second)]
        # Each reservation is one interval after the one before, whoever made it (allowing for time passing).
        assert waits[0] == 0.0
        for earlier, later in zip(waits, waits[1:]):
            assert 0.4 < later - earlier <= 0.5
        assert first.reserve("twilio:AC9", 0.5) == 0.0


def test_the_limit_comes_from_the_carriers_section(configure):
    from calls.runtime import get_runtime

    loaded = configure({"provider": "mock", "mock": {"callsPerSecond": 5}})
    assert dial_rate.calls_per_second(loaded.config, "mock") == 5
    assert dial_rate.calls_per_second(loaded.config, "twilio") == 1.0
    assert dial_rate.calls_per_second(loaded.config, "plivo") == 2.0
    assert dial_rate.account_key(get_runtime().carrier) == "mock:-"
    loaded = configure({"provider": "mock"})
    assert dial_rate.calls_per_second(loaded.config, "mock") is None


def test_the_account_names_the_limit(configure):
    from calls.runtime import get_runtime

    configure({"provider": "twilio", "fromNumber": "+15550000000", "publicUrl": "https://voice.example.com/voice/webhook",
               "twilio": {"accountSid": "AC123", "authToken": "rate-limit-token", "callsPerSecond": 3}})
    carrier = get_runtime().carrier
    assert dial_rate.account_key(carrier) == "twilio:AC123"
    assert dial_rate.calls_per_second(get_runtime().config, "twilio") == 3


@pytest.mark.parametrize("value", [0, -1, "5", True])
def test_a_bad_calls_per_second_is_refused_by_name(value):
    from core.config.loader import load_config_data

    loaded = load_config_data({"provider": "mock", "mock": {"callsPerSecond": value}}, environ={})
    assert any(error.startswith("mock.callsPerSecond: ") for error in loaded.errors)


def test_dials_wait_for_their_slot(configure, outbox, monkeypatch):
    configure({"provider": "mock", "mock": {"callsPerSecond": 4}})
    monkeypatch.setattr(dial_rate, "slots", lambda: book)
    book = dial_rate.LocalSlots(FakeClock())
    sleeps = Sleeps()
    calls = [queued_call() for _ in range(3)]
    for call in calls:
        assert dial_run(call_id=str(call.pk), sleep=sleeps) == "placed"
    # No real time passes (the sleep is recorded only): each dial waits one interval more.
    assert sleeps == [0.25, 0.5]
