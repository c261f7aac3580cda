"""Each carrier backend's REST requests, field by field, against the local fake carriers (tests/fakes/).

The backends are built straight from a config (no gateway, no database); webhooks the fakes
send back are rerouted to a closed port, so only the REST side is exercised here (the requests
are listed in docs/compatibility.md, Carrier requests).
"""
from __future__ import annotations

import base64
import ssl
import xml.etree.ElementTree as ET
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from calls.free_ports import free_port
from core.config import load_config_data
from core.errors import CarrierError
from providers.carriers import http as carrier_http
from providers.carriers.base import DialRequest, Prompt
from providers.carriers.http import CarrierHttp
from providers.carriers.plivo import PlivoCarrier
from providers.carriers.plivo.rest import read_error as plivo_read_error
from providers.carriers.telnyx import TelnyxCarrier
from providers.carriers.twilio import TwilioCarrier
from tests.fakes import FakePlivo, FakePlivoCall, FakeTelnyx, FakeTwilio, FakeTwilioCall

PUBLIC_URL = "https://gw.example.com/voice/webhook"
FROM = "+15550000001"
TO = "+15550001111"
CALL_ID = "7f3e2a1c-5b9d-4e8f-a2c4-6d1b3e5f7a90"
TELNYX_PUBLIC_KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="


# One TLS context for every backend's client: building one per test would dominate the run time.
TLS = ssl.create_default_context()


def transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(verify=TLS)


def make_config(provider: str, block: dict, **extra):
    loaded = load_config_data({
        "provider": provider, "fromNumber": FROM, "publicUrl": PUBLIC_URL, provider: block, **extra,
    }, environ={})
    assert not loaded.errors, loaded.errors
    return loaded.config


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def base_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def dial(mode: str = "conversation", message: str | None = None, dtmf: str | None = None,
         from_number: str = FROM, to_number: str = TO) -> DialRequest:
    return DialRequest(call_id=CALL_ID, from_number=from_number, to_number=to_number, webhook_url=PUBLIC_URL,
                       mode=mode, initial_message=message, dtmf_sequence=dtmf)


@pytest.fixture
def sleeps(monkeypatch):
    """The retry delays CarrierHttp waits, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(carrier_http, "time", SimpleNamespace(sleep=slept.append))
    return slept


def serve(fake_class):
    """A module-wide fake; webhooks it sends back (to the public URL) fail at once, never leave the machine."""
    with fake_class() as fake:
        fake.reroute = {"https://gw.example.com": f"http://127.0.0.1:{free_port()}"}
        yield fake


def fresh(fake):
    """The module's fake with an empty request log, no calls and no pending failures; checked afterwards."""
    fake.wait_idle()
    with fake.lock:
        fake.requests.clear()
        fake.deliveries.clear()
        fake.calls.clear()
        fake._failures.clear()
        fake.errors.clear()
    yield fake
    fake.wait_idle()
    assert not fake.errors


# ============================================================================ Twilio


@pytest.fixture(scope="module")
def twilio_server():
    yield from serve(FakeTwilio)


@pytest.fixture
def fake_twilio(twilio_server):
    yield from fresh(twilio_server)


def twilio_backend(fake: FakeTwilio, **block) -> TwilioCarrier:
    settings = {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url, **block}
    return TwilioCarrier(make_config("twilio", settings), transport=transport())


@pytest.fixture
def twilio(fake_twilio):
    backend = twilio_backend(fake_twilio)
    yield backend
    backend.close()


def live_twilio_call(fake: FakeTwilio, status: str = "in-progress") -> FakeTwilioCall:
    """A call the fake knows in `status`, without running any TwiML."""
    call = FakeTwilioCall(sid="CA" + "ab" * 16, to=TO, from_=FROM, direction="outbound-api", status=status)
    with fake.lock:
        fake.calls[call.sid] = call
    return call


def twiml_of(record) -> ET.Element:
    assert set(record.form) == {"Twiml"}, record.form
    (document,) = record.form["Twiml"]
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def twilio_21220(times: int) -> tuple:
    return 400, FakeTwilio.error_body(21220, "Call is not in-progress. Cannot redirect.", 400), times


def test_twilio_create_call_conversation_fields(fake_twilio, twilio):
    result = twilio.initiate_call(dial())
    (create,) = fake_twilio.requests_to("POST", r"/Calls\.json$")
    assert create.path == f"/2010-04-01/Accounts/{fake_twilio.account_sid}/Calls.json"
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert create.headers["authorization"] == "Basic " + base64.b64encode(
        f"{fake_twilio.account_sid}:{fake_twilio.auth_token}".encode()).decode()
    form = create.form
    assert list(form) == ["To", "From", "StatusCallback", "StatusCallbackEvent", "Timeout", "Url"]
    assert form["To"] == [TO] and form["From"] == [FROM]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert form["Timeout"] == ["30"]
    (status_callback,) = form["StatusCallback"]
    assert base_of(status_callback) == PUBLIC_URL
    assert query_of(status_callback) == {"callId": CALL_ID, "type": "status"}
    (url,) = form["Url"]
    assert base_of(url) == PUBLIC_URL and query_of(url) == {"callId": CALL_ID}
    assert result.provider_call_id == fake_twilio.last_call.sid
    assert result.status == "queued"  # the fake answers status queued, as Twilio does


def test_twilio_create_call_notify_sends_twiml_inline(fake_twilio, twilio):
    twilio.initiate_call(dial(mode="notify", message="Your table & drinks are <ready>."))
    (create,) = fake_twilio.requests_to("POST", r"/Calls\.json$")
    assert "Url" not in create.form
    root = ET.fromstring(create.form["Twiml"][0])
    assert [el.tag for el in root][0] == "Say" and root[-1].tag == "Hangup"
    say = root.find("Say")
    assert say.text == "Your table & drinks are <ready>."
    assert say.get("voice") == "Polly.Joanna" and say.get("language") == "en-US"


def test_twilio_create_call_dtmf_sequence_plays_digits_then_redirects(fake_twilio, twilio):
    twilio.initiate_call(dial(dtmf="1,2p3P4"))
    (create,) = fake_twilio.requests_to("POST", r"/Calls\.json$")
    assert "Url" not in create.form
    root = ET.fromstring(create.form["Twiml"][0])
    assert [el.tag for el in root] == ["Play", "Redirect"]
    assert root[0].get("digits") == "1w2w3ww4"
    redirect = root[1]
    assert redirect.get("method") == "POST"
    assert base_of(redirect.text) == PUBLIC_URL and query_of(redirect.text) == {"callId": CALL_ID}


def test_twilio_create_call_without_sid_is_a_carrier_error(fake_twilio, twilio):
    fake_twilio.fail_next("POST", r"/Calls\.json$", 201, {"status": "queued"})
    with pytest.raises(CarrierError, match="sid"):
        twilio.initiate_call(dial())


@pytest.mark.parametrize(("region", "host"), [
    ("ie1", "https://api.dublin.ie1.twilio.com"),
    ("au1", "https://api.sydney.au1.twilio.com"),
    ("us1", "https://api.twilio.com"),
])
def test_twilio_region_hosts(region, host):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sid": "CA1", "status": "in-progress"})

    config = make_config("twilio", {"accountSid": "AC" + "1" * 32, "authToken": "t0ken", "region": region})
    backend = TwilioCarrier(config, transport=httpx.MockTransport(handler))
    try:
        status = backend.get_call_status("CA1")
    finally:
        backend.close()
    assert status.status == "in-progress" and not status.is_terminal
    (request,) = seen
    assert str(request.url) == f"{host}/2010-04-01/Accounts/AC{'1' * 32}/Calls/CA1.json"
    assert request.method == "GET"


def test_twilio_play_tts_posts_say_and_gather(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    twilio.play_tts(call_id=CALL_ID, provider_call_id=call.sid, text="Hello & welcome", voice="fable", locale="en-GB")
    (update,) = fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")
    root = twiml_of(update)
    assert [el.tag for el in root] == ["Say", "Gather", "Redirect"]
    say, gather, redirect = root
    assert (say.text, say.get("voice"), say.get("language")) == ("Hello & welcome", "Polly.Amy", "en-GB")
    assert "speech" in gather.get("input").split() and gather.get("method") == "POST"
    assert gather.get("speechTimeout") == "auto"
    assert base_of(gather.get("action")) == PUBLIC_URL and query_of(gather.get("action")) == {"callId": CALL_ID}
    assert query_of(redirect.text) == {"callId": CALL_ID, "flow": "keepalive"}
    fake_twilio.wait_idle()
    assert call.said[-1]["text"] == "Hello & welcome"


def test_twilio_start_listening_with_prompt_carries_turn_token(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    twilio.start_listening(call_id=CALL_ID, provider_call_id=call.sid, turn_token="tok-42", language=None,
                           prompt=Prompt("Which day suits you?", "onyx"))
    (update,) = fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")
    root = twiml_of(update)
    assert [el.tag for el in root] == ["Gather", "Redirect"]
    gather, redirect = root
    assert "speech" in gather.get("input").split() and gather.get("language") == "en-US"
    assert query_of(gather.get("action")) == {"callId": CALL_ID, "turnToken": "tok-42"}
    (say,) = list(gather)
    assert (say.tag, say.text, say.get("voice")) == ("Say", "Which day suits you?", "Polly.Brian")
    assert query_of(redirect.text) == {"callId": CALL_ID, "flow": "relisten"}


def test_twilio_start_listening_without_prompt_is_a_bare_gather(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    twilio.start_listening(call_id=CALL_ID, provider_call_id=call.sid, turn_token=None, language="de-DE")
    root = twiml_of(fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")[0])
    gather = root.find("Gather")
    assert list(gather) == [] and gather.get("language") == "de-DE"
    assert query_of(gather.get("action")) == {"callId": CALL_ID}


def test_twilio_send_dtmf_plays_digits_then_redirects(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    twilio.send_dtmf(call_id=CALL_ID, provider_call_id=call.sid, digits="12#,3P*")
    root = twiml_of(fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")[0])
    assert [el.tag for el in root] == ["Play", "Redirect"]
    assert root[0].get("digits") == "12#w3ww*"
    assert root[1].get("method") == "POST"
    assert query_of(root[1].text) == {"callId": CALL_ID, "flow": "keepalive"}
    fake_twilio.wait_idle()
    assert call.played_digits == ["12#w3ww*"]


@pytest.mark.parametrize("extra", [{"streaming": {"enabled": True, "provider": "openai"}},
                                   {"realtime": {"enabled": True, "provider": "openai"}, "inboundPolicy": "open"}],
                         ids=["media", "realtime"])
def test_twilio_send_dtmf_on_streamed_calls_redirects_to_resume_the_stream(fake_twilio, extra):
    # The update ends the call's running stream: the redirect after the digits asks for it again.
    settings = {"accountSid": fake_twilio.account_sid, "authToken": fake_twilio.auth_token, "baseUrl": fake_twilio.base_url}
    backend = TwilioCarrier(make_config("twilio", settings, **extra), transport=transport())
    try:
        call = live_twilio_call(fake_twilio)
        backend.send_dtmf(call_id=CALL_ID, provider_call_id=call.sid, digits="12")
    finally:
        backend.close()
    root = twiml_of(fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")[0])
    assert [el.tag for el in root] == ["Play", "Redirect"]
    assert base_of(root[1].text) == PUBLIC_URL and query_of(root[1].text) == {"callId": CALL_ID, "flow": "resume"}


def test_twilio_live_update_retries_21220_then_succeeds(fake_twilio, twilio, sleeps):
    call = live_twilio_call(fake_twilio)
    status, body, times = twilio_21220(2)
    fake_twilio.fail_next("POST", rf"/Calls/{call.sid}\.json$", status, body, times)
    twilio.play_tts(call_id=CALL_ID, provider_call_id=call.sid, text="Hi", voice=None, locale=None)
    attempts = fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")
    assert [r.status for r in attempts] == [400, 400, 200]
    assert attempts[0].body == attempts[2].body  # the same TwiML each time
    assert sleeps == [0.25, 0.75]


def test_twilio_live_update_gives_up_after_three_21220(fake_twilio, twilio, sleeps):
    call = live_twilio_call(fake_twilio)
    status, body, times = twilio_21220(3)
    fake_twilio.fail_next("POST", rf"/Calls/{call.sid}\.json$", status, body, times)
    with pytest.raises(CarrierError) as caught:
        twilio.start_listening(call_id=CALL_ID, provider_call_id=call.sid, turn_token="t", language=None)
    assert "21220" in caught.value.message
    assert len(fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")) == 3
    assert sleeps == [0.25, 0.75]


def test_twilio_other_update_errors_are_not_retried(fake_twilio, twilio, sleeps):
    call = live_twilio_call(fake_twilio)
    fake_twilio.fail_next("POST", rf"/Calls/{call.sid}\.json$", 400,
                          FakeTwilio.error_body(21211, "Invalid 'To' Phone Number", 400))
    with pytest.raises(CarrierError, match="21211"):
        twilio.play_tts(call_id=CALL_ID, provider_call_id=call.sid, text="Hi", voice=None, locale=None)
    assert len(fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")) == 1
    assert sleeps == []


def test_twilio_hangup_posts_status_completed(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    twilio.hangup_call(call_id=CALL_ID, provider_call_id=call.sid, reason="hangup-bot")
    (request,) = fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")
    assert request.form == {"Status": ["completed"]}
    assert fake_twilio.call(call.sid).status == "completed"


def test_twilio_hangup_tolerates_unknown_call(fake_twilio, twilio):
    twilio.hangup_call(call_id=CALL_ID, provider_call_id="CA" + "0" * 32, reason="hangup-bot")
    (request,) = fake_twilio.requests_to("POST", r"/Calls/CA0+\.json$")
    assert request.status == 404


def test_twilio_hangup_tolerates_21220(fake_twilio, twilio, sleeps):
    call = live_twilio_call(fake_twilio)
    status, body, times = twilio_21220(1)
    fake_twilio.fail_next("POST", rf"/Calls/{call.sid}\.json$", status, body, times)
    twilio.hangup_call(call_id=CALL_ID, provider_call_id=call.sid, reason="hangup-bot")
    assert [r.status for r in fake_twilio.requests_to("POST", rf"/Calls/{call.sid}\.json$")] == [400]
    assert sleeps == []  # a hang-up is not retried: the call is over already


def test_twilio_hangup_unauthorized_raises_with_twilio_message(fake_twilio):
    backend = twilio_backend(fake_twilio, authToken="wrong-secret-token-123")
    try:
        with pytest.raises(CarrierError) as caught:
            backend.hangup_call(call_id=CALL_ID, provider_call_id="CA" + "1" * 32, reason="hangup-bot")
    finally:
        backend.close()
    message = caught.value.message
    assert "Authenticate" in message and "401" in message and "20003" in message
    assert "wrong-secret-token-123" not in message and fake_twilio.auth_token not in message


def test_twilio_status_in_progress_is_live(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    status = twilio.get_call_status(call.sid)
    assert (status.status, status.is_terminal, status.is_unknown) == ("in-progress", False, False)


@pytest.mark.parametrize(("fake_status", "expected"), [
    ("completed", "completed"), ("busy", "busy"), ("no-answer", "no-answer"),
    ("failed", "failed"), ("canceled", "hangup-bot"),
])
def test_twilio_status_terminal_values(fake_twilio, twilio, fake_status, expected):
    call = live_twilio_call(fake_twilio, status=fake_status)
    status = twilio.get_call_status(call.sid)
    assert (status.status, status.is_terminal, status.is_unknown) == (expected, True, False)


def test_twilio_status_queued_and_ringing_are_live(fake_twilio, twilio):
    for value in ("queued", "ringing"):
        call = live_twilio_call(fake_twilio, status=value)
        status = twilio.get_call_status(call.sid)
        assert (status.status, status.is_terminal) == (value, False)


def test_twilio_status_not_found_is_terminal(fake_twilio, twilio):
    status = twilio.get_call_status("CA" + "9" * 32)
    assert (status.status, status.is_terminal) == ("not-found", True)


def test_twilio_status_server_error_is_unknown(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    fake_twilio.fail_next("GET", rf"/Calls/{call.sid}\.json$", 500, {"message": "boom", "code": 20500})
    status = twilio.get_call_status(call.sid)
    assert status.is_unknown and not status.is_terminal


def test_twilio_status_non_json_is_unknown(fake_twilio, twilio):
    call = live_twilio_call(fake_twilio)
    fake_twilio.fail_next("GET", rf"/Calls/{call.sid}\.json$", 200, b"<html>maintenance</html>")
    status = twilio.get_call_status(call.sid)
    assert status.is_unknown and not status.is_terminal


def test_twilio_status_connection_error_is_unknown():
    config = make_config("twilio", {"accountSid": "AC" + "2" * 32, "authToken": "tok",
                                    "baseUrl": f"http://127.0.0.1:{free_port()}"})
    backend = TwilioCarrier(config, transport=transport())
    try:
        status = backend.get_call_status("CA1")
    finally:
        backend.close()
    assert status.is_unknown and not status.is_terminal


# ============================================================================ Telnyx


@pytest.fixture(scope="module")
def telnyx_server():
    yield from serve(FakeTelnyx)


@pytest.fixture
def fake_telnyx(telnyx_server):
    yield from fresh(telnyx_server)


def telnyx_backend(fake: FakeTelnyx, **block) -> TelnyxCarrier:
    settings = {"apiKey": fake.api_key, "connectionId": "conn-123", "publicKey": TELNYX_PUBLIC_KEY,
                "baseUrl": fake.api_url, **block}
    return TelnyxCarrier(make_config("telnyx", settings), transport=transport())


@pytest.fixture
def telnyx(fake_telnyx):
    backend = telnyx_backend(fake_telnyx)
    yield backend
    backend.close()


def telnyx_live_call(fake: FakeTelnyx) -> str:
    """An incoming call parked at the fake (no webhook URL: its events go nowhere)."""
    call = fake.ring_inbound("+15557654321", FROM)
    return call.call_control_id


def commands(fake: FakeTelnyx, action: str):
    return fake.requests_to("POST", rf"/actions/{action}$")


def test_telnyx_dial_json_exactly(fake_telnyx, telnyx):
    result = telnyx.initiate_call(dial())
    (request,) = fake_telnyx.requests_to("POST", r"^/v2/calls$")
    assert request.headers["authorization"] == f"Bearer {fake_telnyx.api_key}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "connection_id": "conn-123", "to": TO, "from": FROM, "webhook_url": PUBLIC_URL,
        "webhook_url_method": "POST", "client_state": base64.b64encode(CALL_ID.encode()).decode(),
        "timeout_secs": 30,
    }
    assert result.provider_call_id == fake_telnyx.last_call.call_control_id


def test_telnyx_dial_without_call_control_id_is_a_carrier_error(fake_telnyx, telnyx):
    fake_telnyx.fail_next("POST", r"^/v2/calls$", 200, {"data": {"record_type": "call"}})
    with pytest.raises(CarrierError, match="call_control_id"):
        telnyx.initiate_call(dial())


def test_telnyx_answer_command(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.answer_call(call_id=CALL_ID, provider_call_id=control_id)
    (request,) = commands(fake_telnyx, "answer")
    assert request.path == f"/v2/calls/{control_id}/actions/answer"
    assert request.json == {"command_id": f"voicecall-answer-{CALL_ID}",
                            "client_state": base64.b64encode(CALL_ID.encode()).decode()}
    # The same answer again is the same command id: Telnyx ignores it.
    telnyx.answer_call(call_id=CALL_ID, provider_call_id=control_id)
    assert [c["duplicate"] for c in fake_telnyx.call(control_id).commands] == [False, True]


@pytest.mark.parametrize(("voice", "expected"), [
    (None, "female"), ("Polly.Amy", "AWS.Polly.Amy"), ("alloy", "female"), ("male", "male"), ("MALE", "male"),
])
def test_telnyx_speak_voice_mapping(fake_telnyx, telnyx, voice, expected):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.play_tts(call_id=CALL_ID, provider_call_id=control_id, text="Hello", voice=voice, locale=None)
    (request,) = commands(fake_telnyx, "speak")
    body = dict(request.json)
    assert body.pop("command_id")
    assert body == {"payload": "Hello", "voice": expected, "language": "en-US"}


def test_telnyx_speak_language_and_fresh_command_ids(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.play_tts(call_id=CALL_ID, provider_call_id=control_id, text="One", voice=None, locale="en-GB")
    telnyx.play_tts(call_id=CALL_ID, provider_call_id=control_id, text="One", voice=None, locale="en-GB")
    first, second = commands(fake_telnyx, "speak")
    assert first.json["language"] == "en-GB"
    assert first.json["command_id"] != second.json["command_id"]
    assert [b["payload"] for b in fake_telnyx.call(control_id).spoken] == ["One", "One"]  # neither was dropped


def test_telnyx_transcription_start_and_stop(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.start_listening(call_id=CALL_ID, provider_call_id=control_id, turn_token=None, language=None)
    telnyx.start_listening(call_id=CALL_ID, provider_call_id=control_id, turn_token=None, language="de")
    telnyx.stop_listening(call_id=CALL_ID, provider_call_id=control_id)
    first, second = commands(fake_telnyx, "transcription_start")
    assert {k: v for k, v in first.json.items() if k != "command_id"} == {"language": "en"}
    assert second.json["language"] == "de"
    (stop,) = commands(fake_telnyx, "transcription_stop")
    assert set(stop.json) == {"command_id"}
    assert not fake_telnyx.call(control_id).transcription


def test_telnyx_send_dtmf_digits(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.send_dtmf(call_id=CALL_ID, provider_call_id=control_id, digits="1,2p3P#")
    (request,) = commands(fake_telnyx, "send_dtmf")
    assert request.json["digits"] == "1w2w3W#"
    assert fake_telnyx.call(control_id).dtmf_sent == ["1w2w3W#"]


def test_telnyx_hangup_live_call(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    (request,) = commands(fake_telnyx, "hangup")
    assert set(request.json) == {"command_id"} and request.status == 200
    assert not fake_telnyx.call(control_id).is_alive


def test_telnyx_hangup_tolerates_404_and_call_ended(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    # Again on the dead call: 422 code 90018, tolerated.
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    fake_telnyx.fail_next("POST", r"/actions/hangup$", 404, FakeTelnyx.error_body("10005", "Resource not found"))
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id="v3:gone", reason="hangup-bot")
    assert [r.status for r in commands(fake_telnyx, "hangup")] == [200, 422, 404]


def test_telnyx_hangup_other_422_raises(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    fake_telnyx.fail_next("POST", r"/actions/hangup$", 422,
                          FakeTelnyx.error_body("10015", "Invalid value for parameter", "command_id is bad"))
    with pytest.raises(CarrierError) as caught:
        telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    assert "10015" in caught.value.message and "command_id is bad" in caught.value.message


def test_telnyx_speak_on_ended_call_raises(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    with pytest.raises(CarrierError, match="90018"):
        telnyx.play_tts(call_id=CALL_ID, provider_call_id=control_id, text="Hi", voice=None, locale=None)


def test_telnyx_status_alive_and_dead(fake_telnyx, telnyx):
    control_id = telnyx_live_call(fake_telnyx)
    status = telnyx.get_call_status(control_id)
    assert (status.status, status.is_terminal, status.is_unknown) == ("in-progress", False, False)
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=control_id, reason="hangup-bot")
    status = telnyx.get_call_status(control_id)
    assert status.is_terminal and not status.is_unknown


@pytest.mark.parametrize("data", [{"record_type": "call"}, {"is_alive": "yes"}, None])
def test_telnyx_status_without_is_alive_is_unknown(fake_telnyx, telnyx, data):
    control_id = telnyx_live_call(fake_telnyx)
    fake_telnyx.fail_next("GET", r"^/v2/calls/[^/]+$", 200, {"data": data})
    status = telnyx.get_call_status(control_id)
    assert status.is_unknown and not status.is_terminal


def test_telnyx_status_not_found_and_server_error(fake_telnyx, telnyx):
    status = telnyx.get_call_status("v3:nobody")
    assert (status.status, status.is_terminal) == ("not-found", True)
    fake_telnyx.fail_next("GET", r"^/v2/calls/[^/]+$", 500, FakeTelnyx.error_body("10007", "Unexpected error"))
    status = telnyx.get_call_status("v3:nobody")
    assert status.is_unknown and not status.is_terminal


def test_telnyx_ids_keep_colons_but_cannot_change_the_path(fake_telnyx, telnyx):
    telnyx.get_call_status("v3:abc")
    telnyx.get_call_status("../../x")
    telnyx.get_call_status("a?b#c")
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id="x/../../calls", reason="hangup-bot")
    paths = [r.path for r in fake_telnyx.requests]
    assert paths[0] == "/v2/calls/v3:abc"
    assert paths[1] == "/v2/calls/..%2F..%2Fx"
    assert paths[2] == "/v2/calls/a%3Fb%23c" and not fake_telnyx.requests[2].query
    assert paths[3] == "/v2/calls/x%2F..%2F..%2Fcalls/actions/hangup"
    assert not any(r.query for r in fake_telnyx.requests)


@pytest.mark.parametrize("call_id", ["..", "."])
def test_telnyx_dot_ids_cannot_leave_calls(fake_telnyx, telnyx, call_id):
    telnyx.get_call_status(call_id)
    telnyx.hangup_call(call_id=CALL_ID, provider_call_id=call_id, reason="hangup-bot")
    status_request, hangup_request = fake_telnyx.requests
    assert status_request.path.startswith("/v2/calls/") and status_request.path != "/v2/calls/"
    assert hangup_request.path.startswith("/v2/calls/") and hangup_request.path.endswith("/actions/hangup")
    assert hangup_request.path != "/v2/calls/actions/hangup"


def test_telnyx_unauthorized_error_does_not_leak_the_key(fake_telnyx):
    backend = telnyx_backend(fake_telnyx, apiKey="KEY-very-secret-0042")
    try:
        with pytest.raises(CarrierError) as caught:
            backend.initiate_call(dial())
    finally:
        backend.close()
    message = caught.value.message
    assert "401" in message and "10009" in message
    assert "KEY-very-secret-0042" not in message and fake_telnyx.api_key not in message


# ============================================================================ Plivo


class Documents:
    """A DocumentStore stub: remembers what was put and hands out numbered tokens."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, str, str]] = []

    def put(self, call_id: str, body: str) -> str:
        token = f"doc-{len(self.stored) + 1}"
        self.stored.append((call_id, body, token))
        return token


@pytest.fixture(scope="module")
def plivo_server():
    yield from serve(FakePlivo)


@pytest.fixture
def fake_plivo(plivo_server):
    yield from fresh(plivo_server)


def plivo_backend(fake: FakePlivo, documents=None, **extra) -> PlivoCarrier:
    block = {"authId": fake.auth_id, "authToken": extra.pop("authToken", fake.auth_token),
             "baseUrl": fake.base_url + "/v1"}
    return PlivoCarrier(make_config("plivo", block, **extra), documents=documents, transport=transport())


@pytest.fixture
def documents():
    return Documents()


@pytest.fixture
def plivo(fake_plivo, documents):
    backend = plivo_backend(fake_plivo, documents)
    yield backend
    backend.close()


def plivo_live_call(fake: FakePlivo) -> FakePlivoCall:
    """An answered call the fake knows, without running any XML."""
    call = FakePlivoCall(request_uuid=None, call_uuid="c0ffee00-0000-4000-8000-000000000001", from_="+15557654321",
                         to=FROM, direction="inbound", status="in-progress", answer_url=PUBLIC_URL)
    with fake.lock:
        fake.calls.append(call)
    return call


def account_path(fake: FakePlivo, rest: str) -> str:
    return f"/v1/Account/{fake.auth_id}/{rest}"


def test_plivo_make_call_json(fake_plivo, plivo):
    result = plivo.initiate_call(dial(from_number="+1 (555) 000-0001", to_number="sip:alice@example.com"))
    (request,) = fake_plivo.requests_to("POST", r"/Call/$")
    assert request.path == account_path(fake_plivo, "Call/")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(
        f"{fake_plivo.auth_id}:{fake_plivo.auth_token}".encode()).decode()
    body = request.json
    assert set(body) == {"from", "to", "answer_url", "answer_method", "hangup_url", "hangup_method", "hangup_on_ring"}
    assert body["from"] == "+15550000001" and body["to"] == "sip:alice@example.com"
    assert base_of(body["answer_url"]) == PUBLIC_URL
    assert query_of(body["answer_url"]) == {"provider": "plivo", "callId": CALL_ID, "flow": "answer"}
    assert query_of(body["hangup_url"]) == {"provider": "plivo", "callId": CALL_ID, "flow": "hangup"}
    assert (body["answer_method"], body["hangup_method"], body["hangup_on_ring"]) == ("POST", "POST", 30)
    assert result.provider_call_id == fake_plivo.last_call.request_uuid


@pytest.mark.parametrize(("ring_timeout_ms", "seconds"), [(45000, 45), (1999, 1), (500, 1)])
def test_plivo_hangup_on_ring_from_ring_timeout(fake_plivo, ring_timeout_ms, seconds):
    backend = plivo_backend(fake_plivo, ringTimeoutMs=ring_timeout_ms)
    try:
        backend.initiate_call(dial(to_number="+44 20 7946-0000"))
    finally:
        backend.close()
    body = fake_plivo.requests_to("POST", r"/Call/$")[0].json
    assert body["hangup_on_ring"] == seconds and body["to"] == "+442079460000"


def test_plivo_make_call_send_digits(fake_plivo, plivo):
    plivo.initiate_call(dial(dtmf="1,2p3P#"))
    assert fake_plivo.requests_to("POST", r"/Call/$")[0].json["send_digits"] == "1w2w3W#"


def test_plivo_request_uuid_list_takes_the_first(fake_plivo, plivo):
    fake_plivo.fail_next("POST", r"/Call/$", 201, {"message": "call fired", "request_uuid": ["r-1", "r-2"],
                                                   "api_id": "a"})
    assert plivo.initiate_call(dial()).provider_call_id == "r-1"


@pytest.mark.parametrize("answer", [{"message": "call fired", "api_id": "a"}, {"request_uuid": []},
                                    {"request_uuid": ""}, {"request_uuid": 7}])
def test_plivo_make_call_without_request_uuid_raises(fake_plivo, plivo, answer):
    fake_plivo.fail_next("POST", r"/Call/$", 201, answer)
    with pytest.raises(CarrierError, match="request_uuid"):
        plivo.initiate_call(dial())


def test_plivo_play_tts_stores_document_and_transfers(fake_plivo, plivo, documents):
    call = plivo_live_call(fake_plivo)
    plivo.play_tts(call_id=CALL_ID, provider_call_id=call.call_uuid, text="Tom & Jerry", voice=None, locale="en-GB")
    ((stored_call, document, token),) = documents.stored
    assert stored_call == CALL_ID
    root = ET.fromstring(document)
    speak = root.find("Speak")
    assert (speak.text, speak.get("language")) == ("Tom & Jerry", "en-GB")
    (transfer,) = fake_plivo.requests_to("POST", rf"/Call/{call.call_uuid}/$")
    assert transfer.path == account_path(fake_plivo, f"Call/{call.call_uuid}/")
    assert set(transfer.json) == {"legs", "aleg_url", "aleg_method"}
    assert (transfer.json["legs"], transfer.json["aleg_method"]) == ("aleg", "POST")
    assert base_of(transfer.json["aleg_url"]) == PUBLIC_URL
    assert query_of(transfer.json["aleg_url"]) == {"provider": "plivo", "flow": "xml-speak", "callId": CALL_ID,
                                                   "doc": token}
    assert transfer.status == 202


def test_plivo_start_listening_transfers_to_getinput(fake_plivo, plivo, documents):
    call = plivo_live_call(fake_plivo)
    plivo.start_listening(call_id=CALL_ID, provider_call_id=call.call_uuid, turn_token="tok-7", language=None,
                          prompt=Prompt("Which day?"))
    ((_, document, token),) = documents.stored
    get_input = ET.fromstring(document).find("GetInput")
    assert "speech" in get_input.get("inputType").split() and get_input.get("method") == "POST"
    assert query_of(get_input.get("action")) == {"provider": "plivo", "flow": "getinput", "callId": CALL_ID,
                                                 "turnToken": "tok-7"}
    assert get_input.find("Speak").text == "Which day?"
    transfer = fake_plivo.requests_to("POST", rf"/Call/{call.call_uuid}/$")[0]
    assert query_of(transfer.json["aleg_url"])["flow"] == "xml-listen"
    assert query_of(transfer.json["aleg_url"])["doc"] == token


def test_plivo_hangup_live_call_deletes_the_call_only(fake_plivo, plivo):
    call = plivo_live_call(fake_plivo)
    plivo.hangup_call(call_id=CALL_ID, provider_call_id=call.call_uuid, reason="hangup-bot")
    (delete,) = fake_plivo.requests_to("DELETE", r"/Call/")
    assert delete.path == account_path(fake_plivo, f"Call/{call.call_uuid}/") and delete.status == 204
    assert not fake_plivo.requests_to("DELETE", r"/Request/")
    assert call.status == "completed"


def test_plivo_hangup_of_a_ringing_request_cancels_it(fake_plivo, plivo):
    request_uuid = plivo.initiate_call(dial()).provider_call_id
    plivo.hangup_call(call_id=CALL_ID, provider_call_id=request_uuid, reason="hangup-bot")
    (call_delete,) = fake_plivo.requests_to("DELETE", r"/Call/")
    (request_delete,) = fake_plivo.requests_to("DELETE", r"/Request/")
    assert call_delete.status == 404
    assert request_delete.path == account_path(fake_plivo, f"Request/{request_uuid}/") and request_delete.status == 204
    assert fake_plivo.call(request_uuid).status == "cancel"
    assert fake_plivo.requests.index(call_delete) < fake_plivo.requests.index(request_delete)


def test_plivo_hangup_of_an_unknown_id_is_tolerated(fake_plivo, plivo):
    plivo.hangup_call(call_id=CALL_ID, provider_call_id="no-such-uuid", reason="hangup-bot")
    assert [r.status for r in fake_plivo.requests] == [404, 404]


def test_plivo_hangup_server_error_raises(fake_plivo, plivo):
    call = plivo_live_call(fake_plivo)
    fake_plivo.fail_next("DELETE", r"/Call/", 500, FakePlivo.error_body("internal error"))
    with pytest.raises(CarrierError, match="internal error"):
        plivo.hangup_call(call_id=CALL_ID, provider_call_id=call.call_uuid, reason="hangup-bot")
    assert not fake_plivo.requests_to("DELETE", r"/Request/")


def test_plivo_send_dtmf(fake_plivo, plivo):
    call = plivo_live_call(fake_plivo)
    plivo.send_dtmf(call_id=CALL_ID, provider_call_id=call.call_uuid, digits="12,P#")
    (request,) = fake_plivo.requests_to("POST", r"/DTMF/$")
    assert request.path == account_path(fake_plivo, f"Call/{call.call_uuid}/DTMF/")
    assert request.json == {"digits": "12wW#", "leg": "aleg"}
    assert call.dtmf_sent == ["12wW#"]


@pytest.mark.parametrize(("call_status", "expected"), [
    ("completed", "completed"), ("busy", "busy"), ("failed", "failed"), ("no-answer", "no-answer"),
    ("timeout", "timeout"), ("cancel", "cancel"), ("machine", "machine"), ("hangup", "hangup"),
    (" Completed ", "completed"),
])
def test_plivo_status_terminal_values(fake_plivo, plivo, call_status, expected):
    fake_plivo.fail_next("GET", r"/Call/[^/]+/$", 200, {"api_id": "a", "call_status": call_status})
    status = plivo.get_call_status("some-uuid")
    assert (status.status, status.is_terminal, status.is_unknown) == (expected, True, False)


@pytest.mark.parametrize("call_status", ["in-progress", "ringing"])
def test_plivo_status_live_values(fake_plivo, plivo, call_status):
    call = plivo_live_call(fake_plivo)
    call.status = call_status
    status = plivo.get_call_status(call.call_uuid)
    assert (status.status, status.is_terminal, status.is_unknown) == (call_status, False, False)
    assert fake_plivo.requests[-1].path == account_path(fake_plivo, f"Call/{call.call_uuid}/")


def test_plivo_status_not_found_server_error_and_garbage(fake_plivo, plivo):
    status = plivo.get_call_status("no-such-uuid")
    assert (status.status, status.is_terminal) == ("not-found", True)
    fake_plivo.fail_next("GET", r"/Call/[^/]+/$", 500, FakePlivo.error_body("internal error"))
    status = plivo.get_call_status("no-such-uuid")
    assert status.is_unknown and not status.is_terminal
    fake_plivo.fail_next("GET", r"/Call/[^/]+/$", 200, b"not json")
    status = plivo.get_call_status("no-such-uuid")
    assert status.is_unknown and not status.is_terminal


def test_plivo_unauthorized_error_does_not_leak_the_token(fake_plivo):
    backend = plivo_backend(fake_plivo, authToken="plivo-super-secret-77")
    try:
        with pytest.raises(CarrierError) as caught:
            backend.hangup_call(call_id=CALL_ID, provider_call_id="some-uuid", reason="hangup-bot")
    finally:
        backend.close()
    message = caught.value.message
    assert "401" in message and "Authentication failed" in message
    assert "plivo-super-secret-77" not in message and fake_plivo.auth_token not in message


def test_plivo_dot_id_cannot_leave_call(fake_plivo, plivo):
    plivo.hangup_call(call_id=CALL_ID, provider_call_id="..", reason="hangup-bot")
    assert fake_plivo.requests and all(
        r.path.startswith(account_path(fake_plivo, "Call/")) or r.path.startswith(account_path(fake_plivo, "Request/"))
        for r in fake_plivo.requests)


# ============================================================================ CarrierHttp: SSRF guard, errors


def recording_transport(seen: list[httpx.Request], status: int = 200, **kwargs) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, **kwargs)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("path", ["@evil.example/x", ".evil.example/x", ":8443/x", "evil"])
def test_carrier_http_refuses_requests_outside_its_base_url(path):
    seen: list[httpx.Request] = []
    http = CarrierHttp(carrier="acme", base_url="https://api.acme.example", error_reader=plivo_read_error,
                       auth=("user", "pass"), transport=recording_transport(seen, json={}))
    try:
        with pytest.raises(CarrierError, match="refusing"):
            http.request("GET", path)
    finally:
        http.close()
    assert seen == []


def test_carrier_http_paths_stay_on_the_pinned_host():
    seen: list[httpx.Request] = []
    http = CarrierHttp(carrier="acme", base_url="https://api.acme.example/v2/", error_reader=plivo_read_error,
                       transport=recording_transport(seen, json={}))
    try:
        http.request("GET", "@evil.example/x")
        http.request("GET", "//evil.example/x")
    finally:
        http.close()
    assert [r.url.host for r in seen] == ["api.acme.example", "api.acme.example"]


def test_carrier_http_does_not_follow_redirects():
    seen: list[httpx.Request] = []
    http = CarrierHttp(carrier="acme", base_url="https://api.acme.example/v1", error_reader=plivo_read_error,
                       transport=recording_transport(seen, status=302, headers={"Location": "https://evil.example/"}))
    try:
        with pytest.raises(CarrierError):
            http.request("GET", "/Call/x/")
    finally:
        http.close()
    assert [r.url.host for r in seen] == ["api.acme.example"]


def test_carrier_ids_are_quoted_so_they_cannot_change_the_host(fake_twilio, twilio):
    status = twilio.get_call_status("@evil.example/x?y#z")
    assert status.status == "not-found"  # asked the fake (which does not know it), nobody else
    (request,) = fake_twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{fake_twilio.account_sid}/Calls/@evil.example%2Fx%3Fy%23z.json"
    assert not request.query


def test_connection_errors_do_not_leak_credentials():
    port = free_port()
    config = make_config("plivo", {"authId": "MAID0001", "authToken": "plivo-secret-connection",
                                   "baseUrl": f"http://127.0.0.1:{port}/v1"})
    backend = PlivoCarrier(config, transport=transport())
    try:
        with pytest.raises(CarrierError) as caught:
            backend.send_dtmf(call_id=CALL_ID, provider_call_id="u-1", digits="1")
    finally:
        backend.close()
    assert "plivo-secret-connection" not in caught.value.message
    assert "ConnectError" in caught.value.message
