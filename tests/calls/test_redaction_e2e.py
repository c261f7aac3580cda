"""No credential an upstream echoes leaves the gateway: not in its console, not in RPC answers, not in tool results.

A fake carrier and a fake TTS answer 401 with bodies that echo every credential shape and the
configured secrets; the real gateway (Daphne on a socket) relays the failures. The console is read
as the settings' handler writes it (tests/logs.RealConsole), so what is asserted is what an operator would see.
"""
from __future__ import annotations

import asyncio
import base64
import logging
from datetime import timedelta

import httpx
import pytest

from django.utils import timezone

from calls import background
from calls.models import Call
from calls.services import deadlines_sweep
from calls.rpc_tokens import local_token
from core.redact import RedactFilter
from tests.fakes.ai.tts import FakeTts
from tests.fakes.twilio import FakeTwilio
from tests.logs import RealConsole
from tests.waiting import wait_until
from tests.providers.carriers.test_carriers_e2e import carrier_config

pytestmark = pytest.mark.django_db(transaction=True)

ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "tw-auth-7c2f9e41d0b84a55"  # the configured secret: no credential shape of its own
OPENAI_KEY = "sk-proj-Zq8XbW3vN5tY7uJ9kL1mP4rS"
ELEVEN_KEY = "el-key-4f4e3d2c1b0a99887766"
QUERY_KEY = "AIzaSyB-qry-param-value-123456789012"
BASIC = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
LEAKS = (AUTH_TOKEN, BASIC, OPENAI_KEY, ELEVEN_KEY, QUERY_KEY)


def echoing_body(what: str, *, bare_basic: str = "") -> str:
    """An upstream's 401 text that echoes the request's credentials back, in every shape seen in the wild."""
    return (f"{what}: invalid credentials. Authorization: Basic {BASIC} ({bare_basic}); tried Bearer {OPENAI_KEY} "
            f"from https://api.example.com/v1/x?api_key={QUERY_KEY}&lang=en with xi-api-key: {ELEVEN_KEY} "
            f"(token {AUTH_TOKEN})")


def assert_clean(text: str, where: str) -> None:
    leaked = [secret for secret in LEAKS if secret in text]
    assert not leaked, f"{where} leaked {leaked}: {text}"


@pytest.fixture
def twilio(live_gateway, configure):
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as fake:
        loaded = configure(carrier_config("twilio", live_gateway, {
            "accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url}))
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        yield fake
        background.drain(10)


def rpc(gateway: str, method: str, params: dict) -> dict:
    token = local_token(__import__("django.conf").conf.settings.DATA_DIR).token
    response = httpx.post(f"{gateway}/voice/rpc", json={"jsonrpc": "2.0", "method": method, "params": params, "id": 1},
                          headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_console_has_the_redact_filter_on_its_one_handler():
    handlers = logging.getLogger().handlers
    assert any(isinstance(f, RedactFilter) for handler in handlers for f in handler.filters), handlers


def test_a_carrier_401_echoing_credentials_reaches_no_log_rpc_answer_or_tool_result(twilio, live_gateway):
    with RealConsole() as console:
        # Placing a call: the carrier refuses it.
        twilio.fail_next("POST", r"/Calls\.json$", 401, {"code": 20003, "message": echoing_body("Authenticate", bare_basic=BASIC)}, times=2)
        placed = rpc(live_gateway, "voicecall.initiate", {"to": "+15550001111", "message": "Hello", "mode": "notify"})
        tool_placed = rpc(live_gateway, "voicecall.tool", {"action": "initiate_call", "to": "+15550001111", "message": "Hi"})

        # Hanging up a live call: the carrier refuses every hang-up, from the RPC, the tool and the sweeper.
        call_id = rpc(live_gateway, "voicecall.initiate", {"to": "+15550001111", "message": "Hello",
                                                           "mode": "conversation"})["result"]["callId"]
        twilio.fail_next("POST", r"/Calls/[^/]+\.json$", 401, {"code": 20003, "message": echoing_body("Hang-up", bare_basic=BASIC)}, times=50)
        ended = rpc(live_gateway, "voicecall.end", {"callId": call_id})
        tool_ended = rpc(live_gateway, "voicecall.tool", {"action": "end_call", "callId": call_id})
        Call.objects.filter(pk=call_id).update(max_duration_deadline=timezone.now() - timedelta(seconds=1))
        deadlines_sweep()
        background.drain(10)
        wait_until(lambda: " hang-up attempt " in console.text, "the sweeper's hang-up failure to be logged")

    for answer in (placed, ended):
        # Reported, and readable: the carrier's code and what went wrong are there.
        assert "20003" in answer["error"]["message"] and "[redacted]" in answer["error"]["message"], answer
        assert_clean(str(answer), "an RPC answer")
    for tool in (tool_placed, tool_ended):
        text = tool["result"]["content"][0]["text"]
        assert "20003" in text and "[redacted]" in text, tool
        assert_clean(str(tool), "a tool result")
    assert "Hang-up: invalid credentials" in console.text, console.text
    assert_clean(console.text, "the console")


def test_a_tts_401_echoing_credentials_is_not_in_the_fallback_warning(configure):
    from calls.speech import tts_chain

    with FakeTts(openai_key=OPENAI_KEY, elevenlabs_key=ELEVEN_KEY, chunk_gap=0.0) as fake:
        fake.fail("openai", 401, {"error": {"message": echoing_body("Incorrect API key"), "type": "invalid_request_error"}})
        tts = {"provider": "openai", "providers": {
            "openai": {"apiKey": OPENAI_KEY, "baseUrl": fake.url + "/v1"},
            "elevenlabs": {"apiKey": ELEVEN_KEY, "baseUrl": fake.url, "voiceId": "voice-1"}}}
        loaded = configure(carrier_config("twilio", "http://127.0.0.1:9", {
            "accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN}, tts=tts))
        assert not loaded.errors, loaded.errors
        chain = tts_chain(tts)

        async def speak() -> bytes:
            return b"".join([chunk async for chunk in chain.synthesize("Hello there")])

        with RealConsole() as console:
            audio = asyncio.run(speak())
    assert audio
    assert "tts fallback: from=openai to=elevenlabs" in console.text and "Incorrect API key" in console.text
    assert_clean(console.text, "the console")
