"""The `voice_call` agent tool (docs/compatibility.md, Agent tool and RPC): its schemas, examples, served document and executor."""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from django.db import connection
from django.test import RequestFactory
from django.urls import path
from jsonschema import Draft202012Validator

from calls import services, tools
from calls.models import Call, CallTurn
from calls.selectors import call_metadata
from calls.services import call_end, event_process
from core.events import CallAnswered, CallSpeech
from providers.carriers import mock
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

DISABLED = "Voice calls are disabled (enabled: false in the call config)"
SUMMARY_KEYS = {"callId", "providerCallId", "provider", "direction", "state", "startedAt", "answeredAt", "endedAt", "endReason"}

urlpatterns = [path("voice/tools/voice_call.json", tools.tool_document_view)]


def validator() -> Draft202012Validator:
    return Draft202012Validator(tools.tool_schema())


def run(arguments: Any, **kwargs: Any) -> dict[str, Any]:
    """Execute and check the result's two halves agree; returns the details object."""
    result = tools.execute(arguments, **kwargs)
    assert set(result) == {"content", "details"}
    assert result["content"] == [{"type": "text", "text": json.dumps(result["details"], indent=2, ensure_ascii=False)}]
    return result["details"]


def answered_call(**arguments: Any) -> str:
    details = run({"action": "initiate_call", "to": "+15550001111", "message": "Hello", "mode": "conversation", **arguments})
    call_id = details["callId"]
    event_process(event=CallAnswered(call_id=call_id))
    return call_id


def reply_when_listening(call_id: str, transcript: str) -> threading.Thread:
    """The caller answers once the turn is listening, as the carrier would report it."""

    def answer() -> None:
        try:
            wait_until(lambda: CallTurn.objects.filter(call_id=call_id, listen_started_at__isnull=False).exists(),
                       "the turn to listen")
            provider_call_id = Call.objects.get(pk=call_id).provider_call_id
            event_process(event=CallSpeech(call_id=provider_call_id, transcript=transcript))
        finally:
            connection.close()

    thread = threading.Thread(target=answer)
    thread.start()
    return thread


# --- the schemas ---------------------------------------------------------------------------


def walk_properties(schema: Any):
    if isinstance(schema, dict):
        for name, prop in schema.get("properties", {}).items():
            yield name, prop
        for value in schema.values():
            yield from walk_properties(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from walk_properties(item)


def test_tool_schema_is_valid_draft_2020_12():
    schema = tools.tool_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    branches = schema["anyOf"]
    actions = [b["properties"]["action"]["const"] for b in branches if "action" in b["properties"]]
    assert actions == list(tools.ACTIONS)
    for branch in branches:
        assert branch["type"] == "object" and branch["additionalProperties"] is False
    required = {b["properties"]["action"]["const"]: b["required"] for b in branches if "action" in b["properties"]}
    assert required == {
        "initiate_call": ["action", "message"],
        "continue_call": ["action", "callId", "message"],
        "speak_to_user": ["action", "callId", "message"],
        "send_dtmf": ["action", "callId", "digits"],
        "transfer_call": ["action", "callId"],
        "end_call": ["action", "callId"],
        "get_status": ["action", "callId"],
    }
    initiate = branches[0]["properties"]
    assert set(initiate) == {"action", "message", "to", "mode", "dtmfSequence", "sessionKey", "requesterSessionKey",
                              "idempotencyKey", "at", "record", "amd"}
    assert initiate["mode"]["enum"] == ["notify", "conversation"]
    legacy = branches[-1]
    assert set(legacy["properties"]) == {"mode", "to", "sid", "message", "sessionKey", "requesterSessionKey", "dtmfSequence"}
    assert legacy["properties"]["mode"]["enum"] == ["call", "status"]
    assert "required" not in legacy


def test_every_property_has_a_description():
    props = list(walk_properties(tools.tool_schema())) + list(walk_properties(tools.openai_function()))
    assert len(props) > 30
    for name, prop in props:
        assert isinstance(prop.get("description"), str) and len(prop["description"]) > 10, name
    to = tools.tool_schema()["anyOf"][0]["properties"]["to"]["description"]
    assert "E.164" in to and "toNumber" in to


def test_openai_function_form():
    function = tools.openai_function()
    assert function["type"] == "function"
    assert function["function"]["name"] == "voice_call"
    assert function["function"]["description"].startswith("Make phone calls and have voice conversations")
    parameters = function["function"]["parameters"]
    Draft202012Validator.check_schema(parameters)
    assert parameters["type"] == "object"
    assert not {"anyOf", "oneOf", "allOf"} & set(parameters)
    assert parameters["properties"]["action"]["enum"] == list(tools.ACTIONS)
    assert parameters["required"] == ["action"]
    assert set(parameters["properties"]) == {
        "action", "callId", "message", "to", "mode", "digits", "dtmfSequence", "sessionKey", "requesterSessionKey",
        "idempotencyKey", "at", "record", "amd", "transferTo", "transferMode", "summary",
    }
    action_help = parameters["properties"]["action"]["description"]
    for action in tools.ACTIONS:
        assert action in action_help
    assert "send_dtmf: callId and digits" in action_help
    check = Draft202012Validator(parameters)
    assert check.is_valid({"action": "send_dtmf", "callId": "abc", "digits": "1#"})
    assert not check.is_valid({"action": "dial"})
    assert not check.is_valid({"message": "hi"})


def test_examples_cover_every_action_and_validate():
    examples = tools.tool_document()["examples"]
    check = validator()
    for example in examples:
        assert example["title"] and isinstance(example["arguments"], dict)
        errors = list(check.iter_errors(example["arguments"]))
        assert errors == [], (example["title"], errors)
    actions = {e["arguments"].get("action") for e in examples}
    assert actions == set(tools.ACTIONS) | {None}
    legacy = [e["arguments"] for e in examples if "action" not in e["arguments"]]
    assert {"mode": "status", "sid": "CALL_ID"} in legacy
    for example in examples:
        arguments = example["arguments"]
        if arguments.get("action") not in (None, "initiate_call"):
            assert arguments["callId"] == "CALL_ID"


@pytest.mark.parametrize(
    "arguments",
    [
        {"action": "initiate_call", "to": "+15550001234"},  # message missing
        {"action": "initiate_call", "message": "Hi", "colour": "blue"},  # unknown property
        {"action": "initiate_call", "message": "Hi", "mode": "shout"},  # bad mode
        {"action": "initiate_call", "message": "Hi", "mode": "status"},  # a legacy mode
        {"action": "initiate_call", "message": "Hi", "to": "5550001234"},  # not E.164
        {"action": "end_call", "callId": "abc", "sid": "abc"},  # action with a legacy-only field
        {"action": "get_status", "sid": "abc"},
        {"action": "continue_call", "callId": "abc"},
        {"action": "speak_to_user", "message": "hi"},
        {"action": "send_dtmf", "callId": "abc", "digits": "12a"},
        {"action": "end_call"},
        {"action": "hang_up", "callId": "abc"},
        {"mode": "conversation", "to": "+15550001234"},  # legacy takes call|status only
        {"mode": "status", "sid": "abc", "callId": "abc"},
        {"action": None, "mode": "status", "sid": "abc"},  # the legacy form has no action key
        "end_call",
    ],
)
def test_schema_rejects_invalid_arguments(arguments):
    assert not validator().is_valid(arguments)


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"mode": "call", "to": "+15550001234", "message": "Hi"},
        {"action": "initiate_call", "message": "Hi", "dtmfSequence": "ww12#", "mode": "conversation", "sessionKey": "s", "requesterSessionKey": "r"},
        {"action": "send_dtmf", "callId": "abc", "digits": "1w2,p#*"},
    ],
)
def test_schema_accepts_valid_arguments(arguments):
    assert validator().is_valid(arguments)


# --- the served document -------------------------------------------------------------------


def test_tool_document_shape():
    document = tools.tool_document()
    assert set(document) == {"name", "description", "parameters", "openai", "examples"}
    assert document["name"] == tools.TOOL_NAME == "voice_call"
    assert document["description"] == tools.TOOL_DESCRIPTION
    assert document["parameters"] == tools.tool_schema()
    assert document["openai"] == tools.openai_function()
    document["examples"][0]["arguments"]["action"] = "changed"
    assert tools.tool_document()["examples"][0]["arguments"]["action"] == "initiate_call"


def test_view_serves_the_document_and_refuses_other_methods():
    factory = RequestFactory()
    response = tools.tool_document_view(factory.get("/voice/tools/voice_call.json"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == tools.tool_document()
    assert tools.tool_document_view(factory.head("/voice/tools/voice_call.json")).status_code == 200
    refused = tools.tool_document_view(factory.post("/voice/tools/voice_call.json", {}))
    assert refused.status_code == 405
    assert refused["Allow"] == "GET, HEAD"


@pytest.mark.urls(__name__)
def test_view_through_a_url(client):
    response = client.get("/voice/tools/voice_call.json")
    assert response.status_code == 200
    assert response.json()["openai"]["function"]["name"] == "voice_call"
    assert client.put("/voice/tools/voice_call.json").status_code == 405


# --- executing -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_examples_run_in_order_on_the_mock_carrier(configure, outbox):
    configure({"toNumber": "+15550009999", "maxConcurrentCalls": 3})
    call_id = None
    for example in tools.tool_document()["examples"]:
        arguments = json.loads(json.dumps(example["arguments"]).replace('"CALL_ID"', json.dumps(call_id)))
        action = arguments.get("action")
        if action == "continue_call":
            caller = reply_when_listening(call_id, "Yes, Tuesday works.")
            details = run(arguments)
            caller.join(5)
        elif action == "transfer_call":
            # The example's call was hung up by then: a new conversation, answered, is handed off.
            arguments["callId"] = run({"action": "initiate_call", "message": "Hello."})["callId"]
            event_process(event=CallAnswered(call_id=arguments["callId"]))
            details = run(arguments)
        else:
            details = run(arguments)

        if action == "continue_call":
            assert details == {"success": True, "transcript": "Yes, Tuesday works."}
        elif action == "initiate_call" and call_id is None:
            assert set(details) == {"callId", "initiated"} and details["initiated"] is True
            call_id = details["callId"]
            event_process(event=CallAnswered(call_id=call_id))
        elif action == "initiate_call":
            assert details["initiated"] is True and details["callId"] != call_id
            notify = Call.objects.get(pk=details["callId"])
            assert (notify.to_number, notify.mode) == ("+15550009999", "notify")
        elif action == "speak_to_user":
            assert details == {"success": True}
            assert (outbox[-1].action, outbox[-1].params["text"]) == ("play_tts", "One moment while I check the calendar.")
        elif action == "send_dtmf":
            assert details == {"success": True}
            assert (outbox[-1].action, outbox[-1].params["digits"]) == ("send_dtmf", "1")
        elif action == "get_status":
            assert details["found"] is True
            assert details["call"]["callId"] == call_id and details["call"]["state"] not in ("hangup-bot", "completed")
            assert set(details["call"]) <= SUMMARY_KEYS
        elif action == "end_call":
            assert details == {"success": True}
            assert outbox[-1].action == "hangup_call"
        elif action == "transfer_call":
            assert details["success"] is True and details["status"] == "dialing" and details["mode"] == "warm"
            assert (outbox[-1].action, outbox[-1].params["target"]) == ("warm_transfer", "+15550009876")
            assert outbox[-1].params["summary"] == "The caller wants to move their Tuesday appointment."
            assert Call.objects.get(pk=arguments["callId"]).end_reason == "transferred"
        else:
            assert arguments == {"mode": "status", "sid": call_id}
            assert details["found"] is True
            assert (details["call"]["callId"], details["call"]["state"]) == (call_id, "hangup-bot")
            assert "transcript" not in details["call"] and "metadata" not in details["call"]

    call = Call.objects.get(pk=call_id)
    assert list(call.transcript_entries.values_list("speaker", "text")) == [
        ("bot", "Hi, this is the clinic calling about your appointment."),
        ("bot", "Does Tuesday at 10am work for you?"),
        ("user", "Yes, Tuesday works."),
        ("bot", "One moment while I check the calendar."),
    ]


@pytest.mark.django_db(transaction=True)
def test_continue_by_the_carrier_call_id():
    call_id = answered_call()
    provider_call_id = Call.objects.get(pk=call_id).provider_call_id
    caller = reply_when_listening(call_id, "Tomorrow is fine.")
    details = run({"action": "continue_call", "callId": provider_call_id, "message": "When suits you?"})
    caller.join(5)
    assert details == {"success": True, "transcript": "Tomorrow is fine."}


def test_continue_times_out_with_an_error(configure):
    configure({"transcriptTimeoutMs": 100})
    call_id = answered_call()
    assert run({"action": "continue_call", "callId": call_id, "message": "Hello?"}) == {
        "error": "Timed out waiting for transcript after 100ms"
    }


def test_initiate_places_a_call_with_the_given_fields(outbox):
    details = run(
        {
            "action": "initiate_call", "to": " +15550001234 ", "message": "  Hi there ", "mode": "conversation",
            "dtmfSequence": "ww12#", "sessionKey": "my-thread", "requesterSessionKey": "agent:main:chat",
        },
        agent_id="ops",
    )
    call = Call.objects.get(pk=details["callId"])
    assert details == {"callId": str(call.pk), "initiated": True}
    assert (call.to_number, call.agent_id, call.session_key) == ("+15550001234", "ops", "agent:ops:my-thread")
    assert call.initial_message == "Hi there"
    assert call.mode == "conversation"
    assert call.requester_session_key == "agent:main:chat"
    assert outbox[0].params["dtmf_sequence"] == "ww12#"


def test_initiate_with_an_idempotency_key_places_one_call(outbox):
    arguments = {"action": "initiate_call", "to": "+15550001234", "message": "Hi", "idempotencyKey": "tool-req-1"}
    first, again = run(arguments), run(arguments)
    assert first == again == {"callId": first["callId"], "initiated": True}
    assert [request.action for request in outbox] == ["initiate_call"]
    assert run({**arguments, "idempotencyKey": "x" * 256}) == {"error": "idempotencyKey: at most 255 characters"}


def test_trusted_session_key_wins_over_the_arguments():
    details = run(
        {"action": "initiate_call", "to": "+15550001234", "message": "Hi", "requesterSessionKey": "spoofed"},
        session_key="agent:main:telegram:42",
    )
    assert Call.objects.get(pk=details["callId"]).requester_session_key == "agent:main:telegram:42"


def test_initiate_ignores_an_unknown_mode(configure):
    configure({"outbound": {"defaultMode": "conversation"}})
    details = run({"action": "initiate_call", "to": "+15550001234", "message": "Hi", "mode": "shout"})
    assert Call.objects.get(pk=details["callId"]).mode == "conversation"


def test_initiate_falls_back_to_the_configured_number(configure):
    assert run({"action": "initiate_call", "message": "Hi"}) == {"error": "to required"}
    configure({"toNumber": "+15550007777"})
    details = run({"action": "initiate_call", "message": "Hi", "to": "   "})
    assert Call.objects.get(pk=details["callId"]).to_number == "+15550007777"


@pytest.mark.parametrize(
    "arguments,error",
    [
        ({"action": "initiate_call", "to": "+15550001234"}, "message required"),
        ({"action": "initiate_call", "to": "+15550001234", "message": "   "}, "message required"),
        ({"action": "initiate_call", "to": "+15550001234", "message": 42}, "message required"),
        ({"action": "initiate_call", "message": "Hi", "to": "5550001234"}, "to: Expected E.164 format, e.g. +15550001234"),
        ({"action": "initiate_call", "to": "+15550001234", "message": "Hi", "dtmfSequence": "1"}, "dtmfSequence requires conversation mode"),
        ({"action": "continue_call", "message": "Hi"}, "callId and message required"),
        ({"action": "continue_call", "callId": "abc"}, "callId and message required"),
        ({"action": "continue_call", "callId": " ", "message": "Hi"}, "callId and message required"),
        ({"action": "speak_to_user", "callId": "abc"}, "callId and message required"),
        ({"action": "speak_to_user", "message": "Hi"}, "callId and message required"),
        ({"action": "send_dtmf", "callId": "abc"}, "callId and digits required"),
        ({"action": "send_dtmf", "digits": "1"}, "callId and digits required"),
        ({"action": "end_call"}, "callId required"),
        ({"action": "end_call", "callId": ["abc"]}, "callId required"),
        ({"action": "get_status"}, "callId required"),
        ({"action": "get_status", "callId": ""}, "callId required"),
        ({"mode": "status"}, "sid required for status"),
        ({"mode": "status", "sid": "  "}, "sid required for status"),
        ({"message": "Hi"}, "to required for call"),
        ({"action": "continue_call", "callId": "no-such-call", "message": "Hi"}, "Call not found"),
        ({"action": "speak_to_user", "callId": "no-such-call", "message": "Hi"}, "Call not found"),
        ({"action": "end_call", "callId": "no-such-call"}, "Call not found"),
    ],
)
def test_missing_and_bad_inputs_give_error_results(arguments, error, outbox):
    assert run(arguments) == {"error": error}
    assert not [r for r in outbox if r.action == "initiate_call"]


@pytest.mark.parametrize("arguments", [None, [], ["initiate_call"], "initiate_call", 7, True])
def test_arguments_must_be_an_object(arguments):
    assert run(arguments) == {"error": "arguments must be an object"}


@pytest.mark.parametrize("action", ["hang_up", "", "INITIATE_CALL", "initiate_call "])
def test_unknown_action(action):
    assert run({"action": action, "callId": "abc"}) == {"error": f"unknown action: {action}"}
    assert not Call.objects.exists()


def test_legacy_call_and_status(configure):
    details = run({"to": "+15550001234", "message": "Hi", "requesterSessionKey": "agent:main:chat"})
    assert set(details) == {"callId", "initiated"}
    call = Call.objects.get(pk=details["callId"])
    assert call_metadata(call) == {"mode": "notify", "initialMessage": "Hi", "requesterSessionKey": "agent:main:chat"}

    status = run({"mode": "status", "sid": details["callId"]})
    assert status["found"] is True
    assert status["call"]["callId"] == details["callId"] and status["call"]["state"] == "initiated"
    assert run({"mode": "status", "sid": call.provider_call_id})["call"]["callId"] == details["callId"]
    assert run({"mode": "status", "sid": "no-such-call"}) == {"found": False}

    # A non-string action is no action: the legacy form applies.
    assert run({"action": 3, "mode": "status", "sid": details["callId"]}) == status

    call_end(call_id=details["callId"])
    configure({"toNumber": "+15550007777", "maxConcurrentCalls": 2})
    explicit = run({"mode": "call"})  # mode call, no message, to from the config
    assert Call.objects.get(pk=explicit["callId"]).to_number == "+15550007777"


def test_status_is_redacted():
    call_id = answered_call()
    run({"action": "speak_to_user", "callId": call_id, "message": "Private words"})
    details = run({"action": "get_status", "callId": call_id})
    assert details["found"] is True
    call = details["call"]
    assert set(call) <= SUMMARY_KEYS
    assert {"callId", "provider", "direction", "state", "startedAt", "answeredAt"} <= set(call)
    assert (call["provider"], call["direction"]) == ("mock", "outbound")
    assert "Private words" not in json.dumps(details)
    assert run({"action": "get_status", "callId": "no-such-call"}) == {"found": False}


def test_actions_on_an_ended_call(outbox):
    call_id = answered_call()
    assert run({"action": "end_call", "callId": call_id}) == {"success": True}
    ended = run({"action": "continue_call", "callId": call_id, "message": "Still there?"})
    assert ended["error"].startswith("call is not active (last state=hangup-bot, endReason=hangup-bot, endedAt=")
    assert run({"action": "send_dtmf", "callId": call_id, "digits": "1"}) == {"error": "Call has ended"}
    assert run({"action": "end_call", "callId": call_id}) == {"success": True}  # ending twice succeeds
    assert [r.action for r in outbox].count("hangup_call") == 1


def test_dtmf_errors_from_the_service(monkeypatch):
    call_id = answered_call()
    assert run({"action": "send_dtmf", "callId": call_id, "digits": "12a"}) == {
        "error": "digits may only contain digits, *, #, comma, w, p"
    }
    monkeypatch.setattr(mock.MockCarrier, "supports_dtmf_send", False)
    assert run({"action": "send_dtmf", "callId": call_id, "digits": "1"}) == {"error": "mock does not support outbound DTMF"}


def test_carrier_failure_is_an_error_result(monkeypatch):
    def refuse(self, dial):
        raise RuntimeError("21211 invalid To number")

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", refuse)
    assert run({"action": "initiate_call", "to": "+15550001234", "message": "Hi"}) == {"error": "21211 invalid To number"}


def test_capacity_is_an_error_result():
    run({"action": "initiate_call", "to": "+15550001234", "message": "Hi"})
    assert run({"action": "initiate_call", "to": "+15550001235", "message": "Hi"}) == {
        "error": "Maximum concurrent calls (1) reached"
    }


def test_text_block_is_pretty_json_of_the_details():
    result = tools.execute({"action": "get_status", "callId": "nobody"})
    assert result["details"] == {"found": False}
    assert result["content"][0]["text"] == '{\n  "found": false\n}'
    details = run({"action": "initiate_call", "to": "+15550001234", "message": "Grüß Gott — ¿qué tal?", "mode": "conversation"})
    event_process(event=CallAnswered(call_id=details["callId"]))
    text = tools.execute({"action": "get_status", "callId": details["callId"]})["content"][0]["text"]
    assert text.startswith('{\n  "found": true,\n  "call": {\n    "callId": ')
    error = tools.execute({"action": "nope"})["content"][0]["text"]
    assert error == '{\n  "error": "unknown action: nope"\n}'
    assert "ü" in tools.execute({"action": "nope ü"})["content"][0]["text"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"action": "initiate_call", "to": "+15550001234", "message": "Hi"},
        {"action": "get_status", "callId": "abc"},
        {"action": "nope"},
        {"mode": "status", "sid": "abc"},
        {"mode": "call"},
        [],
        None,
    ],
)
def test_runtime_unavailable_comes_first(configure, arguments):
    configure({"enabled": False})
    assert run(arguments) == {"error": DISABLED}
    assert not Call.objects.exists()


def test_setup_incomplete_is_reported(configure):
    configure({"provider": "twilio"})
    details = run({"action": "end_call"})
    assert details["error"].startswith("Voice call setup incomplete: fromNumber: required")


def test_unexpected_exceptions_become_error_results(monkeypatch, caplog):
    def broken(*, call_id):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(services, "call_end_request", broken)
    with caplog.at_level(logging.ERROR, logger="calls.tools"):
        details = run({"action": "end_call", "callId": "abc"})
    assert details == {"error": "end failed"}
    record = next(r for r in caplog.records if r.name == "calls.tools")
    assert record.exc_info and "database on fire" in str(record.exc_info[1])


def test_unexpected_exception_in_the_runtime_check(monkeypatch):
    monkeypatch.setattr(services, "runtime_ready", lambda: (_ for _ in ()).throw(KeyError("x")))
    assert run({"action": "get_status", "callId": "abc"}) == {"error": "status failed"}
    assert run({"mode": "call"}) == {"error": "voice_call failed"}


def test_a_failed_manager_result_is_an_error(monkeypatch):
    monkeypatch.setattr(services, "call_speak_request", lambda **_: services.ActionResult(success=False, error="Realtime bridge is not active"))
    assert run({"action": "speak_to_user", "callId": "a", "message": "b"}) == {"error": "Realtime bridge is not active"}
    monkeypatch.setattr(services, "call_speak_request", lambda **_: services.ActionResult(success=False))
    assert run({"action": "speak_to_user", "callId": "a", "message": "b"}) == {"error": "speak failed"}


@pytest.mark.parametrize(
    "arguments,scope",
    [
        ({"action": "initiate_call", "message": "Hi"}, "write"),
        ({"action": "continue_call", "callId": "a", "message": "b"}, "write"),
        ({"action": "speak_to_user", "callId": "a", "message": "b"}, "write"),
        ({"action": "send_dtmf", "callId": "a", "digits": "1"}, "write"),
        ({"action": "end_call", "callId": "a"}, "write"),
        ({"action": "get_status", "callId": "a"}, "read"),
        ({"mode": "status", "sid": "a"}, "read"),
        ({"mode": " status ", "sid": "a"}, "read"),
        ({"mode": "call", "to": "+15550001234"}, "write"),
        ({}, "write"),
        ({"action": "unknown", "mode": "status"}, "write"),
        (None, "write"),
        ("get_status", "write"),
    ],
)
def test_required_scope(arguments, scope):
    assert tools.required_scope(arguments) == scope
