"""Call transfer through each carrier's local fake and the real gateway: the request the carrier gets,
the signed webhooks that report the outcome, and what the call record keeps."""
from __future__ import annotations

import base64

import pytest

from calls.models import Call, Transfer
from calls.services import call_transfer
from core.errors import UnsupportedByCarrier
from tests.providers.carriers.test_carriers_e2e import CALLER, FROM, configured_carrier, query_of
from tests.waiting import wait_until

DESK = "+15550002222"
SIP_DESK = "sip:desk@pbx.example.com"


def transfer_of(call: Call) -> Transfer:
    return Transfer.objects.get(call=call)


def settled(call: Call, status: str) -> Transfer:
    return wait_until(lambda: Transfer.objects.filter(call=call, status=status).first(), f"the transfer {status}")


def answered_inbound(fake_call_ref: str) -> Call:
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call_ref, answered_at__isnull=False).first(),
                      "the inbound call answered")
    return call


# --- Twilio ---------------------------------------------------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure) as fake:
        yield fake


def test_twilio_cold_transfer_to_a_number(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = answered_inbound(fake_call.sid)
    twilio.wait_idle()

    result = call_transfer(call_id=str(call.pk), to=DESK, requested_by="test")
    assert (result.status, result.kind, result.target) == ("dialing", "cold", DESK)
    update = twilio.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$")[-1]
    document = update.form["Twiml"][0]
    assert f">{DESK}</Number></Dial></Response>" in document
    twilio.wait_idle()
    dial = twilio.call(fake_call.sid).dial
    assert (dial["noun"], dial["target"], dial["timeout"]) == ("Number", DESK, "30")
    news = query_of(dial["action"])
    assert news == {"callId": str(call.pk), "type": "transfer", "transferId": result.transfer_id}
    assert query_of(dial["noun_attributes"]["statusCallback"]) == news
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("transferred", "transferred")
    assert transfer_of(call).requested_by == "test"

    twilio.dial_answer(fake_call.sid)
    transfer = settled(call, "connected")
    assert transfer.finished_at is not None and transfer.error == ""
    # The conversation with the desk ends: the dial's action hears completed, and the call ends at Twilio.
    twilio.dial_end(fake_call.sid, "completed")
    twilio.wait_idle()
    assert twilio.call(fake_call.sid).status == "completed"
    call.refresh_from_db()
    assert call.end_reason == "transferred" and transfer_of(call).status == "connected"
    assert all(d.status == 200 for d in twilio.deliveries)


def test_twilio_cold_transfer_nobody_answers(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = answered_inbound(fake_call.sid)
    twilio.wait_idle()

    call_transfer(call_id=str(call.pk), to=SIP_DESK)
    twilio.wait_idle()
    dial = twilio.call(fake_call.sid).dial
    assert (dial["noun"], dial["target"]) == ("Sip", SIP_DESK)
    twilio.dial_end(fake_call.sid, "no-answer")
    twilio.wait_idle()
    transfer = settled(call, "failed")
    assert transfer.error == "the target did not answer"
    # The caller hears why, then the call ends.
    fake = twilio.call(fake_call.sid)
    assert fake.said[-1]["text"] == "Sorry, the call could not be transferred. Goodbye."
    assert fake.status == "completed"
    assert all(d.status == 200 for d in twilio.deliveries)


def test_twilio_warm_transfer_through_a_conference(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = answered_inbound(fake_call.sid)
    twilio.wait_idle()

    result = call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Caller wants to move Tuesday's visit.")
    assert result.kind == "warm" and result.status == "dialing"
    room = f"voicecall-transfer-{result.transfer_id}"
    create = twilio.requests_to("POST", r"/Calls\.json$")[-1]
    assert create.form["To"] == [DESK] and create.form["From"] == [FROM]
    assert query_of(create.form["StatusCallback"][0]) == {
        "callId": str(call.pk), "type": "transfer", "transferId": result.transfer_id, "leg": "target"}
    target_sid = twilio.last_call.sid
    assert transfer_of(call).provider_ref == target_sid
    twilio.wait_idle()
    # The caller waits in the room with hold music; the room has not started.
    caller = twilio.call(fake_call.sid)
    assert caller.blocked_on == "conference" and caller.dial["target"] == room
    assert caller.dial["noun_attributes"]["startConferenceOnEnter"] == "false"
    assert caller.dial["noun_attributes"]["waitUrl"].endswith("/voice/hold-music")
    assert twilio.conference(room) == [fake_call.sid]

    twilio.answer(target_sid)
    twilio.wait_idle()
    target = twilio.call(target_sid)
    assert [said["text"] for said in target.said] == ["Caller wants to move Tuesday's visit."]
    assert twilio.conference(room) == [fake_call.sid, target_sid]
    assert target.dial["noun_attributes"]["startConferenceOnEnter"] == "true"
    assert settled(call, "connected").provider_ref == target_sid
    call.refresh_from_db()
    assert call.end_reason == "transferred"
    assert all(d.status == 200 for d in twilio.deliveries)


def test_twilio_warm_transfer_target_busy_hangs_up_the_waiting_caller(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = answered_inbound(fake_call.sid)
    twilio.wait_idle()

    call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Billing question.")
    target_sid = twilio.last_call.sid
    twilio.busy(target_sid)
    transfer = settled(call, "failed")
    assert transfer.error == "the target's line was busy"
    wait_until(lambda: twilio.call(fake_call.sid).ended, "the caller on hold hung up")
    hangup = twilio.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$")[-1]
    assert hangup.form == {"Status": ["completed"]}
    twilio.wait_idle()
    call.refresh_from_db()
    assert call.end_reason == "transferred"


# --- Telnyx ---------------------------------------------------------------------------------


@pytest.fixture
def telnyx(live_gateway, configure):
    with configured_carrier("telnyx", live_gateway, configure) as fake:
        yield fake


def telnyx_answered(telnyx, live_gateway) -> tuple[Call, str]:
    leg = telnyx.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = answered_inbound(leg.call_control_id)
    telnyx.wait_idle()
    return call, leg.call_control_id


def test_telnyx_cold_transfer(telnyx, live_gateway):
    call, control_id = telnyx_answered(telnyx, live_gateway)
    result = call_transfer(call_id=str(call.pk), to=SIP_DESK)
    command = telnyx.requests_to("POST", r"/actions/transfer$")[-1]
    state = base64.b64decode(command.json["target_leg_client_state"]).decode()
    assert state == f"transfer:{call.pk}:{result.transfer_id}"
    assert {k: command.json[k] for k in ("to", "from", "timeout_secs", "webhook_url")} == {
        "to": SIP_DESK, "from": FROM, "timeout_secs": 30, "webhook_url": f"{live_gateway}/voice/webhook"}
    call.refresh_from_db()
    assert call.end_reason == "transferred"

    new_leg = telnyx.call(control_id).transfers[-1]
    telnyx.wait_idle()
    telnyx.answer(new_leg)
    telnyx.wait_idle()
    settled(call, "connected")
    # The new leg's events never re-key the call or create another one.
    call.refresh_from_db()
    assert call.provider_call_id == control_id
    assert Call.objects.count() == 1
    assert all(d.status == 200 for d in telnyx.deliveries)


def test_telnyx_cold_transfer_unanswered_hangs_up_the_caller(telnyx, live_gateway):
    call, control_id = telnyx_answered(telnyx, live_gateway)
    call_transfer(call_id=str(call.pk), to=DESK)
    new_leg = telnyx.call(control_id).transfers[-1]
    telnyx.wait_idle()
    telnyx.no_answer(new_leg)
    transfer = settled(call, "failed")
    assert transfer.error == "the target did not answer"
    # Telnyx leaves the caller's leg up after a failed transfer: the gateway hangs it up.
    wait_until(lambda: not telnyx.call(control_id).is_alive, "the caller hung up")
    assert Call.objects.count() == 1


def test_telnyx_has_no_warm_transfer(telnyx, live_gateway):
    call, _ = telnyx_answered(telnyx, live_gateway)
    with pytest.raises(UnsupportedByCarrier, match="warm transfer is not supported by telnyx"):
        call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Hi")
    assert not Transfer.objects.exists()
    assert not telnyx.requests_to("POST", r"/actions/transfer$")
    call.refresh_from_db()
    assert not call.is_terminal


# --- Plivo ----------------------------------------------------------------------------------


@pytest.fixture
def plivo(live_gateway, configure):
    with configured_carrier("plivo", live_gateway, configure) as fake:
        yield fake


def plivo_answered(plivo, live_gateway) -> tuple[Call, str]:
    fake_call = plivo.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook?provider=plivo")
    call = answered_inbound(fake_call.call_uuid)
    plivo.wait_idle()
    return call, fake_call.call_uuid


def test_plivo_cold_transfer(plivo, live_gateway):
    call, call_uuid = plivo_answered(plivo, live_gateway)
    result = call_transfer(call_id=str(call.pk), to=DESK)
    transfer_request = plivo.requests_to("POST", rf"/Call/{call_uuid}/$")[-1]
    assert transfer_request.json["legs"] == "aleg"
    assert query_of(transfer_request.json["aleg_url"])["flow"] == "xml-transfer"
    plivo.wait_idle()
    fake = plivo.call(call_uuid)
    assert fake.dial["targets"] == [("Number", DESK.lstrip("+"))]
    news = {"provider": "plivo", "flow": "transfer", "callId": str(call.pk), "transferId": result.transfer_id}
    assert query_of(fake.dial["action"]) == news and query_of(fake.dial["callbackUrl"]) == news
    assert fake.dial["callerId"] == FROM

    plivo.dial_answer(call_uuid)
    settled(call, "connected")
    plivo.dial_end(call_uuid, "completed")
    plivo.wait_idle()
    assert plivo.call(call_uuid).ended
    call.refresh_from_db()
    assert call.end_reason == "transferred" and transfer_of(call).status == "connected"
    assert all(d.status == 200 for d in plivo.deliveries)


def test_plivo_cold_transfer_to_sip_busy(plivo, live_gateway):
    call, call_uuid = plivo_answered(plivo, live_gateway)
    call_transfer(call_id=str(call.pk), to=SIP_DESK)
    plivo.wait_idle()
    assert plivo.call(call_uuid).dial["targets"] == [("User", SIP_DESK)]
    plivo.dial_end(call_uuid, "busy")
    plivo.wait_idle()
    assert settled(call, "failed").error == "the target's line was busy"
    fake = plivo.call(call_uuid)
    assert fake.said[-1]["text"] == "Sorry, the call could not be transferred. Goodbye." and fake.ended
    assert all(d.status == 200 for d in plivo.deliveries)


def test_plivo_warm_transfer_through_a_conference(plivo, live_gateway):
    call, call_uuid = plivo_answered(plivo, live_gateway)
    result = call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Caller wants to move Tuesday's visit.")
    room = f"voicecall-transfer-{result.transfer_id}"
    make = plivo.requests_to("POST", r"/Call/$")[-1]
    assert (make.json["to"], make.json["from"]) == (DESK, FROM)
    assert query_of(make.json["answer_url"])["flow"] == "transfer-brief"
    assert query_of(make.json["hangup_url"]) == {"provider": "plivo", "flow": "transfer", "callId": str(call.pk),
                                                 "transferId": result.transfer_id, "leg": "target"}
    target = plivo.last_call
    assert transfer_of(call).provider_ref == target.request_uuid
    plivo.wait_idle()
    caller = plivo.call(call_uuid)
    assert caller.blocked_on == "conference" and caller.conference["room"] == room
    assert caller.conference["startConferenceOnEnter"] == "false"
    assert plivo.conference_members(room) == [call_uuid]

    plivo.answer(target.request_uuid)
    plivo.wait_idle()
    assert [said["text"] for said in target.said] == ["Caller wants to move Tuesday's visit."]
    assert plivo.conference_members(room) == [call_uuid, target.call_uuid]
    settled(call, "connected")
    call.refresh_from_db()
    assert call.end_reason == "transferred" and call.provider_call_id == call_uuid
    assert Call.objects.count() == 1
    assert all(d.status == 200 for d in plivo.deliveries)


def test_plivo_warm_transfer_target_busy_hangs_up_the_waiting_caller(plivo, live_gateway):
    call, call_uuid = plivo_answered(plivo, live_gateway)
    call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Billing question.")
    target = plivo.last_call
    plivo.wait_idle()
    plivo.busy(target.request_uuid)
    assert settled(call, "failed").error == "the target's line was busy"
    wait_until(lambda: plivo.call(call_uuid).ended, "the caller in the room hung up")
    assert plivo.requests_to("DELETE", rf"/Call/{call_uuid}/$")
    assert Call.objects.count() == 1
