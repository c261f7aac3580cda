"""Realtime tools: specs in order, argument parsing, tool runs and their call events in the timeline."""
from __future__ import annotations

import json
import logging

import pytest

from calls.models import CallEvent
from calls.realtime import tools
from calls.realtime.tools import CONSULT_REASONS, CONSULT_TOOL, END_CALL_TOOL, ToolArgumentError, tool_run
from calls.selectors import call_timeline
from core.config.schema import RealtimeConfig
from providers.realtime.base import ToolCall
from tests.fakes.agent import FakeAgentWebhook

from .helpers import base_config, ring

LOOKUP = {"type": "function", "name": "lookup_order", "description": "Find an order.",
          "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}


def realtime(**data) -> RealtimeConfig:
    return RealtimeConfig.model_validate(data)


# --- specs ----------------------------------------------------------------------------------------


def test_end_call_comes_first_then_consult_then_custom_tools():
    specs = tools.tool_specs(realtime(tools=[LOOKUP]))
    assert [s.name for s in specs] == [END_CALL_TOOL, CONSULT_TOOL, "lookup_order"]
    assert specs[0].parameters == {"type": "object", "properties": {}}
    assert specs[2].description == "Find an order."
    assert specs[2].parameters == LOOKUP["parameters"]


def test_the_consult_schema_is_the_newest():
    schema = tools.CONSULT_SPEC.parameters
    assert schema["required"] == ["question", "reason"]
    assert schema["properties"]["reason"]["enum"] == list(CONSULT_REASONS) and len(CONSULT_REASONS) == 7
    assert set(schema["properties"]) == {"question", "reason", "context", "responseStyle", "confirmationId"}


def test_built_in_names_cannot_be_replaced_and_duplicates_are_dropped(caplog):
    replacing = {**LOOKUP, "name": CONSULT_TOOL, "description": "mine"}
    with caplog.at_level(logging.WARNING):
        specs = tools.tool_specs(realtime(tools=[replacing, LOOKUP, {**LOOKUP, "description": "again"}]))
    assert [s.name for s in specs] == [END_CALL_TOOL, CONSULT_TOOL, "lookup_order"]
    assert specs[1] is tools.CONSULT_SPEC and specs[2].description == "Find an order."
    messages = [r.getMessage() for r in caplog.records]
    assert any("openclaw_agent_consult is a built-in tool name" in m for m in messages)
    assert any("lookup_order is listed twice" in m for m in messages)


def test_tool_policy_none_keeps_end_call_and_custom_tools():
    assert [s.name for s in tools.tool_specs(realtime(toolPolicy="none", tools=[LOOKUP]))] == [END_CALL_TOOL, "lookup_order"]


def test_only_the_consult_is_slow():
    assert tools.tool_is_slow(CONSULT_TOOL) and not tools.tool_is_slow(END_CALL_TOOL)


# --- arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["question", "prompt", "query", "task"])
def test_question_and_its_aliases(key):
    request = tools.parse_consult({key: "  When do you open? ", "reason": "current_external_data",
                                   "responseStyle": "one sentence", "context": "bakery", "confirmationId": "c-1"})
    assert (request.question, request.reason, request.response_style, request.context, request.confirmation_id) == (
        "When do you open?", "current_external_data", "one sentence", "bakery", "c-1")


@pytest.mark.parametrize(("arguments", "error"), [
    ({"reason": "private_context"}, "question required"),
    ({"question": "   ", "reason": "private_context"}, "question required"),
    ({"question": 42, "reason": "private_context"}, "question required"),
    ({"question": "Why?"}, "valid reason required"),
    ({"question": "Why?", "reason": "because"}, "valid reason required"),
])
def test_unusable_consult_arguments(arguments, error):
    with pytest.raises(ToolArgumentError) as caught:
        tools.parse_consult(arguments)
    assert str(caught.value).startswith(error)


def test_argument_json():
    assert tools.parse_arguments("") == {} and tools.parse_arguments('{"a": 1}') == {"a": 1}
    with pytest.raises(ToolArgumentError, match="arguments: not valid JSON"):
        tools.parse_arguments('{"question": ')
    with pytest.raises(ToolArgumentError, match="must be a JSON object, not list"):
        tools.parse_arguments("[1]")


# --- runs ------------------------------------------------------------------------------------------------

db = pytest.mark.django_db(transaction=True)


def events_of(call, kind):
    return [e.payload for e in CallEvent.objects.filter(call=call, type=kind)]


@db
def test_end_call_asks_the_bridge_to_hang_up_and_is_recorded(configure):
    configure(base_config())
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-1", END_CALL_TOOL, "{}"))
    assert outcome == tools.ToolOutcome({"ok": True}, end_call=True)
    (called,) = events_of(call, "realtime.tool_call")
    assert called == {"name": END_CALL_TOOL, "arguments": "{}"}
    (result,) = events_of(call, "realtime.tool_result")
    assert result["name"] == END_CALL_TOOL and result["output"] == '{"ok": true}' and result["endCall"] is True
    assert isinstance(result["durationMs"], int)
    rows = {row["label"]: row["detail"] for row in call_timeline(call=call) if row["kind"] == "event"}
    assert rows["realtime.tool_call"] == "openclaw_end_call {}"
    assert rows["realtime.tool_result"].startswith('openclaw_end_call → {"ok": true} (')


@db
def test_a_repeated_tool_call_id_is_recorded_once(configure):
    configure(base_config())
    call = ring()
    for _ in range(2):
        tool_run(call_id=str(call.pk), call=ToolCall("fc-same", END_CALL_TOOL, "{}"))
    assert len(events_of(call, "realtime.tool_call")) == 1


@db
@pytest.mark.parametrize(("name", "arguments", "error"), [
    ("open_the_pod_bay_doors", "{}", "unknown tool open_the_pod_bay_doors"),
    ("open_the_pod_bay_doors", '{"door": ', "unknown tool open_the_pod_bay_doors"),  # the name is the mistake
    ("", "{}", "unknown tool (no name)"),
    (CONSULT_TOOL, '{"question": "hours?", "reason": ', "arguments: not valid JSON"),
    # JSON the database cannot hold, or nested deep enough to exhaust the parser: an error result, never a crash.
    (CONSULT_TOOL, "[" * 20_000 + "]" * 20_000, "arguments: nesting deeper than 64 levels"),
    (CONSULT_TOOL, '{"question": NaN, "reason": "private_context"}', "arguments: non-finite number NaN"),
    (CONSULT_TOOL, '{"question": 1e400, "reason": "private_context"}', "arguments: non-finite number 1e400"),
    (CONSULT_TOOL, '{"question": "\\ud83d?", "reason": "private_context"}', "arguments: lone surrogate U+D83D at $.question"),
    (CONSULT_TOOL, '{"question": "", "reason": "private_context"}', "question required"),
    (CONSULT_TOOL, '{"question": "hours?", "reason": "curious"}', "valid reason required"),
])
def test_model_mistakes_become_error_results(configure, name, arguments, error):
    configure(base_config())
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-2", name, arguments))
    assert not outcome.end_call
    assert outcome.output["error"].startswith(error)
    (result,) = events_of(call, "realtime.tool_result")
    assert result["error"].startswith(error)
    row = next(r for r in call_timeline(call=call) if r["label"] == "realtime.tool_result")
    assert row["detail"].startswith(f"{name} failed: {error}")


@db
def test_consult_is_not_run_when_the_tool_policy_is_none(configure):
    configure(base_config(realtime={"toolPolicy": "none"}))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall(
        "fc-3", CONSULT_TOOL, '{"question": "hours?", "reason": "current_external_data"}'))
    assert outcome.output == {"error": f"unknown tool {CONSULT_TOOL}"}


@db
def test_long_arguments_are_clipped_in_the_record(configure):
    configure(base_config())
    call = ring()
    tool_run(call_id=str(call.pk), call=ToolCall("fc-4", "nothing", json.dumps({"x": "y" * 5000})))
    (called,) = events_of(call, "realtime.tool_call")
    assert len(called["arguments"]) < 2100 and called["arguments"].endswith(" [truncated]")


@pytest.fixture
def agent():
    fake = FakeAgentWebhook(secret="agent-secret", reply={"status": "shipped", "eta": "Tuesday"}).start()
    yield fake
    fake.stop()


@db
def test_custom_tools_go_to_the_agent_webhook(configure, agent):
    configure(base_config(
        realtime={"tools": [LOOKUP]},
        agents={"main": {"responder": {"type": "webhook", "url": agent.url, "secret": "agent-secret"}}}))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-5", "lookup_order", '{"order": "A-17"}'))
    assert outcome.output == {"status": "shipped", "eta": "Tuesday"}
    (sent,) = agent.turns
    assert sent == {"type": "tool_call", "callId": str(call.pk), "agentId": "main", "sessionKey": call.session_key,
                    "name": "lookup_order", "arguments": {"order": "A-17"}}
    (result,) = events_of(call, "realtime.tool_result")
    assert json.loads(result["output"]) == {"status": "shipped", "eta": "Tuesday"}


@db
def test_a_custom_tool_answered_with_an_error_status_is_an_error_result(configure, agent):
    agent.status = 500
    configure(base_config(
        realtime={"tools": [LOOKUP]},
        agents={"main": {"responder": {"type": "webhook", "url": agent.url, "secret": "agent-secret"}}}))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-6", "lookup_order", '{"order": "A-17"}'))
    assert "answered the tool call with HTTP 500" in outcome.output["error"]
    assert "agent-secret" not in outcome.output["error"]


@db
def test_custom_tools_without_an_agent_webhook_get_a_clear_error(configure):
    configure(base_config(realtime={"tools": [LOOKUP]},
                          agents={"main": {"responder": {"type": "scripted", "replies": ["hi"]}}}))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-7", "lookup_order", '{"order": "A-17"}'))
    assert outcome.output == {"error": "no agent webhook is configured to run tool lookup_order"}


# --- transfer -------------------------------------------------------------------------------------


@db
def test_transfer_hands_the_call_to_the_routes_target(configure):
    from calls.models import Call
    from providers.carriers import mock

    from .helpers import LINE

    configure(base_config(numbers={LINE: {"transferTo": "+15550002222"}}))
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-t", tools.TRANSFER_TOOL, json.dumps({"summary": "Wants a refund."})))
    # The mock carrier has conferences: with a summary the transfer is warm.
    assert outcome == tools.ToolOutcome({"ok": True, "status": "transferring", "mode": "warm"}, transferred=True)
    assert mock.outbox[-1].action == "warm_transfer" and mock.outbox[-1].params["summary"] == "Wants a refund."
    transfer = call.transfers.get()
    assert (transfer.target, transfer.requested_by) == ("+15550002222", "realtime")
    assert Call.objects.get(pk=call.pk).end_reason == "transferred"
    (result,) = events_of(call, "realtime.tool_result")
    assert result["transferred"] is True


@db
def test_transfer_without_a_summary_or_warm_support_is_cold(configure, monkeypatch):
    from providers.carriers import mock

    configure(base_config(agents={"main": {"transferTo": "sip:desk@pbx.example.com"}}))
    monkeypatch.setattr(mock.MockCarrier, "supports_warm_transfer", False)
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-t", tools.TRANSFER_TOOL, '{"summary": "Billing."}'))
    assert outcome.transferred and outcome.output["mode"] == "cold"
    assert mock.outbox[-1].action == "transfer_call" and mock.outbox[-1].params["target"] == "sip:desk@pbx.example.com"


@db
def test_transfer_where_none_is_configured_is_an_error_result(configure):
    configure(base_config())
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-t", tools.TRANSFER_TOOL, "{}"))
    assert outcome == tools.ToolOutcome({"error": "transfers are not offered on this call"})
    assert not call.transfers.exists()


@db
def test_a_refused_transfer_is_told_to_the_model(configure, monkeypatch):
    from providers.carriers import mock

    configure(base_config(agents={"main": {"transferTo": "+15550002222"}}))

    def refuse(self, **kwargs):
        raise RuntimeError("carrier says no")

    monkeypatch.setattr(mock.MockCarrier, "transfer_call", refuse)
    call = ring()
    outcome = tool_run(call_id=str(call.pk), call=ToolCall("fc-t", tools.TRANSFER_TOOL, "{}"))
    assert outcome == tools.ToolOutcome({"error": "the transfer failed: carrier says no"})
    assert call.transfers.get().status == "failed"
