"""Answering-machine detection with the mock carrier and from every surface: the hold, each verdict's effect,
the bound on the wait, late and unknown verdicts, and the amd parameter of RPC, the agent tool and the CLI."""
from __future__ import annotations

import io
import json
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from calls import tools
from calls.clock import now
from calls.models import Call, CallEvent
from calls.selectors import call_metadata
from calls.services import call_initiate, deadlines_sweep, next_deadline
from core.errors import InvalidRequest
from providers.carriers import mock
from tests.conftest import events_body
from voicecall_project.rpc_tokens import parse_rpc_tokens

PERSON = "+15550001111"
MACHINE = "+1555000" + mock.MACHINE_SUFFIX
WRITE = "amd-test-write-token-7f3e2a1c5b9d4e8f"

pytestmark = pytest.mark.django_db(transaction=True)


def actions(call: Call) -> list[tuple[str, dict]]:
    return [(r.action, r.params) for r in mock.outbox if r.provider_call_id == call.provider_call_id]


async def post(asgi, *events):
    response = await asgi.post("/voice/webhook", content=events_body(*events))
    assert response.status_code == 200, response.text


def place(**kwargs) -> Call:
    return Call.objects.get(pk=call_initiate(**kwargs).pk)


async def test_a_machine_is_hung_up_on_and_never_greeted(asgi):
    call = await sync_to_async(place)(to=MACHINE, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    assert actions(call)[0][1]["amd"] == "detect"
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"})

    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (call.state, call.end_reason, call.answered_by) == ("voicemail", "voicemail", "machine_start")
    assert [name for name, _ in actions(call)] == ["initiate_call", "hangup_call"]
    assert actions(call)[1][1] == {"reason": "voicemail"}
    assert await sync_to_async(call_metadata)(call) == {
        "mode": "conversation", "amd": "detect", "initialMessage": "Hi, this is the clinic.",
        "answeredBy": "machine_start", "answeredByFirst": "machine_start", "hangupReason": "voicemail",
    }


async def test_a_person_is_greeted_once_the_verdict_says_so(asgi):
    call = await sync_to_async(place)(to=PERSON, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (call.answered_by, call.state) == ("human", "listening")
    assert [name for name, _ in actions(call)] == ["initiate_call", "play_tts", "start_listening"]


async def test_voicemail_mode_leaves_the_message_then_hangs_up(asgi):
    call = await sync_to_async(place)(to=MACHINE, message="Your table is ready.", mode="notify", amd="voicemail")
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert call.answered_by == "machine_end_beep" and call.notify_hangup_at is not None
    assert actions(call)[1] == ("leave_message", {"text": "Your table is ready.", "voice": None, "wait_for_beep": False})

    await sync_to_async(deadlines_sweep)(at=now() + timedelta(seconds=60))
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (call.state, call.end_reason) == ("voicemail", "voicemail")
    assert actions(call)[-1] == ("hangup_call", {"reason": "voicemail"})


async def test_a_fax_is_hung_up_on_in_voicemail_mode_too(asgi):
    call = await sync_to_async(place)(to=PERSON, message="Your table is ready.", mode="notify", amd="voicemail")
    mock._verdicts.clear()  # the test gives the verdict itself
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"},
               {"type": "call.amd", "callId": str(call.pk), "answeredBy": "fax", "id": "a2"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (call.end_reason, call.answered_by) == ("voicemail", "fax")
    assert "leave_message" not in [name for name, _ in actions(call)]


async def test_a_machine_verdict_after_a_person_changes_nothing_but_the_verdict(asgi):
    call = await sync_to_async(place)(to=PERSON, message="Hi", mode="conversation", amd="detect")
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"})
    await post(asgi, {"type": "call.amd", "callId": str(call.pk), "answeredBy": "machine_start", "id": "a2"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert call.ended_at is None and (call.answered_by_first, call.answered_by) == ("human", "machine_start")
    assert "hangup_call" not in [name for name, _ in actions(call)]


async def test_without_a_verdict_the_call_goes_on_after_the_bound(asgi, configure):
    configure({"amdTimeoutMs": 4000})
    call = await sync_to_async(place)(to=PERSON, message="Hi, this is the clinic.", mode="conversation", amd="detect")
    mock._verdicts.clear()  # a carrier that never answers with a verdict
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert call.answered_by == "" and [name for name, _ in actions(call)] == ["initiate_call"]
    bound = call.answered_at + timedelta(milliseconds=4000) + timedelta(seconds=5)
    assert await sync_to_async(next_deadline)() <= bound

    assert await sync_to_async(deadlines_sweep)(at=bound - timedelta(seconds=1)) == 0
    assert await sync_to_async(deadlines_sweep)(at=bound) == 1
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (call.answered_by, call.answered_by_first) == ("unknown", "unknown")
    assert [name for name, _ in actions(call)] == ["initiate_call", "play_tts", "start_listening"]
    assert await sync_to_async(deadlines_sweep)(at=bound) == 0  # acted on once


async def test_voicemail_mode_without_an_end_of_greeting_leaves_the_message_after_twice_the_bound(asgi, configure):
    configure({"amdTimeoutMs": 4000})
    call = await sync_to_async(place)(to=PERSON, message="Your table is ready.", mode="notify", amd="voicemail")
    mock._verdicts.clear()
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"},
               {"type": "call.amd", "callId": str(call.pk), "answeredBy": "machine_start", "id": "a2"})
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert [name for name, _ in actions(call)] == ["initiate_call"]  # waiting for the beep
    assert await sync_to_async(deadlines_sweep)(at=call.answered_at + timedelta(seconds=10)) == 0
    assert await sync_to_async(deadlines_sweep)(at=call.answered_at + timedelta(seconds=18)) == 1
    call = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert call.answered_by == "machine_end_timeout" and call.answered_by_first == "machine_start"
    assert [name for name, _ in actions(call)] == ["initiate_call", "leave_message"]


async def test_a_verdict_for_an_ended_call_is_a_no_op(asgi):
    call = await sync_to_async(place)(to=PERSON, message="Hi", mode="conversation", amd="detect")
    await post(asgi, {"type": "call.answered", "callId": str(call.pk), "id": "a1"},
               {"type": "call.ended", "callId": str(call.pk), "reason": "completed", "id": "a2"})
    before = await sync_to_async(Call.objects.get)(pk=call.pk)
    events = await sync_to_async(CallEvent.objects.filter(call=before).count)()
    outbox = len(mock.outbox)

    await post(asgi, {"type": "call.amd", "callId": str(call.pk), "answeredBy": "machine_end_beep", "id": "late"})
    after = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert (after.answered_by, after.end_reason, after.updated_at) == ("human", "completed", before.updated_at)
    # Kept in the call's timeline, like every accepted event; nothing on the call changed.
    assert await sync_to_async(CallEvent.objects.filter(call=after).count)() == events + 1
    assert await sync_to_async(lambda: CallEvent.objects.filter(call=after).latest("received_at").type)() == "call.amd"
    assert len(mock.outbox) == outbox


async def test_a_verdict_for_an_unknown_call_is_a_no_op(asgi):
    await post(asgi, {"type": "call.amd", "callId": "mock-nobody", "providerCallId": "mock-nobody",
                      "direction": "outbound", "answeredBy": "machine_start", "id": "x"})
    assert not await sync_to_async(Call.objects.exists)()


async def test_inbound_calls_are_never_held(asgi, configure):
    configure({"amd": "detect", "inboundPolicy": "open", "inboundGreeting": "Hello"})
    await post(asgi, {"type": "call.initiated", "callId": "mock-in-1", "providerCallId": "mock-in-1",
                      "direction": "inbound", "from": PERSON, "to": "+15550000000", "id": "i1"},
               {"type": "call.answered", "callId": "mock-in-1", "id": "i2"})
    call = await sync_to_async(Call.objects.get)(provider_call_id="mock-in-1")
    assert call.amd_mode == "" and "play_tts" in [name for name, _ in actions(call)]


# --- the amd parameter on every surface -----------------------------------------------------------


@pytest.fixture
def rpc(live_gateway, settings):
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{WRITE}")

    def call(method, params):
        body = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
        response = httpx.post(live_gateway + "/voice/rpc", json=body, headers={"Authorization": f"Bearer {WRITE}"}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    return call


@pytest.mark.parametrize("method", ["voicecall.initiate", "voicecall.start"])
def test_rpc_places_a_call_with_its_amd(rpc, method):
    reply = rpc(method, {"to": PERSON, "message": "Hi", "amd": "voicemail"})
    assert Call.objects.get(pk=reply["result"]["callId"]).amd_mode == "voicemail"
    assert mock.outbox[0].params["amd"] == "voicemail"


@pytest.mark.parametrize("params, message", [
    ({"amd": "maybe"}, "amd must be off, detect or voicemail, got 'maybe'"),
    ({"amd": True}, "amd must be a string"),
    ({"amd": "detect", "at": "+10m"}, "amd: a scheduled call (at) uses the configured amd; leave amd out"),
])
def test_rpc_refuses_a_bad_amd_and_stores_nothing(rpc, params, message):
    reply = rpc("voicecall.initiate", {"to": PERSON, "message": "Hi", **params})
    assert reply["error"]["message"] == message and reply["error"]["data"] == {"code": "INVALID_REQUEST"}
    assert not Call.objects.exists() and mock.outbox == []


def test_the_agent_tool_places_a_call_with_its_amd(configure):
    configure({"maxConcurrentCalls": 5})
    result = tools.execute({"action": "initiate_call", "to": PERSON, "message": "Hi", "amd": "detect"})
    assert Call.objects.get(pk=result["details"]["callId"]).amd_mode == "detect"
    refused = tools.execute({"action": "initiate_call", "to": PERSON, "message": "Hi", "amd": "loud"})
    assert refused["details"] == {"error": "amd: expected off, detect or voicemail, got 'loud'"}
    assert Call.objects.count() == 1


def test_the_cli_places_a_call_with_its_amd():
    out = io.StringIO()
    call_command("voicecall", "call", "-m", "Hi", "--to", PERSON, "--amd", "detect", stdout=out, stderr=io.StringIO())
    assert Call.objects.get(pk=json.loads(out.getvalue())["callId"]).amd_mode == "detect"


def test_the_config_amd_applies_unless_the_call_chooses(configure):
    configure({"amd": "detect", "maxConcurrentCalls": 5})
    assert place(to=PERSON, message="Hi").amd_mode == "detect"
    assert place(to=PERSON, message="Hi", amd="off").amd_mode == "off"
    with pytest.raises(InvalidRequest):
        place(to=PERSON, message="Hi", amd="DETECT")
