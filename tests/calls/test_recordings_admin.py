"""Recordings in the admin (the call page's player, the permission-checked audio view with Range requests,
the carrier proxy) and the retention sweep deleting expired files of both sources."""
from __future__ import annotations

import base64
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from calls.clock import now
from calls.config import get_config
from calls.models import Call, Recording
from calls.recording_files import file_path, relative_name
from calls.services import processed_webhooks_purge, recordings_expire
from tests.fakes import FakeTwilio
from tests.fakes.base import small_wav

pytestmark = pytest.mark.django_db(transaction=True)

AUDIO = small_wav(seconds=0.5)


@pytest.fixture(autouse=True)
def directory(configure, tmp_path):
    configure({"recording": {"directory": str(tmp_path / "recordings")}})
    return tmp_path / "recordings"


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def a_call(**fields) -> Call:
    return Call.objects.create(provider=fields.pop("provider", "mock"), direction="outbound", from_number="+15550000000",
                               to_number="+15550001111", **fields)


def stored(call: Call, *, source: str = "local", body: bytes = AUDIO, **fields) -> Recording:
    recording = Recording.objects.create(call=call, source=source, status="completed", completed_at=now(),
                                         content_type="audio/wav", channels=2, **fields)
    recording.file = relative_name(call.pk, recording.pk, "wav")
    path = file_path(get_config().config, recording.file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    recording.size_bytes = len(body)
    recording.save()
    return recording


def audio_url(recording: Recording) -> str:
    return reverse("console:recording-audio", kwargs={"recording_id": recording.pk})


def content(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_the_call_page_plays_each_recording(staff):
    call = a_call()
    local = stored(call)
    pending = Recording.objects.create(call=call, source="carrier", provider_recording_id="RE1")
    page = staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    assert f'<audio controls preload="none" src="{audio_url(local)}"></audio>' in page
    assert audio_url(pending) not in page  # nothing to play yet
    assert f"file {local.file}" in page


def test_the_audio_view_streams_the_file_with_ranges(staff):
    recording = stored(a_call())
    url = audio_url(recording)
    whole = staff.get(url)
    assert whole.status_code == 200 and content(whole) == AUDIO
    assert whole["Content-Type"] == "audio/wav" and whole["Accept-Ranges"] == "bytes"
    assert whole["Content-Length"] == str(len(AUDIO))
    part = staff.get(url, HTTP_RANGE="bytes=10-109")
    assert part.status_code == 206 and content(part) == AUDIO[10:110]
    assert part["Content-Range"] == f"bytes 10-109/{len(AUDIO)}"
    tail = staff.get(url, HTTP_RANGE="bytes=-16")
    assert tail.status_code == 206 and content(tail) == AUDIO[-16:]
    rest = staff.get(url, HTTP_RANGE="bytes=100-")
    assert rest.status_code == 206 and content(rest) == AUDIO[100:]
    outside = staff.get(url, HTTP_RANGE=f"bytes={len(AUDIO)}-")
    assert outside.status_code == 416 and outside["Content-Range"] == f"bytes */{len(AUDIO)}"
    assert staff.post(url).status_code == 405


def test_the_audio_view_needs_a_login_and_view_call(client, django_user_model):
    recording = stored(a_call())
    url = audio_url(recording)
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    user = django_user_model.objects.create_user("clerk", "clerk@example.com", "pw", is_staff=True)
    client.force_login(user)
    assert client.get(url).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_call"))
    user = django_user_model.objects.get(pk=user.pk)
    client.force_login(user)
    assert content(client.get(url)) == AUDIO


def test_recordings_without_audio_are_404_saying_why(staff, directory):
    call = a_call()
    deleted = stored(call)
    deleted.status, deleted.deleted_at = "deleted", now()
    deleted.save()
    missing = stored(call)
    file_path(get_config().config, missing.file).unlink()
    failed = Recording.objects.create(call=call, source="carrier", status="failed", error="the carrier recorded no audio (absent)")
    pending = Recording.objects.create(call=call, source="carrier", provider_recording_id="RE2")
    expected = {
        deleted: "This recording was deleted on",
        missing: "file is missing from the recordings directory",
        failed: "This recording failed: the carrier recorded no audio (absent).",
        pending: "still in progress",
    }
    for recording, words in expected.items():
        response = staff.get(audio_url(recording))
        assert response.status_code == 404 and words in response.content.decode(), recording
    stranger = reverse("console:recording-audio", kwargs={"recording_id": "00000000-0000-4000-8000-000000000000"})
    assert staff.get(stranger).status_code == 404


def test_a_carrier_recording_not_fetched_is_proxied_with_the_carriers_credentials(staff, configure, directory):
    with FakeTwilio() as twilio:
        configure({"provider": "twilio", "fromNumber": "+15550000000",
                   "twilio": {"accountSid": twilio.account_sid, "authToken": twilio.auth_token, "baseUrl": twilio.base_url},
                   "recording": {"directory": str(directory)}})
        call = a_call(provider="twilio", provider_call_id="CA" + "3" * 32)
        sid = "RE" + "4" * 32
        twilio.recordings[sid] = {"sid": sid, "call_sid": call.provider_call_id, "status": "completed"}
        recording = Recording.objects.create(call=call, source="carrier", provider_recording_id=sid, status="completed",
                                             url=twilio.recording_url(sid), completed_at=now())
        response = staff.get(audio_url(recording), HTTP_RANGE="bytes=0-43")
        assert response.status_code == 206 and content(response) == twilio.recording_audio[:44]
        assert "Location" not in response
        media = twilio.requests_to("GET", rf"/Recordings/{sid}\.wav$")
        credentials = base64.b64encode(f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
        assert media[0].headers["authorization"] == f"Basic {credentials}"

        twilio.fail_next("GET", r"/Recordings/", 404, {"code": 20404, "message": "not found", "status": 404})
        gone = staff.get(audio_url(recording))
        assert gone.status_code == 502 and "The carrier did not give the recording" in gone.content.decode()
        # A URL on another host never gets the credentials.
        Recording.objects.filter(pk=recording.pk).update(url="https://elsewhere.example/2010-04-01/Recordings/RE1")
        refused = staff.get(audio_url(recording))
        assert refused.status_code == 502 and "not one of the carrier's hosts" in refused.content.decode()
        assert not twilio.errors


def test_the_sweep_deletes_expired_files_of_both_sources(directory):
    call = a_call()
    past, later = now() - timedelta(minutes=1), now() + timedelta(days=1)
    carrier = stored(call, source="carrier", provider_recording_id="RE5", expires_at=past)
    local = stored(call, expires_at=past)
    gone_already = stored(call, expires_at=past)
    file_path(get_config().config, gone_already.file).unlink()  # a missing file is no error
    kept = stored(call, expires_at=later)
    forever = stored(call)
    url_only = Recording.objects.create(call=call, source="carrier", provider_recording_id="RE6", status="completed",
                                        url="https://api.twilio.com/x", expires_at=past)

    assert recordings_expire(config=get_config().config) == 4
    for recording in (carrier, local, gone_already, url_only):
        recording.refresh_from_db()
        assert recording.status == "deleted" and recording.deleted_at is not None
        assert not recording.file or not file_path(get_config().config, recording.file).exists()
    for recording in (kept, forever):
        recording.refresh_from_db()
        assert recording.status == "completed" and file_path(get_config().config, recording.file).read_bytes() == AUDIO
    assert recordings_expire(config=get_config().config) == 0  # a second sweeper finds nothing left

    # The periodic purge runs it too.
    assert processed_webhooks_purge(at=later + timedelta(seconds=1)) >= 1
    kept.refresh_from_db()
    assert kept.status == "deleted" and not file_path(get_config().config, kept.file).exists()


def test_the_gateway_streams_the_audio_over_asgi(staff, live_gateway):
    recording = stored(a_call(), body=small_wav(seconds=3.0))  # several chunks
    body = file_path(get_config().config, recording.file).read_bytes()
    cookies = {"sessionid": staff.cookies["sessionid"].value}
    whole = httpx.get(live_gateway + audio_url(recording), cookies=cookies, timeout=10)
    assert whole.status_code == 200 and whole.content == body
    part = httpx.get(live_gateway + audio_url(recording), cookies=cookies, headers={"Range": "bytes=70000-"}, timeout=10)
    assert part.status_code == 206 and part.content == body[70000:]
    assert part.headers["content-range"] == f"bytes 70000-{len(body) - 1}/{len(body)}"
    assert httpx.get(live_gateway + audio_url(recording), timeout=10).status_code == 302  # no session: the login page


def test_the_sweep_leaves_a_recording_being_written(directory):
    call = a_call()
    writing = stored(call, expires_at=now() - timedelta(minutes=1))
    Recording.objects.filter(pk=writing.pk).update(status="in-progress")
    assert recordings_expire(config=get_config().config) == 0
    writing.refresh_from_db()
    assert writing.status == "in-progress" and file_path(get_config().config, writing.file).exists()
