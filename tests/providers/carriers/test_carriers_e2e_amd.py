"""Answering-machine detection through each carrier's fake and the real gateway on a socket.

Each fake answers a call as a person or a machine and sends its verdict the way its carrier does
(Twilio's AsyncAmd callback, Telnyx's call.machine.* events, Plivo's machine_detection_url), signed
like every webhook; the tests assert what the gateway asked for on the dial, what the call heard
before and after the verdict, and how it ended.
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from calls.clock import now
from calls.models import Call, CallEvent
from calls.services import call_initiate, deadlines_sweep
from tests.providers.carriers.test_carriers_e2e import configured_carrier, query_of, transcript
from tests.waiting import wait_until

TO = "+15550001111"


def ended(call_id) -> Call:
    return wait_until(lambda: Call.objects.filter(pk=call_id, ended_at__isnull=False).first(), "the call to end")


# --- Twilio ---------------------------------------------------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure, amdTimeoutMs=8000) as fake:
        yield fake


def test_twilio_person_hears_the_greeting_only_after_the_verdict(twilio):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert create.form["MachineDetection"] == ["Enable"]
    assert create.form["AsyncAmd"] == ["true"]
    assert create.form["MachineDetectionTimeout"] == ["8"]
    assert create.form["AsyncAmdStatusCallbackMethod"] == ["POST"]
    assert query_of(create.form["AsyncAmdStatusCallback"][0]) == {"callId": str(call.pk), "type": "amd"}
    sid = Call.objects.get(pk=call.pk).provider_call_id

    twilio.answer(sid, answered_by="human")
    fake_call = twilio.call(sid)
    # The answer only held the line; the greeting came with the document fetched after the verdict.
    first = ET.fromstring(fake_call.documents[0])
    assert [verb.tag for verb in first] == ["Pause", "Redirect"]
    wait_until(lambda: fake_call.gather is not None, "the greeting and the listening after the verdict")
    assert [said["text"] for said in fake_call.said] == ["Hi, this is the clinic."]
    redirect = twilio.requests_to("POST", rf"/Calls/{sid}\.json$")[0]
    assert query_of(ET.fromstring(redirect.form["Twiml"][0])[0].text) == {"callId": str(call.pk), "flow": "start"}
    call = wait_until(lambda: Call.objects.filter(pk=call.pk, state="listening").first(), "the call to listen")
    assert (call.answered_by, call.answered_by_first) == ("human", "human")
    assert transcript(call) == [("bot", "Hi, this is the clinic.")]


def test_twilio_machine_is_hung_up_on_in_detect_mode(twilio):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    sid = Call.objects.get(pk=call.pk).provider_call_id

    twilio.answer(sid, answered_by="machine_start")
    call = ended(call.pk)
    assert (call.state, call.end_reason, call.answered_by) == ("voicemail", "voicemail", "machine_start")
    twilio.wait_idle()
    fake_call = twilio.call(sid)
    assert fake_call.status == "completed" and fake_call.said == [] and fake_call.streams == []
    assert transcript(call) == []  # the conversation never started
    assert call.initial_message == "Hi, this is the clinic."


def test_twilio_voicemail_mode_leaves_the_message_after_the_beep(twilio):
    call = call_initiate(to=TO, message="Your table is ready.", mode="notify", amd="voicemail")
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert create.form["MachineDetection"] == ["DetectMessageEnd"]
    # The message is not sent with the dial: it would play over the machine's greeting.
    assert "Twiml" not in create.form and query_of(create.form["Url"][0]) == {"callId": str(call.pk)}
    sid = Call.objects.get(pk=call.pk).provider_call_id

    twilio.answer(sid, answered_by="machine_end_beep")
    call = ended(call.pk)
    twilio.wait_idle()
    fake_call = twilio.call(sid)
    assert [said["text"] for said in fake_call.said] == ["Your table is ready."]
    assert (call.end_reason, call.answered_by) == ("voicemail", "machine_end_beep")
    assert transcript(call) == [("bot", "Your table is ready.")]


def test_twilio_notify_call_to_a_person_with_voicemail_mode_hears_its_message(twilio):
    call = call_initiate(to=TO, message="Your table is ready.", mode="notify", amd="voicemail")
    sid = Call.objects.get(pk=call.pk).provider_call_id
    twilio.answer(sid, answered_by="human")
    call = ended(call.pk)
    twilio.wait_idle()
    assert [said["text"] for said in twilio.call(sid).said] == ["Your table is ready."]
    assert (call.end_reason, call.answered_by) == ("completed", "human")


def test_twilio_verdict_for_an_ended_call_changes_nothing(twilio):
    call = call_initiate(to=TO, message="Hi", mode="conversation", amd="detect")
    sid = Call.objects.get(pk=call.pk).provider_call_id
    twilio.answer(sid, answered_by="human")
    twilio.hang_up(sid)
    before = ended(call.pk)
    events = CallEvent.objects.filter(call=before).count()

    twilio.amd_result(sid, "machine_end_beep")
    assert twilio.deliveries[-1].status == 200
    after = Call.objects.get(pk=call.pk)
    assert (after.answered_by, after.end_reason, after.updated_at) == ("human", before.end_reason, before.updated_at)
    # Kept in the call's timeline, like every accepted event; nothing on the call changed.
    assert CallEvent.objects.filter(call=after).count() == events + 1
    assert CallEvent.objects.filter(call=after).latest("received_at").type == "call.amd"


def test_twilio_verdict_for_an_unknown_call_is_acknowledged(twilio, live_gateway):
    unknown = str(uuid.uuid4())
    params = {"CallSid": "CA" + "9" * 32, "AccountSid": twilio.account_sid, "AnsweredBy": "machine_start",
              "CallStatus": "in-progress", "Direction": "outbound-api"}
    delivery = twilio.submit(lambda: twilio._send_webhook(
        f"{live_gateway}/voice/webhook?callId={unknown}&type=amd", "POST", params))
    assert delivery.status == 200
    assert not Call.objects.exists()


# --- Telnyx ---------------------------------------------------------------------------------


@pytest.fixture
def telnyx(live_gateway, configure):
    with configured_carrier("telnyx", live_gateway, configure, amd="voicemail", amdTimeoutMs=7000) as fake:
        yield fake


def test_telnyx_voicemail_waits_for_the_beep_then_leaves_the_message(telnyx):
    call = call_initiate(to=TO, message="Your table is ready.", mode="notify")  # amd from the config
    dial = telnyx.requests_to("POST", r"/v2/calls$")[0].json
    assert dial["answering_machine_detection"] == "detect_beep"
    assert dial["answering_machine_detection_config"]["total_analysis_time_millis"] == 7000
    control_id = Call.objects.get(pk=call.pk).provider_call_id

    telnyx.answer(control_id, answered_by="machine", greeting="beep_detected")
    fake_call = telnyx.call(control_id)
    wait_until(lambda: fake_call.spoken, "the message to be spoken")
    assert [body["payload"] for body in fake_call.spoken] == ["Your table is ready."]
    call = Call.objects.get(pk=call.pk)
    assert (call.answered_by_first, call.answered_by) == ("machine_start", "machine_end_beep")
    assert transcript(call) == [("bot", "Your table is ready.")]

    # Hung up once the message has had its time (well within the call's maximum duration).
    deadlines_sweep(at=now() + timedelta(seconds=60))
    call = ended(call.pk)
    assert call.end_reason == "voicemail"
    assert not fake_call.is_alive


def test_telnyx_conversation_starts_only_after_a_person_is_detected(telnyx):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    dial = telnyx.requests_to("POST", r"/v2/calls$")[0].json
    assert dial["answering_machine_detection"] == "detect"
    control_id = Call.objects.get(pk=call.pk).provider_call_id

    telnyx.answer(control_id)  # detection still listening
    fake_call = telnyx.call(control_id)
    wait_until(lambda: Call.objects.filter(pk=call.pk, answered_at__isnull=False).exists(), "the answer")
    assert fake_call.spoken == [] and not fake_call.transcription

    telnyx.send_event(control_id, "call.machine.detection.ended", result="human")
    wait_until(lambda: fake_call.transcription, "listening after the greeting")
    assert [body["payload"] for body in fake_call.spoken] == ["Hi, this is the clinic."]
    assert Call.objects.get(pk=call.pk).answered_by == "human"


def test_telnyx_machine_in_detect_mode_is_hung_up_on(telnyx):
    call = call_initiate(to=TO, message="Hi", mode="conversation", amd="detect")
    control_id = Call.objects.get(pk=call.pk).provider_call_id
    telnyx.answer(control_id, answered_by="machine")
    call = ended(call.pk)
    assert (call.end_reason, call.answered_by) == ("voicemail", "machine_start")
    assert telnyx.call(control_id).spoken == []


def test_telnyx_no_verdict_within_the_bound_lets_the_call_go_on(telnyx):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    control_id = Call.objects.get(pk=call.pk).provider_call_id
    telnyx.answer(control_id)
    wait_until(lambda: Call.objects.filter(pk=call.pk, answered_at__isnull=False).exists(), "the answer")
    assert deadlines_sweep(at=now() + timedelta(seconds=3)) == 0  # still within amdTimeoutMs
    assert deadlines_sweep(at=now() + timedelta(seconds=30)) >= 1
    fake_call = telnyx.call(control_id)
    wait_until(lambda: fake_call.spoken, "the greeting")
    assert Call.objects.get(pk=call.pk).answered_by == "unknown"


# --- Plivo ----------------------------------------------------------------------------------


@pytest.fixture
def plivo(live_gateway, configure):
    with configured_carrier("plivo", live_gateway, configure, amdTimeoutMs=30000) as fake:
        yield fake


def test_plivo_machine_is_hung_up_on_in_detect_mode(plivo):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    body = plivo.requests_to("POST", rf"/v1/Account/{plivo.auth_id}/Call/$")[0].json
    assert body["machine_detection"] == "true"
    assert body["machine_detection_time"] == 10000  # Plivo's most
    assert query_of(body["machine_detection_url"]) == {"provider": "plivo", "callId": str(call.pk), "flow": "amd"}
    request_uuid = Call.objects.get(pk=call.pk).provider_call_id

    plivo.answer(request_uuid, machine=True)
    call = ended(call.pk)
    assert (call.end_reason, call.answered_by) == ("voicemail", "machine_start")
    fake_call = plivo.call(request_uuid)
    assert fake_call.said == [] and fake_call.streams == [] and fake_call.get_input is None
    assert [el.tag for el in ET.fromstring(fake_call.documents[0])] == ["Wait", "Redirect"]


def test_plivo_voicemail_mode_waits_for_the_beep_itself(plivo):
    call = call_initiate(to=TO, message="Your table is ready.", mode="notify", amd="voicemail")
    request_uuid = Call.objects.get(pk=call.pk).provider_call_id
    plivo.answer(request_uuid, machine=True)
    call = ended(call.pk)
    plivo.wait_idle()
    fake_call = plivo.call(request_uuid)
    assert fake_call.beep_waits == [30]  # Plivo reports no end of greeting: <Wait beep="true"> does
    assert [said["text"] for said in fake_call.said] == ["Your table is ready."]
    assert call.end_reason == "voicemail"
    assert transcript(call) == [("bot", "Your table is ready.")]


def test_plivo_person_gets_the_greeting_after_the_verdict(plivo):
    call = call_initiate(to=TO, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    request_uuid = Call.objects.get(pk=call.pk).provider_call_id
    plivo.answer(request_uuid, machine=False)
    fake_call = plivo.call(request_uuid)
    wait_until(lambda: fake_call.get_input is not None, "listening after the greeting")
    assert [said["text"] for said in fake_call.said] == ["Hi, this is the clinic."]
    assert query_of(fake_call.transfers[0]["aleg_url"])["flow"] == "start"
    assert Call.objects.get(pk=call.pk).answered_by == "human"
