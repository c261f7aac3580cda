"""The carrier simulator plays Twilio, Telnyx and Plivo, inbound and outbound, through the real gateway.

Each call is a whole streamed conversation: the simulated carrier's signed webhooks (or the
gateway's dial to the simulated carrier's REST API), the carrier's stream hand-over and frames,
the offline voices on both sides and the scripted responder. What is asserted is what the
gateway did: the call's record, its stream's stats and its transcript rows.
"""
from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from calls import background
from calls.models import Call, MediaStream, TranscriptEntry
from calls.services import call_initiate
from calls.simulator.call import Gateway, Line
from calls.simulator.rest import RestStub
from calls.simulator.run import simulate
from calls.simulator.telnyx import new_private_key, public_key_text
from core.urls import webhook_url
from tests.calls.simulated import stream_recorded

pytestmark = [pytest.mark.django_db(transaction=True)]

FROM, CALLEE = "+15550100000", "+15550100042"
GREETING = "Thanks for calling the clinic."
REPLY = "Tuesday at nine works."
# Obviously made-up credentials in each carrier's shape.
TWILIO_ACCOUNT, TWILIO_TOKEN = "AC" + "5e" * 16, "5e1a" * 8
PLIVO_ID, PLIVO_TOKEN = "MASIMULATOR0000000001", "SimPlivoToken0000000000000000000000000001"
TELNYX_KEY = "KEYSIMULATOR0123456789_sim"
CARRIERS = ["twilio", "telnyx", "plivo"]


def carrier_block(carrier: str, rest: RestStub, private_key) -> tuple[dict, dict]:
    """The gateway's carrier config pointing at the stub, and what the simulator signs with."""
    if carrier == "twilio":
        return ({"accountSid": TWILIO_ACCOUNT, "authToken": TWILIO_TOKEN, "baseUrl": rest.base_url},
                {"account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_TOKEN})
    if carrier == "telnyx":
        return ({"apiKey": TELNYX_KEY, "connectionId": "conn-sim", "publicKey": public_key_text(private_key),
                 "baseUrl": rest.base_url + "/v2"},
                {"account_sid": "conn-sim", "telnyx_private_key": private_key})
    return ({"authId": PLIVO_ID, "authToken": PLIVO_TOKEN, "baseUrl": rest.base_url + "/v1"},
            {"account_sid": PLIVO_ID, "auth_token": PLIVO_TOKEN})


@pytest.fixture
def sim_gateway(live_gateway, configure):
    """configure(carrier) → (Gateway for the simulator, the REST stub the gateway's carrier points at)."""
    stubs: list[RestStub] = []

    def apply(carrier: str) -> tuple[Gateway, RestStub]:
        rest = RestStub(carrier).start()
        stubs.append(rest)
        key = new_private_key()
        block, signing = carrier_block(carrier, rest, key)
        loaded = configure({
            "provider": carrier,
            carrier: block,
            "fromNumber": FROM,
            "publicUrl": live_gateway,
            "inboundPolicy": "open",
            "inboundGreeting": GREETING,
            "streaming": {"enabled": True, "provider": "local"},
            "tts": {"provider": "local"},
            "agents": {"main": {"responder": {"type": "scripted", "replies": [REPLY]}}},
        })
        assert not loaded.errors, loaded.errors
        background.set_mode("thread")
        gateway = Gateway(base_url=live_gateway, webhook_url=webhook_url(loaded.config), carrier=carrier, **signing)
        return gateway, rest

    yield apply
    background.drain(10)
    for rest in stubs:
        rest.stop()


def place_call(index: int) -> None:
    try:
        call_initiate(to=CALLEE, message=GREETING, mode="conversation")
    finally:
        connection.close()  # a worker thread's own connection


def _stored(sid: str):
    call = Call.objects.get(provider_call_id=sid)
    entries = list(TranscriptEntry.objects.filter(call=call).order_by("timestamp", "pk").values_list("speaker", "text"))
    (stream,) = MediaStream.objects.filter(call=call).values("carrier", "stats", "close_reason")
    return call, entries, stream


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("carrier", CARRIERS)
async def test_a_whole_streamed_call(sim_gateway, carrier, direction):
    gateway, rest = sim_gateway(carrier)
    # Telnyx does not keep order: every 5th frame goes out after the next one, for the gateway to put back.
    swap = 5 if carrier == "telnyx" else 0
    report = await simulate(gateway, [Line("I would like an appointment please.")], rest=rest, listen=False,
                            max_seconds=60, callee=FROM, outbound=direction == "outbound",
                            place=place_call if direction == "outbound" else None, swap_every=swap)
    (result,) = report.calls
    assert result.outcome == "completed", result
    assert result.frames_received > 100 and result.speech_frames_played > 50, result  # the gateway spoke
    await stream_recorded(result.call_sid)
    call, entries, stream = await sync_to_async(_stored)(result.call_sid)
    assert (call.provider, call.direction) == (carrier, direction)
    assert call.is_terminal and call.ended_at is not None
    assert stream["carrier"] == carrier
    stats = stream["stats"]
    # Every frame the simulator sent reached the gateway, none was refused, and it played the greeting.
    assert stats["frames_in"] == result.frames_sent, (stats, result)
    assert stats.get("dropped", 0) == 0, stats
    assert stats["marks_acked"] == stats["marks_sent"] >= 1, stats
    if swap:
        assert stats["reordered"] >= result.frames_sent // swap - 2, stats
        assert stats.get("frames_missing", 0) == 0, stats
    assert entries[0] == ("bot", GREETING), entries
    heard = [text for speaker, text in entries if speaker == "user"]
    assert heard, entries  # the caller's line was transcribed (whatever the offline recognizer made of it)
    assert ("bot", REPLY) in entries[entries.index(("user", heard[0])):], entries
    assert all(method != "DELETE" or path for method, path, _ in rest.requests)


async def test_outbound_without_a_dial_reports_that_none_came(sim_gateway):
    gateway, rest = sim_gateway("telnyx")
    report = await simulate(gateway, [Line("Hello.")], rest=rest, listen=False, outbound=True, dial_timeout=0.5,
                            audio={"Hello.": b"\xff" * 1600})
    (result,) = report.calls
    assert result.outcome == "error" and "dialled 0 of 1" in result.error and rest.base_url in result.error


async def test_a_webhook_the_gateway_refuses_is_reported(sim_gateway):
    gateway, rest = sim_gateway("plivo")
    gateway.auth_token = "WrongPlivoToken00000000000000000000000001"  # the gateway refuses the signature
    report = await simulate(gateway, [Line("Hello.")], rest=rest, listen=False, audio={"Hello.": b"\xff" * 1600})
    (result,) = report.calls
    assert result.outcome == "error" and "401" in result.error, result


async def test_a_telnyx_call_the_gateway_never_answers_is_reported(sim_gateway, configure, live_gateway, monkeypatch):
    from calls.simulator.telnyx import TelnyxSide

    gateway, rest = sim_gateway("telnyx")
    rest.stop()  # the gateway's answer command reaches nobody
    monkeypatch.setattr(TelnyxSide, "answer_timeout", 1.0)
    report = await simulate(gateway, [Line("Hello.")], rest=None, listen=False, audio={"Hello.": b"\xff" * 1600})
    (result,) = report.calls
    assert result.outcome == "refused" and "no answer command" in result.error, result
