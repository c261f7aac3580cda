"""The recording consent announcement (recording.consentMessage): said first on every recorded call.

It is added once, to the call's initial message when the call is created (calls/call_options.py,
first_words), so every path that says a call's first words says it first: the dial's inline
TwiML (Twilio notify), the answer document (Twilio, Plivo), the greeting spoken by command
(Telnyx) and, on streamed calls, the greeting on the media stream (tests/calls/test_consent_stream.py).
Calls through each carrier's fake and the real gateway.
"""
from __future__ import annotations

import pytest

from calls.call_options import consent_first, first_words
from calls.models import Call
from calls.services import call_initiate
from core.config.schema import VoiceCallConfig
from tests.providers.carriers.test_carriers_e2e import CALLER, FROM, configured_carrier, said_texts, transcript
from tests.waiting import wait_until

CONSENT = "This call is recorded for quality."
GREETING = "Thanks for calling the clinic."
MESSAGE = "Your table is ready."
RECORDED = {"local": True, "consentMessage": CONSENT}


def config(**fields) -> VoiceCallConfig:
    return VoiceCallConfig.model_validate({"provider": "mock", **fields})


def test_the_consent_goes_first_only_on_recorded_calls_that_have_one():
    announced = config(recording={"consentMessage": f"  {CONSENT} "})
    assert first_words(announced, GREETING, recorded=True) == f"{CONSENT} {GREETING}"
    assert first_words(announced, "", recorded=True) == CONSENT  # a call with nothing to say still announces it
    assert first_words(announced, GREETING, recorded=False) == GREETING
    assert first_words(config(), GREETING, recorded=True) == GREETING  # no consent message configured
    assert first_words(config(recording={"consentMessage": "  "}), GREETING, recorded=True) == GREETING
    assert consent_first(announced, f"{CONSENT} {GREETING}") and not consent_first(announced, GREETING)
    assert not consent_first(config(), GREETING)


@pytest.mark.django_db
def test_an_outbound_call_recorded_by_request_or_config_keeps_the_consent_with_its_message(configure):
    configure({"provider": "mock", "fromNumber": FROM, "maxConcurrentCalls": 5, "recording": {"consentMessage": CONSENT}})
    recorded = call_initiate(to="+15550001111", message=MESSAGE, mode="notify", record=True, wait=0)
    plain = call_initiate(to="+15550001112", message=MESSAGE, mode="notify", wait=0)
    silent = call_initiate(to="+15550001113", mode="conversation", record=True, wait=0)
    assert recorded.record_carrier and recorded.initial_message == f"{CONSENT} {MESSAGE}"
    assert not plain.record_carrier and plain.initial_message == MESSAGE
    assert silent.initial_message == CONSENT


# --- Twilio: inline TwiML with the dial, and the answer document --------------------------------------


@pytest.fixture
def twilio(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure, recording=RECORDED) as fake:
        yield fake


def test_twilio_a_recorded_notify_call_says_the_consent_first_in_the_dials_twiml(twilio):
    call = call_initiate(to="+15550001111", message=MESSAGE, mode="notify")
    create = twilio.requests_to("POST", r"/Calls\.json$")[0]
    assert f">{CONSENT} {MESSAGE}</Say>" in create.form["Twiml"][0]
    call.refresh_from_db()
    twilio.answer(call.provider_call_id)
    twilio.wait_idle()
    assert said_texts(twilio.call(call.provider_call_id)) == [f"{CONSENT} {MESSAGE}"]
    call.refresh_from_db()
    assert transcript(call) == [("bot", f"{CONSENT} {MESSAGE}")]


def test_twilio_a_recorded_inbound_call_hears_the_consent_before_the_greeting(twilio, live_gateway):
    fake_call = twilio.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.sid).first())
    assert said_texts(fake_call) == [f"{CONSENT} {GREETING}"]
    wait_until(lambda: transcript(Call.objects.get(pk=call.pk)) == [("bot", f"{CONSENT} {GREETING}")])


def test_twilio_a_call_not_recorded_hears_no_consent(live_gateway, configure):
    with configured_carrier("twilio", live_gateway, configure, recording={"consentMessage": CONSENT}) as fake:
        fake_call = fake.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook")
        wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.sid).exists())
        assert said_texts(fake_call) == [GREETING]


# --- Telnyx: the greeting service speaks it by command ---------------------------------------------


@pytest.fixture
def telnyx(live_gateway, configure):
    with configured_carrier("telnyx", live_gateway, configure, recording=RECORDED) as fake:
        yield fake


def test_telnyx_a_recorded_inbound_call_is_greeted_with_the_consent_first(telnyx):
    fake_call = telnyx.ring_inbound(CALLER, FROM)
    telnyx.wait_idle()
    wait_until(lambda: fake_call.spoken, "the greeting spoken by command")
    assert [body["payload"] for body in fake_call.spoken] == [f"{CONSENT} {GREETING}"]


def test_telnyx_a_recorded_notify_call_speaks_the_consent_first(telnyx):
    call = call_initiate(to="+15550001111", message=MESSAGE, mode="notify")
    call.refresh_from_db()
    telnyx.wait_idle()
    telnyx.answer(call.provider_call_id)
    telnyx.wait_idle()
    speak = telnyx.requests_to("POST", r"/actions/speak$")[0]
    assert speak.json["payload"] == f"{CONSENT} {MESSAGE}"


# --- Plivo: the answer XML -------------------------------------------------------------------------


@pytest.fixture
def plivo(live_gateway, configure):
    with configured_carrier("plivo", live_gateway, configure, recording=RECORDED) as fake:
        yield fake


def test_plivo_recorded_calls_say_the_consent_first_inbound_and_outbound(plivo, live_gateway):
    fake_call = plivo.ring_inbound(CALLER, FROM, f"{live_gateway}/voice/webhook",
                                   hangup_url=f"{live_gateway}/voice/webhook?flow=hangup")
    wait_until(lambda: Call.objects.filter(provider_call_id=fake_call.call_uuid).exists())
    assert [s["text"] for s in fake_call.said] == [f"{CONSENT} {GREETING}"]
    call = call_initiate(to="+15550001111", message=MESSAGE, mode="notify")
    call.refresh_from_db()
    plivo.answer(call.provider_call_id)
    plivo.wait_idle()
    assert [s["text"] for s in plivo.call(call.provider_call_id).said] == [f"{CONSENT} {MESSAGE}"]
