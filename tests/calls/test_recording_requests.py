"""The `record` choice of a placed call from each surface (RPC, agent tool, CLI), and its bad values."""
from __future__ import annotations

import io
import json
import re

import httpx
import pytest
from django.core.management import call_command

from calls import tools
from calls.models import Call, PendingDial
from voicecall_project.rpc_tokens import parse_rpc_tokens

WRITE = "w" * 8 + "write-token-0002"
TO = "+15550001111"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def tokens(settings):
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{WRITE}")


def rpc(gateway: str, method: str, params: dict) -> dict:
    body = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
    return httpx.post(gateway + "/voice/rpc", json=body, headers={"Authorization": f"Bearer {WRITE}"}, timeout=10).json()


def test_rpc_initiate_and_start_take_record(live_gateway, configure):
    configure({"recording": {"carrier": False, "local": True}, "maxConcurrentCalls": 5})
    on = rpc(live_gateway, "voicecall.initiate", {"to": TO, "message": "Hi", "record": True})["result"]["callId"]
    off = rpc(live_gateway, "voicecall.start", {"to": TO, "message": "Hi", "record": False})["result"]["callId"]
    default = rpc(live_gateway, "voicecall.initiate", {"to": TO, "message": "Hi"})["result"]["callId"]
    rows = {str(pk): (carrier, local) for pk, carrier, local in Call.objects.values_list("pk", "record_carrier", "record_local")}
    assert rows == {on: (True, True), off: (False, False), default: (False, True)}


def test_rpc_refuses_a_record_that_is_not_a_boolean_or_comes_with_at(live_gateway):
    error = rpc(live_gateway, "voicecall.initiate", {"to": TO, "message": "Hi", "record": "yes"})["error"]
    assert "record" in error["message"] and "boolean" in error["message"]
    error = rpc(live_gateway, "voicecall.initiate", {"to": TO, "message": "Hi", "record": True, "at": "+15m"})["error"]
    assert "record: not available with at" in error["message"]
    assert not Call.objects.exists() and not PendingDial.objects.exists()


def test_the_agent_tool_initiate_takes_record(configure):
    configure({"maxConcurrentCalls": 5})
    result = tools.execute({"action": "initiate_call", "to": TO, "message": "Hi", "record": True})["details"]
    assert Call.objects.get(pk=result["callId"]).record_carrier
    refused = tools.execute({"action": "initiate_call", "to": TO, "message": "Hi", "record": "on"})["details"]
    assert "record: expected true or false" in refused["error"]
    assert Call.objects.count() == 1
    schema = tools.tool_schema()["anyOf"][0]["properties"]
    assert schema["record"]["type"] == "boolean"
    assert tools.openai_function()["function"]["parameters"]["properties"]["record"]["type"] == "boolean"


@pytest.mark.parametrize(("flag", "expected"), [("--record", True), ("--no-record", False), (None, False)])
def test_cli_call_record_flags(flag, expected, configure):
    configure({"maxConcurrentCalls": 5})
    out = io.StringIO()
    call_command("voicecall", "call", "--to", TO, "-m", "Hi", *([flag] if flag else []), stdout=out, stderr=io.StringIO())
    call = Call.objects.get(pk=json.loads(out.getvalue())["callId"])
    assert call.record_carrier is expected


def test_an_admin_route_sets_the_recording_of_calls_to_its_number(configure):
    from calls.services import event_process
    from core.events import CallAnswered
    from routing.models import NumberRoute

    configure({"inboundPolicy": "open", "maxConcurrentCalls": 5, "recording": {"carrier": False, "local": True}})
    NumberRoute.objects.create(number="+15550004444", record_carrier=True)
    NumberRoute.objects.create(number="+15550005555", record_local=False)
    NumberRoute.objects.create(number="+15550006666")
    for n, number in enumerate(("+15550004444", "+15550005555", "+15550006666")):
        event_process(event=CallAnswered(call_id=f"CA-{n}", provider_call_id=f"CA-{n}", direction="inbound",
                                         from_number="+15557777777", to_number=number))
    rows = dict(Call.objects.values_list("to_number", "record_carrier"))
    local = dict(Call.objects.values_list("to_number", "record_local"))
    assert rows == {"+15550004444": True, "+15550005555": False, "+15550006666": False}
    assert local == {"+15550004444": True, "+15550005555": False, "+15550006666": True}


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("url", "ftp://files.example/r.wav", "url: must be an http(s) URL"),
    ("url", "https://x.example/" + "a" * 1100, "url: must be an http(s) URL"),
    ("recordingId", "R" * 200, "recordingId: longer than 128"),
    ("status", "done", "status: must be one of"),
    ("durationSeconds", -1, "durationSeconds: must be a number of seconds"),
    ("channels", 3, "channels: must be 1 or 2"),
])
def test_a_mock_recording_event_with_a_bad_field_is_refused(field, value, problem):
    from core.events import EventFormatError, event_from_dict

    with pytest.raises(EventFormatError, match=re.escape(problem)):
        event_from_dict({"type": "call.recording", "callId": "c1", "recordingId": "RE1", field: value})
