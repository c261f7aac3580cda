"""Carrier recordings through each carrier's fake and the real gateway: asked for with the dial or
started once answered, reported on a signed callback, stored as a Recording, fetched with the
carrier's credentials; replays, unknown calls, malformed callbacks and failed downloads."""
from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest

from calls import background
from calls.config import get_config
from calls.models import Call, Recording
from calls.recording_files import file_path
from calls.services import call_initiate, processed_webhooks_purge
from calls.services import recordings as recording_service
from tests.providers.carriers.test_carriers_e2e import (
    CALLER, FROM, carrier_block, carrier_config, configured_carrier, query_of,
)
from tests.waiting import wait_until

RECORDING = {"fetch": True, "retentionDays": 30}


def recording_config(provider: str, gateway: str, fake, recording: dict) -> dict:
    """The carrier's config for `fake`, recordings fetched and kept 30 days, with `recording`'s keys on top."""
    return carrier_config(provider, gateway, carrier_block(provider, fake), recording={**RECORDING, **recording})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def stored_bytes(recording: Recording) -> bytes:
    return file_path(get_config().config, recording.file).read_bytes()


def completed_recording(call: Call, *, fetched: bool = True) -> Recording:
    def ready():
        row = Recording.objects.filter(call=call, source="carrier").first()
        if row is None or row.status != "completed" or (fetched and not row.file):
            return None
        return row

    return wait_until(ready, "the carrier recording stored")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(recording_service, "FETCH_RETRY_DELAYS", (0.0, 0.0))


# --- Twilio ---------------------------------------------------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure, recording=RECORDING) as fake:
        yield fake


def test_twilio_outbound_call_recorded_from_its_dial_and_fetched(twilio, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify", record=True)
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert create.form["Record"] == ["true"] and create.form["RecordingChannels"] == ["dual"]
    assert query_of(create.form["RecordingStatusCallback"][0]) == {"callId": str(call.pk), "type": "recording"}
    assert create.form["RecordingStatusCallbackEvent"] == ["completed absent"]
    call.refresh_from_db()
    twilio.answer(call.provider_call_id)
    twilio.wait_idle()
    assert twilio.call(call.provider_call_id).ended  # the notify call hung up after its message

    recording = completed_recording(call)
    sid = twilio.call(call.provider_call_id).recordings[0]
    assert recording.provider_recording_id == sid
    assert recording.url == twilio.recording_url(sid)
    assert recording.channels == 2 and recording.duration_seconds >= 1
    assert stored_bytes(recording) == twilio.recording_audio
    assert (recording.content_type, recording.size_bytes, recording.error) == ("audio/wav", len(twilio.recording_audio), "")
    assert recording.file == f"{call.pk}/{recording.pk}.wav"
    assert recording.expires_at - recording.completed_at == timedelta(days=30)
    media = twilio.requests_to("GET", rf"/Recordings/{sid}\.wav$")
    assert len(media) == 1 and media[0].headers["authorization"] == basic(twilio.account_sid, twilio.auth_token)
    assert all(d.status == 200 for d in twilio.deliveries)

    # Twilio's retry of the same signed callback changes nothing.
    callback = next(d for d in twilio.deliveries if "RecordingSid" in d.params)
    again = twilio.deliver(callback.url, "POST", callback.headers, callback.body)
    assert again.status == 200
    assert list(Recording.objects.filter(call=call).values()) == list(Recording.objects.filter(pk=recording.pk).values())
    assert len(twilio.requests_to("GET", r"/Recordings/")) == 1


def test_twilio_inbound_call_recorded_once_answered(twilio, live_gateway, configure):
    configure(recording_config("twilio", live_gateway, twilio, {"carrier": True}))
    background.set_mode("thread")  # the start waits for Twilio to run the answer, as in production
    twilio.recording_status = "absent"
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook", wait=False)
    start = wait_until(lambda: twilio.requests_to("POST", r"/Recordings\.json$"), "the recording started")[0]
    assert start.form["RecordingChannels"] == ["dual"] and start.form["RecordingStatusCallbackEvent"] == ["completed absent"]
    call = Call.objects.get(provider_call_id=fake_call.sid)
    assert query_of(start.form["RecordingStatusCallback"][0]) == {"callId": str(call.pk), "type": "recording"}
    wait_until(lambda: Recording.objects.filter(call=call, provider_recording_id__startswith="RE").exists())
    twilio.hang_up(fake_call.sid)
    twilio.wait_idle()
    recording = wait_until(lambda: Recording.objects.filter(call=call, status="failed").first(), "the absent recording")
    assert recording.error == "the carrier recorded no audio (absent)"
    assert not recording.file and not twilio.requests_to("GET", r"/Recordings/")
    background.drain()


def test_twilio_recording_callbacks_that_are_bad_change_nothing(twilio, live_gateway):
    call = call_initiate(to="+15550001111", message="Hello.", mode="notify", record=True)
    webhook = f"{live_gateway}/voice/webhook"
    good = {"AccountSid": twilio.account_sid, "CallSid": "CA" + "1" * 32, "RecordingSid": "RE" + "2" * 32,
            "RecordingUrl": twilio.recording_url("RE" + "2" * 32), "RecordingStatus": "completed",
            "RecordingDuration": "3", "RecordingChannels": "2"}
    # An unknown call (our id, and the carrier's): a logged no-op.
    unknown = twilio.submit(lambda: twilio._send_webhook(f"{webhook}?callId={uuid.uuid4()}&type=recording", "POST", good))
    assert unknown.status == 200
    # Malformed: each refused with 400 naming the field.
    for change, field in [({"RecordingSid": ""}, "RecordingSid"), ({"RecordingUrl": "ftp://x/y"}, "RecordingUrl"),
                          ({"RecordingDuration": "soon"}, "RecordingDuration"), ({"RecordingStatus": "done"}, "RecordingStatus")]:
        reply = twilio.submit(lambda change=change: twilio._send_webhook(
            f"{webhook}?callId={call.pk}&type=recording", "POST", {**good, **change}))
        assert reply.status == 400 and field in reply.response_text
    # Not signed by Twilio: 401.
    forged = twilio.deliver(f"{webhook}?callId={call.pk}&type=recording", "POST",
                            {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl", "Content-Type": "application/x-www-form-urlencoded"},
                            b"RecordingSid=RE1&RecordingStatus=completed")
    assert forged.status == 401
    assert not Recording.objects.exists()


def test_twilio_failed_downloads_are_retried_then_kept_as_an_error(twilio, live_gateway):
    call = call_initiate(to="+15550001111", message="Hello.", mode="notify", record=True)
    call.refresh_from_db()
    twilio.fail_next("GET", r"/Recordings/", 503, {"code": 20500, "message": "Service unavailable", "status": 503}, times=3)
    twilio.answer(call.provider_call_id)
    twilio.wait_idle()
    recording = wait_until(lambda: Recording.objects.filter(call=call, error__contains="attempt 3 of 3").first())
    assert recording.status == "completed" and not recording.file and recording.url
    assert "503" in recording.error
    assert len(twilio.requests_to("GET", r"/Recordings/")) == 3

    # A download that works on its second try is stored, its error cleared.
    second = call_initiate(to="+15550002222", message="Hello.", mode="notify", record=True)
    second.refresh_from_db()
    twilio.fail_next("GET", r"/Recordings/", 500, {"code": 20500, "message": "Internal error", "status": 500})
    twilio.answer(second.provider_call_id)
    twilio.wait_idle()
    stored = completed_recording(second)
    assert stored.error == "" and stored_bytes(stored) == twilio.recording_audio


# --- Telnyx ---------------------------------------------------------------------------------


@pytest.fixture
def telnyx(live_gateway, configure):
    with configured_carrier("telnyx", live_gateway, configure, recording=RECORDING) as fake:
        yield fake


def test_telnyx_outbound_call_recorded_from_its_dial(telnyx, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify", record=True)
    dial = telnyx.requests_to("POST", r"/v2/calls$")[0]
    assert (dial.json["record"], dial.json["record_channels"], dial.json["record_format"]) == ("record-from-answer", "dual", "wav")
    call.refresh_from_db()
    telnyx.answer(call.provider_call_id)
    telnyx.wait_idle()
    telnyx.hang_up(call.provider_call_id)
    telnyx.wait_idle()

    recording = completed_recording(call)
    recording_id = telnyx.call(call.provider_call_id).recordings[0]
    assert recording.provider_recording_id == recording_id
    assert recording.url == telnyx.recording_url(recording_id)
    assert recording.channels == 2 and recording.duration_seconds is not None
    assert stored_bytes(recording) == telnyx.recording_audio
    # A pre-signed URL: none of our credentials went with the download.
    media = telnyx.requests_to("GET", r"^/recordings/")
    assert len(media) == 1 and "authorization" not in media[0].headers

    # Telnyx's redelivery (same event id, fresh signature) changes nothing.
    index = next(i for i, d in enumerate(telnyx.deliveries) if b"call.recording.saved" in d.body)
    assert telnyx.redeliver(index).status == 200
    assert Recording.objects.filter(call=call).count() == 1
    assert len(telnyx.requests_to("GET", r"^/recordings/")) == 1


def test_telnyx_inbound_call_recorded_with_record_start(telnyx, live_gateway, configure):
    configure(recording_config("telnyx", live_gateway, telnyx, {"carrier": True}))
    fake_call = telnyx.ring_inbound(CALLER, FROM)
    wait_until(lambda: telnyx.requests_to("POST", r"/actions/record_start$"), "record_start")
    start = telnyx.requests_to("POST", r"/actions/record_start$")[0]
    assert (start.json["format"], start.json["channels"]) == ("wav", "dual")
    call = Call.objects.get(provider_call_id=fake_call.call_control_id)
    assert call.record_carrier
    telnyx.hang_up(fake_call.call_control_id)
    telnyx.wait_idle()
    recording = completed_recording(call)
    assert stored_bytes(recording) == telnyx.recording_audio


def test_telnyx_recording_saved_for_an_unknown_call_or_without_urls_changes_nothing(telnyx, live_gateway):
    fake_call = telnyx.ring_inbound(CALLER, FROM)
    telnyx.wait_idle()
    call = Call.objects.get(provider_call_id=fake_call.call_control_id)
    # recording_urls missing: 400 naming it.
    telnyx.send_event(fake_call.call_control_id, "call.recording.saved", recording_id="r-1", channels="dual")
    assert telnyx.deliveries[-1].status == 400 and "recording_urls" in telnyx.deliveries[-1].response_text
    # A call the gateway never had: a logged no-op, no call created from it.
    with telnyx.lock:
        envelope = telnyx._envelope(fake_call, "call.recording.saved", {
            "recording_id": "r-2", "channels": "dual", "recording_urls": {"wav": f"{telnyx.base_url}/recordings/r-2.wav"},
        })
    envelope["data"]["payload"].update(call_control_id="v3:unknown-" + uuid.uuid4().hex, client_state=None)
    reply = telnyx.submit(lambda: telnyx._deliver_event(f"{live_gateway}/voice/webhook", envelope))
    assert reply.status == 200
    assert Recording.objects.count() == 0 and list(Call.objects.values_list("pk", flat=True)) == [call.pk]


# --- Plivo ----------------------------------------------------------------------------------


@pytest.fixture
def plivo(live_gateway, configure):
    with configured_carrier("plivo", live_gateway, configure, recording=RECORDING) as fake:
        yield fake


def test_plivo_outbound_call_recorded_with_the_record_api(plivo, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify", record=True)
    assert "record" not in plivo.requests_to("POST", r"/Call/$")[0].json  # Plivo records once answered
    call.refresh_from_db()
    plivo.answer(call.provider_call_id)
    plivo.wait_idle()
    start = wait_until(lambda: plivo.requests_to("POST", r"/Record/$"), "the Record request")[0]
    call.refresh_from_db()
    assert start.path.endswith(f"/Call/{call.provider_call_id}/Record/")
    assert (start.json["file_format"], start.json["record_channel_type"], start.json["callback_method"]) == ("wav", "stereo", "POST")
    assert query_of(start.json["callback_url"]) == {"provider": "plivo", "callId": str(call.pk), "flow": "recording"}
    assert start.json["time_limit"] == get_config().config.max_duration_seconds
    recording_id = plivo.call(call.provider_call_id).recordings[0]
    assert Recording.objects.get(call=call).provider_recording_id == recording_id  # known from the start's answer
    plivo.wait_idle()
    assert plivo.call(call.provider_call_id).ended  # the notify call hung up after its message

    recording = completed_recording(call)
    assert recording.url == plivo.recording_url(recording_id)
    assert stored_bytes(recording) == plivo.recording_audio
    media = plivo.requests_to("GET", r"/Recording/")
    assert len(media) == 1 and media[0].headers["authorization"] == basic(plivo.auth_id, plivo.auth_token)
    assert all(d.status == 200 for d in plivo.deliveries)


def test_plivo_recording_callback_for_an_unknown_call_changes_nothing(plivo, live_gateway):
    params = {"call_uuid": str(uuid.uuid4()), "recording_id": str(uuid.uuid4()), "recording_duration_ms": "1000.0",
              "record_url": f"{plivo.api_url}/Recording/nothing.wav"}
    url = f"{live_gateway}/voice/webhook?provider=plivo&callId={uuid.uuid4()}&flow=recording"
    assert plivo.submit(lambda: plivo._send_webhook(url, "POST", params)).status == 200
    bad = plivo.submit(lambda: plivo._send_webhook(url, "POST", {**params, "recording_duration_ms": "-5"}))
    assert bad.status == 400 and "recording_duration_ms" in bad.response_text
    assert not Recording.objects.exists() and not Call.objects.exists()


def test_a_lost_download_is_queued_again_by_the_purge(twilio, live_gateway):
    call = call_initiate(to="+15550001111", message="Hello.", mode="notify", record=True)
    call.refresh_from_db()
    twilio.answer(call.provider_call_id)
    twilio.wait_idle()
    recording = completed_recording(call)
    # As if its fetch job had died with its process: completed, no file, no error.
    file_path(get_config().config, recording.file).unlink()
    Recording.objects.filter(pk=recording.pk).update(file="", size_bytes=None, content_type="")
    assert processed_webhooks_purge(at=recording.completed_at + timedelta(minutes=1)) == 0  # too soon to call it lost
    processed_webhooks_purge(at=recording.completed_at + timedelta(minutes=20))
    again = completed_recording(call)
    assert stored_bytes(again) == twilio.recording_audio
    assert len(twilio.requests_to("GET", r"/Recordings/")) == 2
    # A day later it is left alone.
    Recording.objects.filter(pk=recording.pk).update(file="")
    assert recording_service.recordings_fetch_resume(config=get_config().config,
                                                     at=recording.completed_at + timedelta(days=2)) == 0
