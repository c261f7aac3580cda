"""Whole-call edge cases through each carrier's local fake and the live gateway.

Same set-up as tests/providers/carriers/test_carriers_e2e.py (fake carrier REST API + signed webhooks against the
real gateway on a socket): greetings in the answer, pre-connect digits, unanswered outcomes,
the caller hanging up, inbound policy rejections, redelivered and out-of-order events,
restore after a restart, the Twilio "not in progress yet" retry and concurrent ends.
Expected values come from docs/compatibility.md, Restore after restart; Greeting and initial message; Call commands; Outbound admission; Carrier requests.
"""
from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest

from calls.free_ports import free_port
from calls.models import Call
from calls.runtime import get_runtime
from calls.services import call_continue, call_end, call_initiate, call_speak, calls_restore
from core.errors import CarrierError
from tests.conftest import hold_hangup_until_seen
from tests.fakes import FakePlivo, FakeTelnyx, FakeTwilio
from tests.providers.carriers.test_carriers_e2e import (
    CALLER, FROM, Background, carrier_block, carrier_config, query_of, transcript,
)
from tests.waiting import wait_until

TO = "+15550001111"
ALLOWED_ONLY = "+15550009999"


def lost_webhooks(fake, live_gateway: str):
    """While active, the fake's webhooks to the gateway go nowhere (the gateway is 'down')."""

    class _Lost:
        def __enter__(self):
            fake.reroute = {live_gateway: f"http://127.0.0.1:{free_port()}"}

        def __exit__(self, *exc):
            fake.wait_idle()
            fake.reroute = {}

    return _Lost()


def webhook_fetches(fake, live_gateway: str) -> list:
    """Deliveries to the gateway's webhook that are not status callbacks."""
    return [d for d in fake.deliveries
            if d.url.startswith(f"{live_gateway}/voice/webhook") and query_of(d.url).get("type") != "status"]


def refreshed(call: Call) -> Call:
    return Call.objects.get(pk=call.pk)


def placed(call: Call) -> Call:
    call.refresh_from_db()
    assert call.provider_call_id
    return call


# --- fixtures (as in test_carriers_e2e.py) --------------------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with FakeTwilio() as fake:
        fake.setup = lambda **extra: configure(carrier_config("twilio", live_gateway, carrier_block("twilio", fake), **extra))
        fake.setup()
        yield fake
        fake.wait_idle()
        assert not fake.errors


@pytest.fixture
def telnyx(live_gateway, configure):
    with FakeTelnyx(webhook_url=f"{live_gateway}/voice/webhook") as fake:
        fake.setup = lambda **extra: configure(carrier_config("telnyx", live_gateway, carrier_block("telnyx", fake), **extra))
        fake.setup()
        yield fake
        fake.wait_idle()
        assert not fake.errors


@pytest.fixture
def plivo(live_gateway, configure):
    with FakePlivo() as fake:
        fake.setup = lambda **extra: configure(carrier_config("plivo", live_gateway, carrier_block("plivo", fake), **extra))
        fake.setup()
        yield fake
        fake.wait_idle()
        assert not fake.errors


def twilio_hangups(fake: FakeTwilio, sid: str) -> list:
    return [r for r in fake.requests_to("POST", rf"/Calls/{sid}\.json$") if r.form == {"Status": ["completed"]}]


# --- Twilio outbound conversation -----------------------------------------------------------


def test_twilio_outbound_conversation_greeting_in_the_answer(twilio, live_gateway):
    greeting = "Hi, this is the clinic calling."
    call = call_initiate(to=TO, message=greeting, mode="conversation")
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert query_of(create.form["Url"][0]) == {"callId": str(call.pk)} and "Twiml" not in create.form
    sid = placed(call).provider_call_id

    twilio.answer(sid)
    fake_call = twilio.call(sid)
    # The Url fetch is answered with the greeting inside a speech <Gather>: no live update needed.
    (fetch,) = webhook_fetches(twilio, live_gateway)
    assert query_of(fetch.url) == {"callId": str(call.pk)} and fetch.params["CallStatus"] == "in-progress"
    gather = ET.fromstring(fetch.response_text).find("Gather")
    assert gather is not None and "speech" in gather.get("input").split()
    assert [say.text for say in gather.findall("Say")] == [greeting]
    assert [said["text"] for said in fake_call.said] == [greeting]
    assert fake_call.gather is not None
    assert not twilio.requests_to("POST", rf"/Calls/{sid}\.json$")
    assert transcript(refreshed(call)) == [("bot", greeting)]
    assert refreshed(call).state == "listening"

    turn = Background(lambda: call_continue(call_id=str(call.pk), prompt="What day suits you?"))
    wait_until(lambda: twilio.requests_to("POST", rf"/Calls/{sid}\.json$"))
    twilio.wait_idle()
    token = query_of(fake_call.gather["action"])["turnToken"]
    assert token
    # The caller answers after hearing the prompt, which is recorded once Twilio took the request.
    wait_until(lambda: transcript(refreshed(call))[-1] == ("bot", "What day suits you?"), "the prompt in the transcript")
    twilio.say(sid, "Tuesday morning please", confidence=0.8)
    assert turn.result() == "Tuesday morning please"

    assert all(d.status == 200 for d in twilio.deliveries)

    # The end status callback is kept away: which side records the end first is a race
    # (see test_bot_hangup_stays_hangup_bot_when_the_end_webhook_wins).
    with lost_webhooks(twilio, live_gateway):
        call_end(call_id=str(call.pk))
    assert len(twilio_hangups(twilio, sid)) == 1
    assert twilio.call(sid).status == "completed"
    call = refreshed(call)
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert call.turn_count == 1
    assert transcript(call) == [
        ("bot", greeting), ("bot", "What day suits you?"), ("user", "Tuesday morning please"),
    ]


def test_twilio_outbound_dtmf_sequence_is_played_before_the_webhook(twilio, live_gateway):
    call = call_initiate(to=TO, message="Hello, extension reached.", mode="conversation", dtmf_sequence="1w2")
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert "Url" not in create.form
    sid = placed(call).provider_call_id

    twilio.answer(sid)
    fake_call = twilio.call(sid)
    assert fake_call.played_digits == ["1w2"]
    # First document: the inline digits + redirect; second: the gateway's answer to the redirect.
    first, second = fake_call.documents[:2]
    assert [el.tag for el in ET.fromstring(first)] == ["Play", "Redirect"]
    (fetch,) = webhook_fetches(twilio, live_gateway)
    assert query_of(fetch.url) == {"callId": str(call.pk)}
    assert fetch.response_text == second
    assert [said["text"] for said in fake_call.said] == ["Hello, extension reached."]
    assert transcript(refreshed(call)) == [("bot", "Hello, extension reached.")]
    # The digits went with the dial: no DTMF update afterwards.
    assert not twilio.requests_to("POST", rf"/Calls/{sid}\.json$")


# --- unanswered outcomes ----------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "reason"), [("busy", "busy"), ("no_answer", "no-answer"), ("fail", "failed")])
def test_twilio_unanswered_outcomes(twilio, outcome, reason):
    call = call_initiate(to=TO, message="Hello", mode="conversation")
    sid = placed(call).provider_call_id
    getattr(twilio, outcome)(sid)
    call = refreshed(call)
    assert (call.state, call.end_reason) == (reason, reason)
    assert call.answered_at is None and transcript(call) == []
    assert not twilio_hangups(twilio, sid)


@pytest.mark.parametrize(("outcome", "reason"), [("busy", "busy"), ("no_answer", "no-answer")])
def test_telnyx_unanswered_outcomes(telnyx, outcome, reason):
    call = call_initiate(to=TO, message="Hello", mode="conversation")
    control_id = placed(call).provider_call_id
    telnyx.wait_idle()
    getattr(telnyx, outcome)(control_id)
    call = refreshed(call)
    assert (call.state, call.end_reason) == (reason, reason)
    assert call.answered_at is None
    assert not telnyx.requests_to("POST", r"/actions/")


@pytest.mark.parametrize(("outcome", "reason"), [("busy", "busy"), ("no_answer", "no-answer")])
def test_plivo_unanswered_outcomes(plivo, outcome, reason):
    call = call_initiate(to=TO, message="Hello", mode="conversation")
    request_uuid = placed(call).provider_call_id
    getattr(plivo, outcome)(request_uuid)
    hangup = plivo.deliveries[-1]
    assert query_of(hangup.url)["flow"] == "hangup" and hangup.status == 200
    call = refreshed(call)
    assert (call.state, call.end_reason) == (reason, reason)
    assert not plivo.requests_to("DELETE", r"/")


# --- the caller hangs up mid-call -------------------------------------------------------------


def test_twilio_caller_hangs_up(twilio):
    call = call_initiate(to=TO, message="Hello there.", mode="conversation")
    sid = placed(call).provider_call_id
    twilio.answer(sid)
    assert refreshed(call).state == "listening"
    twilio.hang_up(sid)
    call = refreshed(call)
    assert (call.state, call.end_reason) == ("completed", "completed")  # docs/compatibility.md, Carrier requests: completed → completed
    assert call.ended_at is not None
    assert not twilio_hangups(twilio, sid)


def test_telnyx_caller_hangs_up(telnyx):
    call = call_initiate(to=TO, message="Hello there.", mode="conversation")
    control_id = placed(call).provider_call_id
    telnyx.answer(control_id)
    wait_until(lambda: telnyx.call(control_id).transcription)
    telnyx.hang_up(control_id)
    assert telnyx.call(control_id).hangup_cause == "normal_clearing"
    call = refreshed(call)
    assert (call.state, call.end_reason) == ("completed", "completed")  # §3.2: normal_clearing → completed
    assert not telnyx.requests_to("POST", r"/actions/hangup$")


def test_plivo_caller_hangs_up(plivo):
    call = call_initiate(to=TO, message="Hello there.", mode="conversation")
    request_uuid = placed(call).provider_call_id
    plivo.answer(request_uuid)
    fake_call = plivo.call(request_uuid)
    assert fake_call.get_input is not None
    plivo.hang_up(fake_call.call_uuid)
    call = refreshed(call)
    assert call.provider_call_id == fake_call.call_uuid
    assert (call.state, call.end_reason) == ("completed", "completed")  # §3.3: completed → ended(completed)
    assert not plivo.requests_to("DELETE", r"/")


# --- inbound policy rejection -----------------------------------------------------------------


def assert_rejected_record(provider_call_id: str) -> Call:
    (call,) = Call.objects.filter(provider_call_id=provider_call_id)
    assert call.direction == "inbound" and call.from_number == CALLER
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")
    assert call.rejection_reason == "not-allowlisted"
    assert transcript(call) == []
    return call


def test_twilio_inbound_rejection_answers_reject_without_rest_hangup(twilio, live_gateway):
    twilio.setup(inboundPolicy="allowlist", allowFrom=[ALLOWED_ONLY])
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    (delivery,) = twilio.deliveries
    assert delivery.status == 200
    root = ET.fromstring(delivery.response_text)
    assert [(el.tag, el.get("reason")) for el in root] == [("Reject", "rejected")]
    assert fake_call.rejected == "rejected" and fake_call.said == []
    assert twilio.requests == []  # no REST hang-up: the <Reject> did it
    assert_rejected_record(fake_call.sid)


def test_plivo_inbound_rejection_answers_hangup_without_delete(plivo, live_gateway):
    plivo.setup(inboundPolicy="allowlist", allowFrom=[ALLOWED_ONLY])
    fake_call = plivo.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook",
                                   hangup_url=f"{live_gateway}/voice/webhook?flow=hangup")
    answer = plivo.deliveries[0]
    assert answer.status == 200
    root = ET.fromstring(answer.response_text)
    assert [(el.tag, el.get("reason")) for el in root] == [("Hangup", "rejected")]
    assert fake_call.hangup_reason == "rejected" and fake_call.said == []
    assert plivo.requests == []  # no DELETE: the <Hangup> did it
    # The hangup_url request that follows leaves the rejection as it was.
    assert all(d.status == 200 for d in plivo.deliveries) and len(plivo.deliveries) == 2
    assert_rejected_record(fake_call.call_uuid)


def test_telnyx_inbound_rejection_hangs_up_once(telnyx, live_gateway):
    telnyx.setup(inboundPolicy="allowlist", allowFrom=[ALLOWED_ONLY])
    fake_call = telnyx.ring_inbound(CALLER, FROM)
    telnyx.wait_idle()
    (hangup,) = telnyx.requests_to("POST", r"/actions/hangup$")
    assert hangup.path == f"/v2/calls/{fake_call.call_control_id}/actions/hangup"
    assert not telnyx.requests_to("POST", r"/actions/answer$")
    assert not fake_call.is_alive
    call = assert_rejected_record(fake_call.call_control_id)

    initiated = next(i for i, d in enumerate(telnyx.deliveries) if d.json["data"]["event_type"] == "call.initiated")
    again = telnyx.redeliver(initiated)
    telnyx.wait_idle()
    assert again.status == 200
    assert len(telnyx.requests_to("POST", r"/actions/hangup$")) == 1
    assert call.events.filter(type="call.initiated").count() == 1
    assert_rejected_record(fake_call.call_control_id)


# --- Telnyx redelivery and ordering -----------------------------------------------------------


def test_telnyx_redelivered_answer_adds_no_event(telnyx):
    call = call_initiate(to=TO, mode="conversation")
    control_id = placed(call).provider_call_id
    telnyx.answer(control_id)
    answered_at = refreshed(call).answered_at
    assert answered_at is not None
    index = next(i for i, d in enumerate(telnyx.deliveries) if d.json["data"]["event_type"] == "call.answered")
    again = telnyx.redeliver(index)
    assert again.status == 200 and again.json["meta"]["attempt"] == 2
    call = refreshed(call)
    assert call.events.filter(type="call.answered").count() == 1
    assert call.answered_at == answered_at and not call.is_terminal


def test_telnyx_late_answer_after_hangup_leaves_the_call_ended(telnyx):
    call = call_initiate(to=TO, message="Hello there.", mode="conversation")
    control_id = placed(call).provider_call_id
    telnyx.wait_idle()
    telnyx.send_event(control_id, "call.hangup", hangup_cause="normal_clearing", hangup_source="caller")
    assert refreshed(call).state == "completed"
    telnyx.send_event(control_id, "call.answered")
    call = refreshed(call)
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert call.answered_at is None and call.max_duration_deadline is None
    assert call.events.filter(type="call.answered").count() == 1  # recorded, not applied
    # Nothing is said or listened to on a call that is over.
    assert not telnyx.requests_to("POST", r"/actions/")
    assert transcript(call) == []


# --- restore after a restart ------------------------------------------------------------------


def check_restore(alive: Call, over: Call, unknown: Call, error: Call) -> None:
    report = calls_restore()
    assert sorted(report.kept) == sorted([str(alive.pk), str(error.pk)])
    assert sorted(report.ended_at_carrier) == sorted([str(over.pk), str(unknown.pk)])
    assert report.expired == [] and report.failed_dials == []
    for kept in (alive, error):
        assert not refreshed(kept).is_terminal
    for ended in (over, unknown):
        ended = refreshed(ended)
        assert (ended.state, ended.end_reason) == ("completed", "completed") and ended.ended_at is not None


def test_restore_against_twilio(twilio, live_gateway):
    calls = []
    for _ in range(4):
        call = call_initiate(to=TO, mode="conversation")
        twilio.answer(placed(call).provider_call_id)
        calls.append(call)
    alive, over, unknown, error = calls
    with lost_webhooks(twilio, live_gateway):
        twilio.hang_up(over.provider_call_id)  # over at the carrier; the gateway never heard
    assert not refreshed(over).is_terminal
    Call.objects.filter(pk=unknown.pk).update(provider_call_id="CA" + "0" * 32)
    twilio.fail_next("GET", rf"/Calls/{error.provider_call_id}\.json$", 500,
                     FakeTwilio.error_body(20500, "Internal Server Error", 500))
    check_restore(alive, over, unknown, error)
    assert len(twilio.requests_to("GET", r"/Calls/")) == 4
    assert not twilio.requests_to("POST", r"/Calls/CA[0-9a-f]+\.json$")  # restore hangs nothing up


def test_restore_against_telnyx(telnyx, live_gateway):
    calls = []
    for _ in range(4):
        call = call_initiate(to=TO, mode="conversation")
        telnyx.wait_idle()
        telnyx.answer(placed(call).provider_call_id)
        calls.append(call)
    alive, over, unknown, error = calls
    with lost_webhooks(telnyx, live_gateway):
        telnyx.hang_up(over.provider_call_id)
    assert not refreshed(over).is_terminal
    Call.objects.filter(pk=unknown.pk).update(provider_call_id="v3:nobody-knows-this-call")
    telnyx.fail_next("GET", rf"^/v2/calls/{re.escape(error.provider_call_id)}$", 500,
                     FakeTelnyx.error_body("10007", "Unexpected error"))
    check_restore(alive, over, unknown, error)
    assert len(telnyx.requests_to("GET", r"^/v2/calls/")) == 4
    assert not telnyx.requests_to("POST", r"/actions/hangup$")


def test_restore_against_plivo(plivo, live_gateway):
    calls = []
    for _ in range(4):
        call = call_initiate(to=TO, mode="conversation")
        plivo.answer(placed(call).provider_call_id)
        call.refresh_from_db()  # re-keyed to the CallUUID by the answer webhook
        calls.append(call)
    alive, over, unknown, error = calls
    assert alive.provider_call_id == plivo.call(alive.provider_call_id).call_uuid
    with lost_webhooks(plivo, live_gateway):
        plivo.hang_up(over.provider_call_id)
    assert not refreshed(over).is_terminal
    Call.objects.filter(pk=unknown.pk).update(provider_call_id="no-such-call-uuid")
    plivo.fail_next("GET", rf"/Call/{error.provider_call_id}/$", 500, FakePlivo.error_body("internal error"))
    check_restore(alive, over, unknown, error)
    assert len(plivo.requests_to("GET", r"/Call/")) == 4
    assert not plivo.requests_to("DELETE", r"/")


def test_restore_keeps_a_call_whose_status_request_raises(telnyx, monkeypatch):
    live = call_initiate(to=TO, mode="conversation")
    telnyx.wait_idle()
    telnyx.answer(placed(live).provider_call_id)
    backend = get_runtime().carrier

    def broken(provider_call_id):
        raise RuntimeError("status lookup crashed")

    monkeypatch.setattr(backend, "get_call_status", broken)
    report = calls_restore()
    assert report.kept == [str(live.pk)] and report.ended_at_carrier == []  # §2.7: exception → kept
    assert not refreshed(live).is_terminal


# --- Twilio: speaking before the call is in progress --------------------------------------


def test_twilio_speak_retries_when_not_in_progress_yet(twilio):
    call = call_initiate(to=TO, mode="conversation")
    sid = placed(call).provider_call_id
    twilio.answer(sid)
    twilio.fail_next("POST", rf"/Calls/{sid}\.json$", 400,
                     FakeTwilio.error_body(21220, "Call is not in-progress. Cannot redirect.", 400), times=1)
    call_speak(call_id=str(call.pk), text="One moment please.")
    twilio.wait_idle()
    assert [r.status for r in twilio.requests_to("POST", rf"/Calls/{sid}\.json$")] == [400, 200]
    assert [said["text"] for said in twilio.call(sid).said] == ["One moment please."]
    assert transcript(refreshed(call)) == [("bot", "One moment please.")]


def test_twilio_speak_on_a_ringing_call_fails_after_the_retries(twilio):
    call = call_initiate(to=TO, mode="conversation")
    sid = placed(call).provider_call_id
    twilio.ring(sid)
    with pytest.raises(CarrierError, match="21220"):
        call_speak(call_id=str(call.pk), text="Too early.")
    assert [r.status for r in twilio.requests_to("POST", rf"/Calls/{sid}\.json$")] == [400, 400, 400]
    call = refreshed(call)
    assert transcript(call) == [] and not call.is_terminal
    assert call.state == "listening"  # docs/compatibility.md, Call commands: a failed speak goes back to listening


# --- concurrent ends ------------------------------------------------------------------------


def answered_call(carrier: str, fake) -> tuple[Call, callable]:
    """An answered outbound call, and a function counting the hang-up requests the fake got."""
    call = call_initiate(to=TO, mode="conversation")
    provider_id = placed(call).provider_call_id
    fake.wait_idle()
    fake.answer(provider_id)
    call.refresh_from_db()
    if carrier == "twilio":
        return call, lambda: len(twilio_hangups(fake, call.provider_call_id))
    if carrier == "telnyx":
        return call, lambda: len(fake.requests_to("POST", r"/actions/hangup$"))
    return call, lambda: len(fake.requests_to("DELETE", r"/"))


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo"])
def test_concurrent_ends_send_one_hangup(carrier, live_gateway, request, monkeypatch):
    fake = request.getfixturevalue(carrier)
    call, hangups = answered_call(carrier, fake)
    hold_hangup_until_seen(monkeypatch, get_runtime().carrier, others=1)
    barrier = threading.Barrier(2)

    def end():
        barrier.wait(5)
        call_end(call_id=str(call.pk))

    with lost_webhooks(fake, live_gateway):  # the carrier's own end report is not what is tested here
        ends = [Background(end) for _ in range(2)]
        for pending in ends:
            assert pending.result() is None
    assert hangups() == 1
    call = refreshed(call)
    assert call.is_terminal and call.end_reason == "hangup-bot"
    call_end(call_id=str(call.pk))  # and once more, sequentially: nothing is sent
    assert hangups() == 1


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo"])
def test_bot_hangup_stays_hangup_bot_when_the_end_webhook_wins(carrier, live_gateway, request, monkeypatch):
    """The carrier reports the end of a call the bot hung up before its REST answer is read (a real race)."""
    fake = request.getfixturevalue(carrier)
    call, hangups = answered_call(carrier, fake)
    backend = get_runtime().carrier
    original = backend.hangup_call

    def hangup_then_webhook(**kwargs):
        original(**kwargs)
        fake.wait_idle()  # the carrier's end webhook was delivered and answered before we go on

    monkeypatch.setattr(backend, "hangup_call", hangup_then_webhook)
    call_end(call_id=str(call.pk))
    assert hangups() == 1
    call = refreshed(call)
    assert call.is_terminal
    assert (call.state, call.end_reason) == ("hangup-bot", "hangup-bot")  # docs/compatibility.md, Call commands: endCall(hangup-bot)


def test_twilio_status_callback_urls_point_at_the_gateway(twilio, live_gateway):
    call = call_initiate(to=TO, mode="conversation")
    sid = placed(call).provider_call_id
    twilio.answer(sid)
    statuses = [d for d in twilio.deliveries if query_of(d.url).get("type") == "status"]
    assert [d.params["CallStatus"] for d in statuses] == ["initiated", "ringing", "in-progress"]
    assert all(urlsplit(d.url).path == "/voice/webhook" and d.status == 200 for d in statuses)
    call = refreshed(call)
    assert call.state == "answered" and call.answered_at is not None
