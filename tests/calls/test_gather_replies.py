"""Automatic replies on the carriers' speech-gather path (no media stream), through each fake carrier.

The webhook carrying the caller's words is answered at once; the reply is made in the background
by the llm responder (a slow local fake) and spoken through the carrier's live-call API, after
which the caller is listened to again.
"""
from __future__ import annotations

import time

import pytest

from calls import background
from calls.models import Call, ReplyStatus, ReplyTurn
from tests.fakes.ai.llm import FakeChatCompletions
from tests.fakes.plivo import FakePlivo
from tests.fakes.telnyx import FakeTelnyx
from tests.fakes.twilio import FakeTwilio
from tests.providers.carriers.test_carriers_e2e import CALLER, FROM, carrier_config, transcript
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "sk-fake-llm"
GREETING = "Thanks for calling the clinic."
SLOW_SECONDS = 2.5  # the model's reply takes this long; the webhook answer must come well before


def numbered_reply(body: dict) -> str:
    turn = sum(1 for m in body["messages"] if m["role"] == "user")
    return '{"spoken": "Reply number %d."}' % turn


class Carrier:
    """One fake carrier, driven the same way whichever it is."""

    def __init__(self, name: str, fake, live_gateway: str) -> None:
        self.name, self.fake, self.gateway = name, fake, live_gateway

    def block(self) -> dict:
        fake = self.fake
        return {
            "twilio": lambda: {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url},
            "telnyx": lambda: {"apiKey": fake.api_key, "connectionId": "conn-123",
                               "publicKey": fake.public_key_b64, "baseUrl": fake.api_url},
            "plivo": lambda: {"authId": fake.auth_id, "authToken": fake.auth_token, "baseUrl": fake.base_url + "/v1"},
        }[self.name]()

    def ring(self):
        if self.name == "twilio":
            return self.fake.ring_inbound(CALLER, FROM, f"{self.gateway}/voice/webhook")
        if self.name == "telnyx":
            return self.fake.ring_inbound(CALLER, FROM)
        return self.fake.ring_inbound(CALLER, FROM, f"{self.gateway}/voice/webhook",
                                      hangup_url=f"{self.gateway}/voice/webhook?flow=hangup")

    def call_id(self, fake_call) -> str:
        return {"twilio": "sid", "telnyx": "call_control_id", "plivo": "call_uuid"}[self.name]

    def said(self, fake_call) -> list[str]:
        if self.name == "telnyx":
            return [body["payload"] for body in fake_call.spoken]
        return [said["text"] for said in fake_call.said]

    def say(self, fake_call, text: str) -> None:
        self.fake.say(getattr(fake_call, self.call_id(fake_call)), text)


@pytest.fixture(params=["twilio", "telnyx", "plivo"])
def carrier(request, live_gateway, configure):
    fakes = {"twilio": FakeTwilio, "telnyx": lambda: FakeTelnyx(webhook_url=f"{live_gateway}/voice/webhook"),
             "plivo": FakePlivo}
    with fakes[request.param]() as fake, FakeChatCompletions(api_key=KEY, reply=numbered_reply) as llm:
        # About 16 pieces 170 ms apart: the reply is complete only after SLOW_SECONDS.
        llm.chunk_chars, llm.delay_between_chunks = 2, 0.17
        carrier = Carrier(request.param, fake, live_gateway)
        loaded = configure(carrier_config(request.param, live_gateway, carrier.block(), **{
            "inboundGreeting": GREETING, "responseModel": "fake/clinic",
            "models": {"providers": {"fake": {"baseUrl": llm.url, "apiKey": KEY}}},
        }))
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        yield carrier
        background.drain(10)
        assert not fake.errors


def test_gather_path_answers_at_once_and_speaks_the_reply_when_ready(carrier):
    fake_call = carrier.ring()
    carrier.fake.wait_idle()
    call = wait_until(lambda: Call.objects.filter(provider_call_id=getattr(fake_call, carrier.call_id(fake_call))).first())
    wait_until(lambda: carrier.said(fake_call) == [GREETING], timeout=10)
    if carrier.name == "telnyx":
        wait_until(lambda: fake_call.transcription, timeout=10)  # listening follows the greeting

    for turn in (1, 2):
        started = time.monotonic()
        carrier.say(fake_call, f"Question number {turn}")
        # The carrier's webhook was answered without waiting for the (slow) reply.
        assert time.monotonic() - started < SLOW_SECONDS - 0.5
        wait_until(lambda: carrier.said(fake_call)[-1:] == [f"Reply number {turn}."], timeout=15)
        carrier.fake.wait_idle()
        # The reply job records its outcome (the bot's line) just after the carrier request: the next
        # question waits for it, or on a busy machine it lands first and supersedes a reply already said.
        wait_until(lambda: ReplyTurn.objects.filter(call=call, status=ReplyStatus.SPOKEN).count() == turn, timeout=15)

    background.drain(10)  # the reply job records its outcome just after the carrier request
    call.refresh_from_db()
    assert not call.is_terminal
    assert transcript(call) == [
        ("bot", GREETING),
        ("user", "Question number 1"), ("bot", "Reply number 1."),
        ("user", "Question number 2"), ("bot", "Reply number 2."),
    ]
    replies = list(ReplyTurn.objects.filter(call=call).order_by("pk"))
    assert [r.status for r in replies] == [ReplyStatus.SPOKEN, ReplyStatus.SPOKEN]
    assert all(r.total_ms >= SLOW_SECONDS * 800 for r in replies), [r.total_ms for r in replies]
    assert [d for d in carrier.fake.deliveries if d.status != 200] == []
