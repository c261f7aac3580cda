"""Whole calls through each carrier's local fake and the real gateway on a socket.

Each test drives a fake carrier (REST API + signed webhooks, tests/fakes/) against the live
gateway (Daphne, tests/live_gateway.py): an outbound notify call and an inbound conversation with
speech, caller DTMF, gateway DTMF and hang-up, asserting what the gateway sent field by field.
"""
from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import pytest

from calls.models import Call
from calls.services import call_continue, call_end, call_initiate, call_send_dtmf, deadlines_sweep
from tests.fakes import FakePlivo, FakeTelnyx, FakeTwilio
from tests.waiting import wait_until

FROM = "+15550000001"
CALLER = "+15557654321"


def carrier_config(provider: str, gateway: str, block: dict, **extra) -> dict:
    return {
        "enabled": True,
        "provider": provider,
        "fromNumber": FROM,
        "publicUrl": f"{gateway}/voice/webhook",
        "inboundPolicy": "open",
        "inboundGreeting": "Thanks for calling the clinic.",
        "maxConcurrentCalls": 5,
        "outbound": {"notifyHangupDelaySec": 1},
        provider: block,
        **extra,
    }


def carrier_block(provider: str, fake) -> dict:
    """The carrier's config block that points the gateway at `fake` (its credentials and API address)."""
    if provider == "twilio":
        return {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url}
    if provider == "telnyx":
        return {"apiKey": fake.api_key, "connectionId": "conn-123", "publicKey": fake.public_key_b64,
                "baseUrl": fake.api_url}
    return {"authId": fake.auth_id, "authToken": fake.auth_token, "baseUrl": fake.base_url + "/v1"}


@contextmanager
def configured_carrier(provider: str, gateway: str, configure, **extra) -> Iterator:
    """The carrier's fake, running, with the gateway configured for it (carrier_config's keys plus `extra`);
    anything the fake found wrong in what the gateway sent fails the test at the end."""
    if provider == "telnyx":
        fake = FakeTelnyx(webhook_url=f"{gateway}/voice/webhook")
    else:
        fake = {"twilio": FakeTwilio, "plivo": FakePlivo}[provider]()
    with fake:
        configure(carrier_config(provider, gateway, carrier_block(provider, fake), **extra))
        yield fake
        assert not fake.errors


class Background:
    """Run a blocking service call (an agent's turn) in a thread; result() returns or raises."""

    def __init__(self, func) -> None:
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func) -> None:
        from django.db import connection

        try:
            self.value = func()
        except Exception as exc:  # handed to the test
            self.error = exc
        finally:
            connection.close()

    def result(self, timeout: float = 10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the turn did not finish"
        if self.error:
            raise self.error
        return self.value


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def caller_digits(call: Call) -> list[str]:
    return [event.payload["digits"] for event in call.events.filter(type="call.dtmf")]


def transcript(call: Call) -> list[tuple[str, str]]:
    return list(call.transcript_entries.values_list("speaker", "text"))


# --- Twilio ---------------------------------------------------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure) as fake:
        yield fake


def test_twilio_outbound_notify_call(twilio, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify")

    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert create.headers["authorization"] == "Basic " + base64.b64encode(
        f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
    assert create.form["To"] == ["+15550001111"] and create.form["From"] == [FROM]
    assert create.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert create.form["Timeout"] == ["30"]
    assert query_of(create.form["StatusCallback"][0]) == {"callId": str(call.pk), "type": "status"}
    assert "Url" not in create.form  # the message travels inline, so it never waits on a fetch
    assert create.form["Twiml"][0].endswith(
        '<Response><Say voice="Polly.Joanna" language="en-US">Your table is ready.</Say>'
        '<Pause length="1"/><Hangup/></Response>')
    call.refresh_from_db()
    sid = call.provider_call_id
    assert sid == twilio.last_call.sid

    twilio.answer(sid)
    twilio.wait_idle()
    fake_call = twilio.call(sid)
    assert [said["text"] for said in fake_call.said] == ["Your table is ready."]
    assert fake_call.status == "completed"
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert transcript(call) == [("bot", "Your table is ready.")]
    assert all(d.status == 200 for d in twilio.deliveries)
    # No live TwiML update and no hang-up request: the inline document did everything.
    assert len(twilio.requests) == 1


def test_twilio_inbound_conversation(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.sid).first())
    assert call.direction == "inbound" and call.from_number == CALLER
    # The greeting is in the answer to the ring itself, then the caller is listened to.
    assert [said["text"] for said in fake_call.said] == ["Thanks for calling the clinic."]
    assert fake_call.gather is not None and "speech" in fake_call.gather["input"]
    wait_until(lambda: transcript(Call.objects.get(pk=call.pk)) == [("bot", "Thanks for calling the clinic.")])

    turn = Background(lambda: call_continue(call_id=str(call.pk), prompt="What day suits you?"))
    wait_until(lambda: twilio.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$"))
    twilio.wait_idle()
    update = twilio.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$")[0]
    document = update.form["Twiml"][0]
    assert '<Say voice="Polly.Joanna" language="en-US">What day suits you?</Say>' in document
    action = query_of(fake_call.gather["action"])
    assert action["callId"] == str(call.pk) and action["turnToken"]
    assert said_texts(fake_call)[-1] == "What day suits you?"
    # The caller answers after hearing the prompt, which is recorded once Twilio took the request.
    wait_until(lambda: transcript(Call.objects.get(pk=call.pk))[-1] == ("bot", "What day suits you?"),
               "the prompt in the transcript")

    twilio.say(fake_call.sid, "Tuesday morning please", confidence=0.87)
    assert turn.result() == "Tuesday morning please"

    twilio.press(fake_call.sid, "5")
    call_send_dtmf(call_id=str(call.pk), digits="12")
    twilio.wait_idle()
    assert fake_call.played_digits[-1] == "12"

    call_end(call_id=str(call.pk))
    twilio.wait_idle()
    hangup = twilio.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$")[-1]
    assert hangup.form == {"Status": ["completed"]}
    assert twilio.call(fake_call.sid).ended
    call.refresh_from_db()
    assert call.state == "hangup-bot"
    assert transcript(call) == [
        ("bot", "Thanks for calling the clinic."),
        ("bot", "What day suits you?"),
        ("user", "Tuesday morning please"),
    ]
    assert caller_digits(call) == ["5"]
    assert all(d.status == 200 for d in twilio.deliveries)


def said_texts(fake_call) -> list[str]:
    return [said["text"] for said in fake_call.said]


# --- Telnyx ---------------------------------------------------------------------------------


@pytest.fixture
def telnyx(live_gateway, configure):
    with configured_carrier("telnyx", live_gateway, configure) as fake:
        yield fake


def test_telnyx_outbound_notify_call(telnyx, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify")
    dial = telnyx.requests_to("POST", r"/v2/calls$")[0]
    assert dial.headers["authorization"] == f"Bearer {telnyx.api_key}"
    assert dial.json == {
        "connection_id": "conn-123", "to": "+15550001111", "from": FROM,
        "webhook_url": f"{live_gateway}/voice/webhook", "webhook_url_method": "POST",
        "client_state": base64.b64encode(str(call.pk).encode()).decode(), "timeout_secs": 30,
    }
    call.refresh_from_db()
    control_id = call.provider_call_id
    telnyx.wait_idle()

    telnyx.answer(control_id)
    telnyx.wait_idle()
    speak = telnyx.requests_to("POST", r"/actions/speak$")[0]
    assert {k: v for k, v in speak.json.items() if k != "command_id"} == {
        "payload": "Your table is ready.", "voice": "female", "language": "en-US",
    }
    assert speak.json["command_id"]
    call.refresh_from_db()
    assert transcript(call) == [("bot", "Your table is ready.")]
    # The hang-up waits for the end of playback (call.speak.ended), then the configured delay.
    assert call.notify_hangup_at is not None
    wait_until(lambda: deadlines_sweep() >= 1, "the sweep to hang up once the delay has passed", interval=0.05)
    telnyx.wait_idle()
    assert telnyx.requests_to("POST", r"/actions/hangup$")
    call.refresh_from_db()
    assert call.state == "hangup-bot"
    assert all(d.status == 200 for d in telnyx.deliveries)


def test_telnyx_inbound_conversation(telnyx, live_gateway):
    fake_call = telnyx.ring_inbound(CALLER, FROM)
    telnyx.wait_idle()
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.call_control_id).first())
    answer = telnyx.requests_to("POST", r"/actions/answer$")[0]
    assert answer.json == {"command_id": f"voicecall-answer-{call.pk}",
                           "client_state": base64.b64encode(str(call.pk).encode()).decode()}
    wait_until(lambda: fake_call.transcription)
    # Answered by command, then greeted with speak, then transcription starts.
    assert [body["payload"] for body in fake_call.spoken] == ["Thanks for calling the clinic."]
    assert [c["action"] for c in fake_call.commands][:3] == ["answer", "speak", "transcription_start"]

    turn = Background(lambda: call_continue(call_id=str(call.pk), prompt="What day suits you?"))
    wait_until(lambda: len(telnyx.requests_to("POST", r"/actions/transcription_start$")) >= 2)
    telnyx.wait_idle()
    telnyx.say(fake_call.call_control_id, "Tuesday morning please")
    assert turn.result() == "Tuesday morning please"
    assert [body["payload"] for body in fake_call.spoken][-1] == "What day suits you?"
    assert telnyx.requests_to("POST", r"/actions/transcription_stop$")
    start = telnyx.requests_to("POST", r"/actions/transcription_start$")[-1]
    assert start.json["language"] == "en"

    telnyx.press(fake_call.call_control_id, "5")
    call_send_dtmf(call_id=str(call.pk), digits="1,2")
    assert telnyx.requests_to("POST", r"/actions/send_dtmf$")[0].json["digits"] == "1w2"

    call_end(call_id=str(call.pk))
    telnyx.wait_idle()
    assert not telnyx.call(fake_call.call_control_id).is_alive
    call.refresh_from_db()
    assert call.state == "hangup-bot"
    assert transcript(call) == [
        ("bot", "Thanks for calling the clinic."),
        ("bot", "What day suits you?"),
        ("user", "Tuesday morning please"),
    ]
    assert caller_digits(call) == ["5"]
    assert all(d.status == 200 for d in telnyx.deliveries)


# --- Plivo ----------------------------------------------------------------------------------


@pytest.fixture
def plivo(live_gateway, configure):
    with configured_carrier("plivo", live_gateway, configure) as fake:
        yield fake


def test_plivo_outbound_notify_call(plivo, live_gateway):
    call = call_initiate(to="+15550001111", message="Your table is ready.", mode="notify")
    create = plivo.requests_to("POST", rf"/v1/Account/{plivo.auth_id}/Call/$")[0]
    body = create.json
    assert (body["from"], body["to"], body["answer_method"], body["hangup_method"], body["hangup_on_ring"]) == (
        FROM, "+15550001111", "POST", "POST", 30)
    assert query_of(body["answer_url"]) == {"provider": "plivo", "callId": str(call.pk), "flow": "answer"}
    assert query_of(body["hangup_url"]) == {"provider": "plivo", "callId": str(call.pk), "flow": "hangup"}
    call.refresh_from_db()
    request_uuid = call.provider_call_id

    plivo.answer(request_uuid)
    plivo.wait_idle()
    fake_call = plivo.call(request_uuid)
    assert [s["text"] for s in fake_call.said] == ["Your table is ready."]
    assert fake_call.ended
    call.refresh_from_db()
    assert call.provider_call_id == fake_call.call_uuid  # re-keyed from the request UUID
    assert (call.state, call.end_reason) == ("completed", "completed")
    assert transcript(call) == [("bot", "Your table is ready.")]
    assert all(d.status == 200 for d in plivo.deliveries)


def test_plivo_inbound_conversation(plivo, live_gateway):
    fake_call = plivo.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook",
                                   hangup_url=f"{live_gateway}/voice/webhook?flow=hangup")
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.call_uuid).first())
    assert [s["text"] for s in fake_call.said] == ["Thanks for calling the clinic."]
    assert fake_call.get_input is not None

    turn = Background(lambda: call_continue(call_id=str(call.pk), prompt="What day suits you?"))
    wait_until(lambda: plivo.requests_to("POST", rf"/Call/{fake_call.call_uuid}/$"))
    plivo.wait_idle()
    transfer = plivo.requests_to("POST", rf"/Call/{fake_call.call_uuid}/$")[0]
    assert transfer.json["legs"] == "aleg" and transfer.json["aleg_method"] == "POST"
    transfer_query = query_of(transfer.json["aleg_url"])
    assert transfer_query["flow"] == "xml-listen" and transfer_query["callId"] == str(call.pk) and transfer_query["doc"]
    wait_until(lambda: [s["text"] for s in fake_call.said][-1] == "What day suits you?")
    assert query_of(fake_call.get_input["action"])["turnToken"]

    plivo.say(fake_call.call_uuid, "Tuesday morning please")
    assert turn.result() == "Tuesday morning please"

    plivo.press(fake_call.call_uuid, "5")
    call_send_dtmf(call_id=str(call.pk), digits="12")
    assert plivo.requests_to("POST", r"/DTMF/$")[0].json == {"digits": "12", "leg": "aleg"}

    call_end(call_id=str(call.pk))
    plivo.wait_idle()
    assert plivo.requests_to("DELETE", rf"/Call/{fake_call.call_uuid}/$")
    assert plivo.call(fake_call.call_uuid).ended
    call.refresh_from_db()
    assert call.state == "hangup-bot"
    assert transcript(call) == [
        ("bot", "Thanks for calling the clinic."),
        ("bot", "What day suits you?"),
        ("user", "Tuesday morning please"),
    ]
    assert caller_digits(call) == ["5"]
    assert all(d.status == 200 for d in plivo.deliveries)
