"""Self-tests of the fake carriers, with the official SDKs as independent oracles (no Django DB)."""
from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from plivo.utils import validate_signature, validate_v3_signature
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature
from twilio.request_validator import RequestValidator

from tests.fakes import FakePlivo, FakeTelnyx, FakeTwilio

TO, FROM = "+15551230002", "+15551230001"


def has(params: dict[str, str], expected: dict[str, str]) -> bool:
    """params contains every expected key with the expected value."""
    return params.items() >= expected.items()


# --------------------------------------------------------------------------- gateway stub


@dataclass
class Hit:
    """One webhook the stub gateway received."""

    method: str
    url: str  # as seen by the stub: http://127.0.0.1:PORT/path?query
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def params(self) -> dict[str, str]:
        if self.method == "GET":
            return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, str, str]  # status, content type, body


class GatewayStub:
    """A stdlib HTTP server standing in for the gateway: records webhooks, answers canned documents."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answers: dict[str, Answer | Callable[[Hit], Answer]] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                path = urlsplit(self.path).path
                body = self.rfile.read(length)
                hit = Hit(self.command, stub.base_url + self.path, path, dict(self.headers.items()), body)
                stub.hits.append(hit)
                answer = stub.answers.get(path, (200, "text/xml", "<Response></Response>"))
                status, content_type, body = answer(hit) if callable(answer) else answer
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def xml(self, path: str, document: str, status: int = 200) -> str:
        """Answer `path` (query ignored) with this XML document; returns the full URL."""
        self.answers[urlsplit(path).path] = (status, "text/xml", document)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base_url + path

    def to(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway():
    stub = GatewayStub()
    yield stub
    stub.close()


@pytest.fixture
def twilio_fake():
    with FakeTwilio() as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
def telnyx_fake():
    with FakeTelnyx() as fake:
        yield fake
    assert fake.errors == []


@pytest.fixture
def plivo_fake():
    with FakePlivo() as fake:
        yield fake
    assert fake.errors == []


# --------------------------------------------------------------------------- base machinery


def test_failed_delivery_is_recorded_and_worker_survives(gateway):
    with FakeTwilio() as fake:
        dead = "http://127.0.0.1:9/voice"  # port 9 (discard) is closed on loopback
        call = fake.ring_inbound(FROM, TO, dead)
        assert fake.deliveries[0].status == 0 and call.status == "completed" and call.error
        good = fake.ring_inbound(FROM, TO, gateway.xml("/voice", "<Response><Say>hi</Say></Response>"))
        assert good.said[0]["text"] == "hi"
        assert fake.errors == []


def test_fail_next_and_request_log(twilio_fake):
    client = httpx.Client(base_url=twilio_fake.api_url, auth=(twilio_fake.account_sid, twilio_fake.auth_token))
    path = f"/Accounts/{twilio_fake.account_sid}/Calls.json"
    error = FakeTwilio.error_body(20500, "Internal Server Error", 500)
    twilio_fake.fail_next("POST", r"/Calls\.json$", 500, error, times=2)
    form = {"To": TO, "From": FROM, "Twiml": "<Response/>"}
    assert [client.post(path, data=form).status_code for _ in range(3)] == [500, 500, 201]
    assert client.post(path, data=form).status_code == 201
    recorded = twilio_fake.requests_to("POST", r"/Calls\.json$")
    assert [r.status for r in recorded] == [500, 500, 201, 201]
    assert recorded[0].form["To"] == [TO] and recorded[0].headers["content-type"].startswith("application/x-www")


# --------------------------------------------------------------------------- Twilio


def _twilio_client(fake: FakeTwilio, auth: tuple[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=fake.api_url, auth=auth or (fake.account_sid, fake.auth_token))


def test_twilio_rest_errors(twilio_fake):
    client = _twilio_client(twilio_fake)
    calls = f"/Accounts/{twilio_fake.account_sid}/Calls"
    unauthorized = _twilio_client(twilio_fake, (twilio_fake.account_sid, "wrong")).get(f"{calls}.json")
    assert unauthorized.status_code == 401 and unauthorized.json() == {
        "code": 20003, "message": "Authenticate", "status": 401,
        "more_info": "https://www.twilio.com/docs/errors/20003",
    }
    missing = client.get(f"{calls}/CA{'0' * 32}.json")
    assert missing.status_code == 404 and missing.json()["code"] == 20404
    assert client.post(f"{calls}/CA{'0' * 32}.json", data={"Status": "completed"}).json()["code"] == 20404
    assert client.post(f"{calls}.json", data={"To": "12345", "From": FROM, "Url": "http://x/"}).json()["code"] == 21211
    assert client.post(f"{calls}.json", data={"To": TO, "From": FROM}).status_code == 400

    created = client.post(f"{calls}.json", data={
        "To": TO, "From": FROM, "Url": "http://127.0.0.1:9/voice", "StatusCallback": "http://127.0.0.1:9/s",
        "StatusCallbackEvent": ["initiated", "answered"],  # the key is repeated, as the SDK sends it
    })
    assert created.status_code == 201
    body = created.json()
    assert re.fullmatch(r"CA[0-9a-f]{32}", body["sid"])
    assert (body["status"], body["direction"], body["from"], body["to"]) == ("queued", "outbound-api", FROM, TO)
    assert parsedate_to_datetime(body["date_created"]).utcoffset().total_seconds() == 0
    assert twilio_fake.call(body["sid"]).status_callback_events == ["initiated", "answered"]

    redirect = client.post(f"{calls}/{body['sid']}.json", data={"Twiml": "<Response/>"})
    assert redirect.status_code == 400 and redirect.json()["code"] == 21220
    canceled = client.post(f"{calls}/{body['sid']}.json", data={"Status": "canceled"})
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"


def test_twilio_official_client_against_fake(twilio_fake):
    from twilio.base.exceptions import TwilioRestException
    from twilio.rest import Client

    client = Client(twilio_fake.account_sid, twilio_fake.auth_token)
    client.api.base_url = twilio_fake.base_url
    call = client.calls.create(
        to=TO, from_=FROM, url="http://127.0.0.1:9/v", status_callback_event=["initiated", "completed"]
    )
    assert call.status == "queued" and client.calls(call.sid).fetch().sid == call.sid
    assert twilio_fake.call(call.sid).params["StatusCallbackEvent"] == ["initiated", "completed"]
    with pytest.raises(TwilioRestException) as not_live:
        client.calls(call.sid).update(twiml="<Response/>")
    assert (not_live.value.status, not_live.value.code) == (400, 21220)
    with pytest.raises(TwilioRestException) as unknown:
        client.calls("CA" + "1" * 32).fetch()
    assert (unknown.value.status, unknown.value.code) == (404, 20404)


def test_twilio_signature_validates_with_sdk(twilio_fake, gateway):
    twilio_fake.ring_inbound(FROM, TO, gateway.xml("/voice?tenant=7", "<Response><Hangup/></Response>"))
    twilio_fake.ring_inbound(FROM, TO, gateway.url("/voice?tenant=7"), method="GET")
    post, get = gateway.hits
    validator = RequestValidator(twilio_fake.auth_token)
    assert validator.validate(post.url, post.params, post.headers["X-Twilio-Signature"])
    assert not RequestValidator("wrong").validate(post.url, post.params, post.headers["X-Twilio-Signature"])
    assert not validator.validate(post.url, {**post.params, "To": "+15550000000"}, post.headers["X-Twilio-Signature"])
    assert get.method == "GET" and get.params["CallStatus"] == "ringing"
    assert validator.validate(get.url, {}, get.headers["X-Twilio-Signature"])

    twilio_fake.signing_token = "not-the-token"
    twilio_fake.ring_inbound(FROM, TO, gateway.url("/voice?tenant=7"))
    wrong = gateway.hits[-1]
    assert not validator.validate(wrong.url, wrong.params, wrong.headers["X-Twilio-Signature"])


def test_twilio_signs_public_url_and_default_port(twilio_fake, gateway):
    gateway.xml("/twilio/voice", "<Response><Hangup/></Response>")
    twilio_fake.reroute = {"https://gw.example.com": gateway.base_url}
    public = "https://gw.example.com/twilio/voice"
    validator = RequestValidator(twilio_fake.auth_token)
    twilio_fake.ring_inbound(FROM, TO, public)
    twilio_fake.sign_with_port = True
    twilio_fake.ring_inbound(FROM, TO, public)
    plain, with_port = gateway.hits
    assert plain.headers["X-Twilio-Signature"] == validator.compute_signature(public, plain.params)
    assert with_port.headers["X-Twilio-Signature"] == validator.compute_signature(
        "https://gw.example.com:443/twilio/voice", with_port.params)
    # the SDK's validator accepts both forms for the public URL
    assert validator.validate(public, plain.params, plain.headers["X-Twilio-Signature"])
    assert validator.validate(public, with_port.params, with_port.headers["X-Twilio-Signature"])
    assert twilio_fake.deliveries[0].url == public and twilio_fake.deliveries[0].sent_to.startswith(gateway.base_url)


def test_twilio_gather_say_redirect_hangup(twilio_fake, gateway):
    voice = gateway.xml("/voice", (
        '<Response><Gather input="speech dtmf" action="/gather?turn=1" actionOnEmptyResult="true" '
        'language="en-US" speechTimeout="auto"><Say voice="Polly.Joanna">How can I help?</Say></Gather>'
        '<Say>never reached</Say></Response>'))
    gateway.xml("/gather", "<Response><Redirect method=\"POST\">/next</Redirect></Response>")
    gateway.xml("/next", "<Response><Say>Bye</Say><Hangup/><Say>after hangup</Say></Response>")

    call = twilio_fake.ring_inbound(FROM, TO, voice)
    first_hit = gateway.to("/voice")[0].params
    assert has(first_hit, {"CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"})
    assert call.status == "in-progress" and call.blocked_on == "gather"
    assert call.said == [{"text": "How can I help?", "voice": "Polly.Joanna", "language": None}]
    assert call.gather["action"] == gateway.url("/gather?turn=1") and call.gather["speechTimeout"] == "auto"

    twilio_fake.say(call.sid, "I need help", confidence=0.8)
    gathered = gateway.to("/gather")[0].params
    assert gathered["SpeechResult"] == "I need help" and gathered["Confidence"] == "0.8"
    assert gathered["CallSid"] == call.sid and gathered["CallStatus"] == "in-progress"
    assert [s["text"] for s in call.said] == ["How can I help?", "Bye"]
    assert call.status == "completed" and len(call.documents) == 3
    with pytest.raises(RuntimeError):
        twilio_fake.say(call.sid, "too late")


def test_twilio_press_and_silence(twilio_fake, gateway):
    dtmf = gateway.xml("/dtmf", '<Response><Gather action="/digits" numDigits="3"><Say>Code?</Say></Gather></Response>')
    gateway.xml("/digits", "<Response><Pause length=\"60\"/></Response>")
    call = twilio_fake.ring_inbound(FROM, TO, dtmf)
    with pytest.raises(RuntimeError):
        twilio_fake.say(call.sid, "speech into a dtmf gather")
    twilio_fake.press(call.sid, "12#")
    assert has(gateway.to("/digits")[0].params, {"Digits": "12", "FinishedOnKey": "#"})
    assert call.blocked_on == "pause" and call.status == "in-progress"  # a long Pause is a keep-alive
    twilio_fake.elapse(call.sid)
    assert call.status == "completed"

    fallthrough = gateway.xml(
        "/quiet", '<Response><Gather input="speech" action="/never"/><Say>No input</Say></Response>')
    quiet = twilio_fake.ring_inbound(FROM, TO, fallthrough)
    twilio_fake.silence(quiet.sid)
    assert gateway.to("/never") == [] and quiet.said[-1]["text"] == "No input" and quiet.status == "completed"


def test_twilio_outbound_status_callbacks_and_live_update(twilio_fake, gateway):
    client = _twilio_client(twilio_fake)
    calls = f"/Accounts/{twilio_fake.account_sid}/Calls"
    gateway.xml("/voice", '<Response><Say>Hello</Say><Pause length="30"/></Response>')
    form = {"To": TO, "From": FROM, "Url": gateway.url("/voice"), "StatusCallback": gateway.url("/status"),
            "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"]}
    sid = client.post(f"{calls}.json", data=form).json()["sid"]
    call = twilio_fake.answer(sid)
    assert [h.params["CallStatus"] for h in gateway.to("/status")] == ["initiated", "ringing", "in-progress"]
    assert gateway.to("/voice")[0].params["CallStatus"] == "in-progress"
    assert call.blocked_on == "pause"

    update = client.post(f"{calls}/{sid}.json", data={"Twiml": "<Response><Say>Changed</Say><Hangup/></Response>"})
    assert update.status_code == 200
    twilio_fake.wait_idle()
    assert call.said[-1]["text"] == "Changed" and call.status == "completed"
    final = gateway.to("/status")[-1].params
    assert final["CallStatus"] == "completed" and final["SequenceNumber"] == "3"
    assert final["CallbackSource"] == "call-progress-events" and "CallDuration" in final and final["Timestamp"]

    hung_up = client.post(f"{calls}.json", data=form).json()["sid"]
    twilio_fake.answer(hung_up)
    assert client.post(f"{calls}/{hung_up}.json", data={"Status": "completed"}).json()["status"] == "completed"
    twilio_fake.wait_idle()
    assert gateway.to("/status")[-1].params["CallSid"] == hung_up
    assert gateway.to("/status")[-1].params["CallStatus"] == "completed"

    busy_sid = client.post(f"{calls}.json", data=form).json()["sid"]
    twilio_fake.busy(busy_sid)
    assert gateway.to("/status")[-1].params["CallStatus"] == "busy"
    assert client.get(f"{calls}/{busy_sid}.json").json()["status"] == "busy"


def test_twilio_application_errors_stream_and_reject(twilio_fake, gateway):
    broken = twilio_fake.ring_inbound(FROM, TO, gateway.xml("/500", "oops", status=500))
    assert broken.status == "completed" and "500" in broken.error
    not_xml = twilio_fake.ring_inbound(FROM, TO, gateway.xml("/text", "hello"))
    assert not_xml.status == "completed" and "not XML" in not_xml.error

    stream = twilio_fake.ring_inbound(FROM, TO, gateway.xml("/stream", (
        '<Response><Connect><Stream url="wss://gw.example.com/media"><Parameter name="token" value="abc"/>'
        "</Stream></Connect><Say>after stream</Say></Response>")))
    assert stream.stream["url"] == "wss://gw.example.com/media" and stream.stream["parameters"] == {"token": "abc"}
    assert stream.blocked_on == "stream" and stream.status == "in-progress"
    twilio_fake.end_stream(stream.sid)
    assert stream.said[-1]["text"] == "after stream" and stream.status == "completed"

    reject = gateway.xml("/reject", '<Response><Reject reason="busy"/></Response>')
    rejected = twilio_fake.ring_inbound(FROM, TO, reject)
    assert (rejected.status, rejected.rejected, rejected.start_time) == ("busy", "busy", None)


# --------------------------------------------------------------------------- Telnyx



def test_twilio_update_during_a_stream_ends_the_stream(gateway):
    """As on Twilio: a REST update of the call's TwiML ends the running <Connect><Stream> (its socket
    gets a stop) without requesting the Connect action; the call's end stops it too."""
    stopped: list[tuple[str, str]] = []
    with FakeTwilio(on_stream_stop=lambda call, stream: stopped.append((call.sid, stream["stopped"]))) as fake:
        client = _twilio_client(fake)
        calls = f"/Accounts/{fake.account_sid}/Calls"
        streamed = ('<Response><Connect action="{}"><Stream url="wss://gw.example.com/media"><Parameter name="token" '
                    'value="{}"/></Stream></Connect></Response>')
        call = fake.ring_inbound(FROM, TO, gateway.xml("/voice", streamed.format(gateway.url("/action"), "one")))
        assert call.blocked_on == "stream" and [s["parameters"]["token"] for s in call.streams] == ["one"]
        gateway.xml("/again", streamed.format(gateway.url("/action"), "two"))
        update = client.post(f"{calls}/{call.sid}.json",
                             data={"Twiml": f'<Response><Play digits="12"/><Redirect>{gateway.url("/again")}</Redirect></Response>'})
        assert update.status_code == 200
        fake.wait_idle()
        assert stopped == [(call.sid, "replaced")]
        assert [s.get("stopped") for s in call.streams] == ["replaced", None]
        assert call.played_digits == ["12"] and call.stream["parameters"] == {"token": "two"}
        assert call.blocked_on == "stream" and gateway.to("/action") == []
        assert client.post(f"{calls}/{call.sid}.json", data={"Status": "completed"}).status_code == 200
        fake.wait_idle()
        assert stopped[-1] == (call.sid, "ended") and call.streams[-1]["stopped"] == "ended"
        assert fake.errors == []

def _telnyx_client(fake: FakeTelnyx, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=fake.api_url, headers={"Authorization": f"Bearer {key or fake.api_key}"})


def _events(fake: FakeTelnyx) -> list[str]:
    return [d.json["data"]["event_type"] for d in fake.deliveries]


def test_telnyx_rest_errors(telnyx_fake, gateway):
    client = _telnyx_client(telnyx_fake)
    unauthorized = _telnyx_client(telnyx_fake, "wrong").post("/calls", json={})
    assert unauthorized.status_code == 401 and unauthorized.json()["errors"][0]["code"] == "10009"
    missing_to = client.post("/calls", json={"connection_id": "1", "from": FROM})
    assert missing_to.status_code == 422 and missing_to.json()["errors"][0]["source"] == {"pointer": "/to"}
    dial = {"connection_id": "1", "from": FROM, "to": TO, "webhook_url": gateway.url("/telnyx")}
    assert client.post("/calls", json={**dial, "client_state": "not base64!"}).status_code == 422
    dead = client.post("/calls/v3:unknown/actions/speak", json={"payload": "hi", "voice": "female"})
    assert dead.status_code == 422 and dead.json()["errors"][0]["code"] == "90018"
    assert client.get("/calls/v3:unknown").status_code == 404

    created = client.post("/calls", json={**dial, "client_state": "Y2FsbC0x"})
    assert created.status_code == 200
    data = created.json()["data"]
    assert data["call_control_id"].startswith("v3:") and data["is_alive"] is False and data["record_type"] == "call"
    call_id = data["call_control_id"]
    assert client.post(f"/calls/{call_id}/actions/speak", json={"payload": "hi"}).status_code == 422
    assert client.post(f"/calls/{call_id}/actions/fly", json={}).status_code == 404
    telnyx_fake.wait_idle()
    initiated = telnyx_fake.deliveries[0].json
    assert initiated["data"]["event_type"] == "call.initiated" and initiated["meta"]["attempt"] == 1
    payload = initiated["data"]["payload"]
    assert (payload["direction"], payload["state"], payload["client_state"]) == ("outgoing", "bridging", "Y2FsbC0x")


def test_telnyx_official_client_against_fake(telnyx_fake, gateway):
    import telnyx

    client = telnyx.Telnyx(api_key=telnyx_fake.api_key, base_url=telnyx_fake.api_url, max_retries=0)
    dialed = client.calls.dial(connection_id="1", from_=FROM, to=TO, webhook_url=gateway.url("/telnyx"))
    call_id = dialed.data.call_control_id
    assert client.calls.actions.speak(call_id, payload="Hello", voice="female").data.result == "ok"
    assert client.calls.retrieve_status(call_id).data.is_alive is True
    client.calls.actions.hangup(call_id)
    with pytest.raises(telnyx.UnprocessableEntityError):
        client.calls.actions.speak(call_id, payload="Hello", voice="female")
    assert client.calls.retrieve_status(call_id).data.is_alive is False


def test_telnyx_signatures_verify_with_sdk(gateway):
    key = None
    with FakeTelnyx() as fake:
        fake.ring_inbound(FROM, TO, gateway.url("/telnyx"))
        fake.send_event(fake.last_call.call_control_id, "call.unknown_event", foo="bar")
        for delivery in fake.deliveries:
            verify_webhook_signature(delivery.body.decode(), delivery.headers, fake.public_key_b64)
        hit = gateway.hits[0]
        verify_webhook_signature(hit.body.decode(), hit.headers, fake.public_key_b64)  # as the gateway saw it
        pem_key = load_pem_public_key(fake.public_key_pem.encode())
        timestamp = hit.headers["telnyx-timestamp"]
        pem_key.verify(base64.b64decode(hit.headers["telnyx-signature-ed25519"]), f"{timestamp}|".encode() + hit.body)
        key = fake.public_key_b64

        fake.tamper = True
        fake.ring_inbound(FROM, TO, gateway.url("/telnyx"))
        json.loads(fake.deliveries[-1].body)  # still valid JSON, just not what was signed
        with pytest.raises(WebhookVerificationError, match="signature"):
            verify_webhook_signature(fake.deliveries[-1].body.decode(), fake.deliveries[-1].headers, key)
        fake.tamper = False
        for offset in (-301 - 5, 301 + 5):
            fake.timestamp_offset = offset
            fake.ring_inbound(FROM, TO, gateway.url("/telnyx"))
            with pytest.raises(WebhookVerificationError, match="too old or too new"):
                verify_webhook_signature(fake.deliveries[-1].body.decode(), fake.deliveries[-1].headers, key)
        assert fake.errors == []


def test_telnyx_call_flow(telnyx_fake, gateway):
    client = _telnyx_client(telnyx_fake)
    call = telnyx_fake.ring_inbound(FROM, TO, gateway.url("/telnyx"), client_state="c3RhdGU=")
    assert _events(telnyx_fake) == ["call.initiated"]
    assert telnyx_fake.deliveries[0].json["data"]["payload"]["state"] == "parked"
    actions = f"/calls/{call.call_control_id}/actions"
    assert client.post(f"{actions}/answer", json={"command_id": "answer-1"}).json() == {"data": {"result": "ok"}}
    assert client.post(f"{actions}/answer", json={"command_id": "answer-1"}).status_code == 200
    speak = {"payload": "Hello", "voice": "female", "language": "en-US", "command_id": "speak-1"}
    client.post(f"{actions}/speak", json=speak)
    client.post(f"{actions}/speak", json=speak)  # same command_id: ignored
    with pytest.raises(RuntimeError):
        telnyx_fake.say(call.call_control_id, "not transcribing yet")
    client.post(f"{actions}/transcription_start", json={"language": "en"})
    client.post(f"{actions}/send_dtmf", json={"digits": "1#"})
    telnyx_fake.wait_idle()
    assert _events(telnyx_fake) == ["call.initiated", "call.answered", "call.speak.started", "call.speak.ended"]
    assert call.spoken == [speak] and call.transcription_language == "en" and call.dtmf_sent == ["1#"]
    assert [c["duplicate"] for c in call.commands if c["action"] == "speak"] == [False, True]

    telnyx_fake.say(call.call_control_id, "I want a refund")
    telnyx_fake.press(call.call_control_id, "42")
    telnyx_fake.hang_up(call.call_control_id)
    events = [d.json["data"] for d in telnyx_fake.deliveries]
    assert [e["event_type"] for e in events[4:]] == [
        "call.transcription", "call.dtmf.received", "call.dtmf.received", "call.hangup"]
    assert events[4]["payload"]["transcription_data"] == {
        "transcript": "I want a refund", "confidence": 0.93, "is_final": True, "transcription_track": "inbound"}
    assert [e["payload"]["digit"] for e in events[5:7]] == ["4", "2"]
    assert has(events[7]["payload"], {"hangup_cause": "normal_clearing", "hangup_source": "caller"})
    assert {e["payload"]["client_state"] for e in events} == {"c3RhdGU="}
    assert len({e["id"] for e in events}) == len(events)
    assert client.post(f"{actions}/hangup", json={}).json()["errors"][0]["code"] == "90018"
    assert client.get(f"/calls/{call.call_control_id}").json()["data"]["is_alive"] is False

    again = telnyx_fake.redeliver(0)
    assert again.json["meta"]["attempt"] == 2 and again.json["data"]["id"] == events[0]["id"]
    verify_webhook_signature(again.body.decode(), again.headers, telnyx_fake.public_key_b64)


def test_telnyx_outbound_outcomes_and_reject(telnyx_fake, gateway):
    client = _telnyx_client(telnyx_fake)
    dial = {"connection_id": "1", "from": FROM, "to": TO, "webhook_url": gateway.url("/telnyx")}
    answered = client.post("/calls", json=dial).json()["data"]["call_control_id"]
    telnyx_fake.answer(answered)
    busy = client.post("/calls", json=dial).json()["data"]["call_control_id"]
    telnyx_fake.busy(busy)
    unanswered = client.post("/calls", json=dial).json()["data"]["call_control_id"]
    telnyx_fake.no_answer(unanswered)
    inbound = telnyx_fake.ring_inbound(FROM, TO, gateway.url("/telnyx"))
    assert client.post(f"/calls/{inbound.call_control_id}/actions/reject", json={}).status_code == 422
    client.post(f"/calls/{inbound.call_control_id}/actions/reject", json={"cause": "CALL_REJECTED"})
    telnyx_fake.wait_idle()
    hangups = {d.json["data"]["payload"]["call_control_id"]: d.json["data"]["payload"]["hangup_cause"]
               for d in telnyx_fake.deliveries if d.json["data"]["event_type"] == "call.hangup"}
    assert hangups == {busy: "user_busy", unanswered: "no_answer", inbound.call_control_id: "call_rejected"}
    assert telnyx_fake.call(answered).state == "answered"


def test_gateway_may_call_the_api_while_handling_a_webhook(telnyx_fake, gateway):
    answered: list[int] = []

    def on_event(hit: Hit) -> Answer:
        # like a real gateway: answer the inbound call from inside the call.initiated handler
        event = hit.json["data"]
        if event["event_type"] == "call.initiated":
            actions = f"/calls/{event['payload']['call_control_id']}/actions"
            answered.append(_telnyx_client(telnyx_fake).post(f"{actions}/answer", json={}).status_code)
        return 200, "application/json", "{}"

    gateway.answers["/telnyx"] = on_event
    call = telnyx_fake.ring_inbound(FROM, TO, gateway.url("/telnyx"))
    assert answered == [200] and call.state == "answered"
    assert _events(telnyx_fake) == ["call.initiated", "call.answered"]


# --------------------------------------------------------------------------- Plivo


def _plivo_client(fake: FakePlivo, auth: tuple[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=fake.api_url, auth=auth or (fake.auth_id, fake.auth_token))


def _plivo_valid(fake: FakePlivo, hit: Hit, header: str = "X-Plivo-Signature-V3", token: str | None = None) -> bool:
    params = {} if hit.method == "GET" else hit.params
    return validate_v3_signature(hit.method, hit.url, hit.headers["X-Plivo-Signature-V3-Nonce"],
                                 token or fake.auth_token, hit.headers[header], params)


def test_plivo_rest_errors(plivo_fake, gateway):
    client = _plivo_client(plivo_fake)
    unauthorized = _plivo_client(plivo_fake, (plivo_fake.auth_id, "wrong")).post("/Call/", json={})
    assert unauthorized.status_code == 401 and set(unauthorized.json()) == {"api_id", "error"}
    missing = client.post("/Call/", json={"from": FROM, "to": TO})
    assert missing.status_code == 400 and "answer_url" in missing.json()["error"]
    assert client.post("/Call", json={"from": FROM, "to": TO, "answer_url": "http://x/"}).status_code == 404  # no slash
    unknown = client.delete("/Call/00000000-0000-0000-0000-000000000000/")
    assert unknown.status_code == 404 and unknown.json()["error"] == "not found"
    assert client.get("/Call/00000000-0000-0000-0000-000000000000/").status_code == 404

    made = client.post("/Call/", json={"from": FROM, "to": TO, "answer_url": gateway.url("/answer"),
                                       "hangup_url": gateway.url("/hangup")})
    assert made.status_code == 201 and made.json()["message"] == "call fired"
    request_uuid = made.json()["request_uuid"]
    assert client.delete(f"/Request/{request_uuid}/").status_code == 204
    assert client.delete(f"/Request/{request_uuid}/").status_code == 404
    plivo_fake.wait_idle()
    hangup = gateway.to("/hangup")[0].params
    assert has(hangup, {"CallStatus": "cancel", "HangupCause": "ORIGINATOR_CANCEL", "HangupSource": "API Request"})


def test_plivo_official_client_against_fake(plivo_fake, gateway, monkeypatch):
    import plivo
    import plivo.rest.client as plivo_client

    # the SDK has no base-URL option: point its module-level API roots at the fake
    for name in ("PLIVO_API_BASE_URI", "API_VOICE_BASE_URI", "API_VOICE_BASE_URI_FALLBACK_1",
                 "API_VOICE_BASE_URI_FALLBACK_2"):
        monkeypatch.setattr(plivo_client, name, plivo_fake.base_url + "/v1/Account")
    client = plivo.RestClient(plivo_fake.auth_id, plivo_fake.auth_token)
    answer_url = gateway.xml("/answer", '<Response><Wait length="60"/></Response>')
    made = client.calls.create(from_=FROM, to_=TO, answer_url=answer_url)
    call = plivo_fake.answer(made.request_uuid)
    assert call.blocked_on == "wait"
    gateway.xml("/moved", "<Response><Speak>Moved</Speak></Response>")
    client.calls.transfer(call.call_uuid, legs="aleg", aleg_url=gateway.url("/moved"), aleg_method="POST")
    plivo_fake.wait_idle()
    assert call.said[-1]["text"] == "Moved" and call.status == "completed"
    with pytest.raises(plivo.exceptions.ResourceNotFoundError):
        client.calls.hangup(call.call_uuid)


def test_plivo_signatures_validate_with_sdk(plivo_fake, gateway):
    gateway.xml("/answer", '<Response><GetInput action="/gi" inputType="speech"/></Response>')
    gateway.xml("/gi", '<Response><Wait length="300"/></Response>')
    call = plivo_fake.ring_inbound(FROM, TO, gateway.url("/answer?flow=answer"), gateway.url("/hangup"))
    plivo_fake.say(call.call_uuid, "café crème, s'il vous plaît")
    plivo_fake.extra_signatures = ["bogus+signature=", "another="]
    other = plivo_fake.ring_inbound(FROM, TO, gateway.url("/answer"), gateway.url("/hangup"), answer_method="GET")
    plivo_fake.hang_up(other.call_uuid)
    assert len(gateway.hits) == 4
    for hit in gateway.hits:
        assert _plivo_valid(plivo_fake, hit) and _plivo_valid(plivo_fake, hit, "X-Plivo-Signature-Ma-V3")
        assert not _plivo_valid(plivo_fake, hit, token="wrong-token")
    assert gateway.hits[1].params["Speech"] == "café crème, s'il vous plaît"
    assert gateway.hits[2].method == "GET" and gateway.hits[3].headers["X-Plivo-Signature-V3"].count(",") == 2
    assert len({hit.headers["X-Plivo-Signature-V3-Nonce"] for hit in gateway.hits}) == 4

    plivo_fake.signing_token = "not-the-token"
    plivo_fake.hang_up(call.call_uuid)
    assert not _plivo_valid(plivo_fake, gateway.hits[-1])

    plivo_fake.signing_token, plivo_fake.use_v2 = None, True
    v2 = plivo_fake.ring_inbound(FROM, TO, gateway.url("/answer?x=1"))
    hit = gateway.hits[-1]
    assert validate_signature(hit.url, hit.headers["X-Plivo-Signature-V2-Nonce"], hit.headers["X-Plivo-Signature-V2"],
                              plivo_fake.auth_token)
    assert "X-Plivo-Signature-V3" not in hit.headers and v2.status == "in-progress"


def test_plivo_get_input_transfer_and_hangup(plivo_fake, gateway):
    client = _plivo_client(plivo_fake)
    gateway.xml("/answer", (
        '<Response><GetInput action="/gi" method="POST" inputType="speech" redirect="true" language="en-US" '
        'executionTimeout="30" speechEndTimeout="1"><Speak>Hello</Speak></GetInput><Speak>never</Speak></Response>'))
    gateway.xml("/gi", '<Response><Speak language="en-GB">Got it</Speak><Wait length="300"/></Response>')
    call = plivo_fake.ring_inbound(FROM, TO, gateway.url("/answer"), gateway.url("/hangup"))
    start = gateway.to("/answer")[0].params
    assert (start["Event"], start["CallStatus"], start["Direction"], start["CallUUID"]) == (
        "StartApp", "in-progress", "inbound", call.call_uuid)
    assert call.get_input["action"] == gateway.url("/gi") and call.get_input["speechEndTimeout"] == "1"
    with pytest.raises(RuntimeError):
        plivo_fake.press(call.call_uuid, "1")

    plivo_fake.say(call.call_uuid, "book a table")
    result = gateway.to("/gi")[0].params
    assert has(result, {"InputType": "speech", "Speech": "book a table", "SpeechConfidenceScore": "0.9", "Digits": ""})
    assert call.said == [{"text": "Hello", "voice": "WOMAN", "language": "en-US"},
                         {"text": "Got it", "voice": "WOMAN", "language": "en-GB"}]
    assert call.blocked_on == "wait" and call.status == "in-progress"

    live = client.get(f"/Call/{call.call_uuid}/").json()
    assert live["call_status"] == "in-progress" and live["call_uuid"] == call.call_uuid
    listen = gateway.xml("/listen", '<Response><GetInput action="/heard" inputType="dtmf speech" redirect="false"/>'
                                    '<Wait length="300"/></Response>')
    moved = client.post(f"/Call/{call.call_uuid}/", json={"legs": "aleg", "aleg_url": listen, "aleg_method": "POST"})
    assert moved.status_code == 202 and moved.json()["message"] == "call transferred"
    plivo_fake.wait_idle()
    assert gateway.to("/listen")[0].params["Event"] == "Transfer" and call.get_input["redirect"] == "false"
    plivo_fake.press(call.call_uuid, "12#")
    assert has(gateway.to("/heard")[0].params, {"InputType": "dtmf", "Digits": "12"})
    assert call.blocked_on == "wait"  # redirect="false": the document went on to its <Wait>

    assert client.post(f"/Call/{call.call_uuid}/DTMF/", json={"digits": "9", "leg": "aleg"}).status_code == 202
    assert client.post(f"/Call/{call.call_uuid}/Speak/", json={"text": "hi"}).json()["message"] == "speak started"
    assert client.delete(f"/Call/{call.call_uuid}/").status_code == 204
    plivo_fake.wait_idle()
    hangup = gateway.to("/hangup")[0].params
    assert has(hangup, {"Event": "Hangup", "CallStatus": "completed", "HangupCause": "NORMAL_CLEARING",
                           "HangupCauseCode": "4000", "HangupSource": "API Request"})
    assert call.dtmf_sent == ["9"] and call.speak_requests == [{"text": "hi"}]
    assert client.get(f"/Call/{call.call_uuid}/").status_code == 404  # live-call lookup: ended calls are gone


def test_plivo_outbound_answer_outcomes_and_errors(plivo_fake, gateway):
    client = _plivo_client(plivo_fake)
    body = {"from": FROM, "to": TO, "answer_url": gateway.xml("/answer", "<Response><Hangup/></Response>"),
            "hangup_url": gateway.url("/hangup"), "ring_url": gateway.url("/ring")}
    answered = plivo_fake.answer(client.post("/Call/", json=body).json()["request_uuid"])
    ring, start = gateway.to("/ring")[0].params, gateway.to("/answer")[0].params
    assert ring["Event"] == "Ring" and ring["CallStatus"] == "ringing"
    assert has(start, {"Event": "StartApp", "CallStatus": "in-progress", "Direction": "outbound",
                          "CallUUID": answered.call_uuid, "RequestUUID": answered.request_uuid,
                          "ALegUUID": answered.call_uuid, "ALegRequestUUID": answered.request_uuid})
    assert answered.call_uuid != answered.request_uuid
    assert gateway.to("/hangup")[0].params["HangupSource"] == "Answer XML"

    plivo_fake.no_answer(client.post("/Call/", json=body).json()["request_uuid"])
    plivo_fake.busy(client.post("/Call/", json=body).json()["request_uuid"])
    outcomes = [(h.params["CallStatus"], h.params["HangupCause"]) for h in gateway.to("/hangup")[1:]]
    assert outcomes == [("no-answer", "NO_ANSWER"), ("busy", "USER_BUSY")]

    boom = client.post("/Call/", json={**body, "answer_url": gateway.xml("/boom", "", 500)})
    failing = plivo_fake.answer(boom.json()["request_uuid"])
    assert failing.status == "completed" and "500" in failing.error
    assert gateway.to("/hangup")[-1].params["HangupSource"] == "Error"


# --------------------------------------------------------------------------- transfers


def test_twilio_dial_from_sdk_twiml_reports_answer_and_end(twilio_fake, gateway):
    from twilio.twiml.voice_response import Dial, VoiceResponse

    document = VoiceResponse()
    dial = Dial(action="/dialed", timeout=30)
    dial.number("+15550002222", status_callback="/answered", status_callback_event="answered")
    document.append(dial)
    gateway.xml("/voice", str(document))
    gateway.xml("/dialed", "<Response><Say>The desk hung up.</Say><Hangup/></Response>")
    gateway.xml("/answered", "<Response/>")

    call = twilio_fake.ring_inbound(FROM, TO, gateway.url("/voice"))
    assert call.blocked_on == "dial" and call.dial["target"] == "+15550002222" and call.dial["noun"] == "Number"
    twilio_fake.dial_answer(call.sid)
    (answered,) = gateway.to("/answered")
    assert has(answered.params, {"CallStatus": "in-progress", "ParentCallSid": call.sid, "Direction": "outbound-dial",
                                 "To": "+15550002222"})
    assert answered.params["CallSid"] == call.dial["child_sid"] != call.sid
    assert RequestValidator(twilio_fake.auth_token).validate(answered.url, answered.params, answered.headers["X-Twilio-Signature"])
    twilio_fake.dial_end(call.sid, "completed")
    (dialed,) = gateway.to("/dialed")
    assert has(dialed.params, {"DialCallStatus": "completed", "DialCallSid": call.dials[-1]["child_sid"], "CallSid": call.sid})
    assert call.said[-1]["text"] == "The desk hung up." and call.status == "completed"


def test_twilio_conference_rooms(twilio_fake, gateway):
    gateway.xml("/room", '<Response><Dial><Conference startConferenceOnEnter="false">room-1</Conference></Dial></Response>')
    gateway.xml("/moved", "<Response><Say>Moved</Say></Response>")
    first = twilio_fake.ring_inbound(FROM, TO, gateway.url("/room"))
    second = twilio_fake.ring_inbound("+15551230003", TO, gateway.url("/room"))
    assert first.blocked_on == second.blocked_on == "conference"
    assert twilio_fake.conference("room-1") == [first.sid, second.sid]
    with pytest.raises(RuntimeError):
        twilio_fake.dial_end(first.sid)  # a room is left by new TwiML or a hang-up, not dial_end
    httpx.post(f"{twilio_fake.api_url}/Accounts/{twilio_fake.account_sid}/Calls/{first.sid}.json",
               data={"Url": gateway.url("/moved")}, auth=(twilio_fake.account_sid, twilio_fake.auth_token))
    twilio_fake.wait_idle()
    assert twilio_fake.conference("room-1") == [second.sid]
    twilio_fake.hang_up(second.sid)
    assert twilio_fake.conference("room-1") == []


def test_telnyx_transfer_with_the_official_client(telnyx_fake, gateway):
    import telnyx

    client = telnyx.Telnyx(api_key=telnyx_fake.api_key, base_url=telnyx_fake.api_url, max_retries=0)
    caller = telnyx_fake.ring_inbound(FROM, TO, gateway.url("/telnyx"), client_state="Y2FsbGVy")
    client.calls.actions.answer(caller.call_control_id)
    with pytest.raises(telnyx.UnprocessableEntityError):
        client.calls.actions.transfer(caller.call_control_id, to="front desk")
    state = base64.b64encode(b"transfer:1:2").decode()
    client.calls.actions.transfer(caller.call_control_id, to="sip:desk@pbx.example.com", from_=TO,
                                  target_leg_client_state=state, webhook_url=gateway.url("/leg"))
    telnyx_fake.wait_idle()
    (leg_id,) = caller.transfers
    leg = telnyx_fake.call(leg_id)
    assert (leg.to, leg.from_, leg.direction, leg.client_state) == ("sip:desk@pbx.example.com", TO, "outgoing", state)
    assert [hit.json["data"]["event_type"] for hit in gateway.to("/leg")] == ["call.initiated"]
    telnyx_fake.answer(leg_id)
    telnyx_fake.wait_idle()
    assert [hit.json["data"]["event_type"] for hit in gateway.to("/leg")] == ["call.initiated", "call.answered", "call.bridged"]
    assert {hit.json["data"]["payload"]["client_state"] for hit in gateway.to("/leg")} == {state}
    assert _events(telnyx_fake)[-1] == "call.bridged"  # the caller's leg hears it too
    assert telnyx_fake.deliveries[-1].json["data"]["payload"]["client_state"] == "Y2FsbGVy"

    # Another transfer that nobody answers: the new leg hangs up, the caller's leg stays up.
    client.calls.actions.transfer(caller.call_control_id, to="+15550002222", target_leg_client_state=state)
    telnyx_fake.wait_idle()
    telnyx_fake.no_answer(caller.transfers[-1])
    assert telnyx_fake.call(caller.transfers[-1]).hangup_cause == "no_answer" and caller.is_alive


def test_plivo_dial_from_sdk_xml_reports_answer_and_end(plivo_fake, gateway):
    from plivo import plivoxml

    document = plivoxml.ResponseElement()
    dial = plivoxml.DialElement(action=gateway.url("/dialed"), callback_url=gateway.url("/progress"))
    dial.add(plivoxml.UserElement("sip:desk@pbx.example.com"))
    document.add(dial)
    gateway.xml("/answer", document.to_string())
    gateway.xml("/dialed", "<Response><Speak>Nobody is free.</Speak><Hangup/></Response>")
    call = plivo_fake.ring_inbound(FROM, TO, gateway.url("/answer"))
    assert call.blocked_on == "dial" and call.dial["targets"] == [("User", "sip:desk@pbx.example.com")]
    plivo_fake.dial_answer(call.call_uuid)
    (progress,) = gateway.to("/progress")
    assert has(progress.params, {"DialAction": "answer", "DialBLegStatus": "answer", "CallUUID": call.call_uuid})
    assert _plivo_valid(plivo_fake, progress)
    plivo_fake.dial_end(call.call_uuid, "busy")
    (dialed,) = gateway.to("/dialed")
    assert has(dialed.params, {"DialStatus": "busy", "DialALegUUID": call.call_uuid})
    assert call.said[-1]["text"] == "Nobody is free." and call.ended


def test_plivo_conference_rooms(plivo_fake, gateway):
    gateway.xml("/room", '<Response><Conference startConferenceOnEnter="false">room-2</Conference></Response>')
    gateway.xml("/moved", "<Response><Speak>Moved</Speak></Response>")
    first = plivo_fake.ring_inbound(FROM, TO, gateway.url("/room"))
    second = plivo_fake.ring_inbound("+15551230003", TO, gateway.url("/room"))
    assert first.blocked_on == second.blocked_on == "conference" and first.conference["startConferenceOnEnter"] == "false"
    assert plivo_fake.conference_members("room-2") == [first.call_uuid, second.call_uuid]
    httpx.post(f"{plivo_fake.api_url}/Call/{first.call_uuid}/", json={"legs": "aleg", "aleg_url": gateway.url("/moved")},
               auth=(plivo_fake.auth_id, plivo_fake.auth_token))
    plivo_fake.wait_idle()
    assert plivo_fake.conference_members("room-2") == [second.call_uuid] and first.said[-1]["text"] == "Moved"
    plivo_fake.hang_up(second.call_uuid)
    assert plivo_fake.conference_members("room-2") == []
