"""POST /voice/rpc end to end: the real gateway (Daphne on a loopback port), bearer tokens, every method."""
from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import connections

from calls.clock import now
from calls.models import Call, ContinueOperation, OperationStatus
from calls.rpc_tokens import local_token
from calls.selectors import call_metadata
from calls.services import continue_operations_wait, event_process, processed_webhooks_purge
from core.events import CallAnswered, CallEnded, CallSpeech
from tests.waiting import wait_until
from voicecall_project.rpc_tokens import parse_rpc_tokens

WRITE = "w" * 8 + "write-token-0001"
READ = "r" * 8 + "read-token-00001"
TO = "+15550001111"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def tokens(settings):
    settings.VOICECALL_RPC_TOKENS = parse_rpc_tokens(f"write:{WRITE}, read:{READ}")


@pytest.fixture
def rpc(live_gateway):
    """rpc(method, params, token=WRITE) → the JSON-RPC reply (a dict), checking the HTTP status."""
    url = live_gateway + "/voice/rpc"

    def call(method, params=None, *, token=WRITE, status=200, request_id=1):
        body = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            body["params"] = params
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == status, response.text
        return response.json()

    call.url = url
    return call


def result_of(reply):
    assert "error" not in reply, reply
    return reply["result"]


def error_of(reply):
    assert "result" not in reply, reply
    return reply["error"]


def post(url, body, *, token=WRITE, **kwargs):
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(url, content=content, headers=headers, timeout=10, **kwargs)


def start_call(rpc, **params) -> str:
    result = result_of(rpc("voicecall.start", {"to": TO, "message": "Hello", **params}))
    return result["callId"]


def answered_call(rpc) -> str:
    call_id = start_call(rpc)
    event_process(event=CallAnswered(call_id=call_id))
    return call_id


def listening(call_id) -> bool:
    return Call.objects.filter(pk=call_id, state="listening", turns__status="pending").exists()


# --- authentication and scopes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "header, why",
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        (f"Bearer {WRITE} extra", "malformed Authorization header"),
        ("Bearer not-the-token-at-all", "invalid token"),
        (f"Bearer {WRITE}x", "invalid token"),
    ],
)
def test_requests_without_a_valid_token_are_refused_before_any_work(live_gateway, outbox, header, why):
    headers = {} if header is None else {"Authorization": header}
    body = {"jsonrpc": "2.0", "id": 1, "method": "voicecall.start", "params": {"to": TO}}
    response = httpx.post(live_gateway + "/voice/rpc", json=body, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    reply = response.json()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32001
    assert why in reply["error"]["message"]
    assert WRITE not in response.text
    assert not Call.objects.exists() and outbox == []


def test_a_bearer_scheme_in_any_case_is_accepted(live_gateway):
    body = {"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"}
    response = httpx.post(live_gateway + "/voice/rpc", json=body, headers={"Authorization": f"bearer {READ}"}, timeout=10)
    assert response.status_code == 200 and response.json()["result"] == {"found": True, "calls": []}


@pytest.mark.parametrize(
    "method, params",
    [
        ("voicecall.initiate", {"message": "Hi", "to": TO}),
        ("voicecall.start", {"to": TO}),
        ("voicecall.continue", {"callId": "x", "message": "Hi"}),
        ("voicecall.continue.start", {"callId": "x", "message": "Hi"}),
        ("voicecall.speak", {"callId": "x", "message": "Hi"}),
        ("voicecall.dtmf", {"callId": "x", "digits": "1"}),
        ("voicecall.transfer", {"callId": "x", "to": TO}),
        ("voicecall.end", {"callId": "x"}),
    ],
)
def test_a_read_token_cannot_change_anything(rpc, outbox, method, params):
    error = error_of(rpc(method, params, token=READ))
    assert error["code"] == -32003
    assert error["data"] == {"code": "FORBIDDEN"}
    assert error["message"] == f"{method} needs a token with the write scope"
    assert not Call.objects.exists() and outbox == []


def test_a_read_token_reads_status_and_operation_results(rpc):
    call_id = start_call(rpc)
    assert result_of(rpc("voicecall.status", {"callId": call_id}, token=READ))["call"]["callId"] == call_id
    assert error_of(rpc("voicecall.continue.result", {"operationId": str(uuid.uuid4())}, token=READ))["message"] == (
        "operation not found"
    )


@pytest.mark.skipif(django_settings.VOICECALL_MODE != "embedded",
                    reason="the local token is a file only in the embedded mode")
def test_the_local_token_file_is_a_write_token(rpc, settings):
    token = local_token(settings.DATA_DIR)
    assert token.scope == "write"
    assert (settings.DATA_DIR / "rpc_token").stat().st_mode & 0o077 == 0  # readable by its owner only
    assert result_of(rpc("voicecall.start", {"to": TO}, token=token.token))["initiated"] is True


def test_the_local_token_is_derived_from_secret_key_in_the_distributed_mode(rpc, settings, tmp_path):
    """Every node sharing SECRET_KEY accepts the CLI's token, whatever its data directory."""
    settings.VOICECALL_MODE = "distributed"
    local_token.cache_clear()
    try:
        token = local_token(tmp_path / "one-node")
        assert token == local_token(tmp_path / "another-node")
        assert token.scope == "write" and token.source == "derived from SECRET_KEY"
        assert not (tmp_path / "one-node" / "rpc_token").exists()
        settings.DATA_DIR = tmp_path / "one-node"
        assert result_of(rpc("voicecall.start", {"to": TO}, token=token.token))["initiated"] is True
        settings.SECRET_KEY = "another-key-" + "x" * 40
        local_token.cache_clear()
        assert local_token(tmp_path / "one-node").token != token.token
    finally:
        local_token.cache_clear()


@pytest.mark.parametrize(
    "raw, problem",
    [
        ("admin:" + "a" * 20, "VOICECALL_RPC_TOKENS entry 1: scope must be read or write, got 'admin'"),
        ("a" * 20, 'VOICECALL_RPC_TOKENS entry 1: expected "scope:token"'),
        ("write:short", "VOICECALL_RPC_TOKENS entry 1: the token must be at least 16 characters"),
        ("write:" + "a" * 20 + ", read:has space in it", "VOICECALL_RPC_TOKENS entry 2: the token may only use"),
        ("write:" + "a" * 20 + ",read:" + "a" * 20, "VOICECALL_RPC_TOKENS entry 2: the same token is listed twice"),
    ],
)
def test_bad_token_settings_name_the_entry(raw, problem):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured) as excinfo:
        parse_rpc_tokens(raw)
    assert str(excinfo.value).startswith(problem)


def test_token_settings_parse_scopes_and_skip_blank_entries():
    tokens = parse_rpc_tokens(" write:" + "a" * 16 + " ,, read:" + "b" * 16 + "==,")
    assert [(t.scope, t.token) for t in tokens] == [("write", "a" * 16), ("read", "b" * 16 + "==")]
    assert tokens[0].allows("read") and tokens[0].allows("write")
    assert tokens[1].allows("read") and not tokens[1].allows("write")


# --- the JSON-RPC envelope ----------------------------------------------------------------------


def test_malformed_json_is_a_parse_error(rpc):
    response = post(rpc.url, b'{"jsonrpc": "2.0", "method": ')
    assert response.status_code == 400
    reply = response.json()
    assert reply["id"] is None and reply["error"]["code"] == -32700
    assert reply["error"]["message"].startswith("Parse error")


def test_a_body_that_is_not_utf8_is_a_parse_error(rpc):
    response = post(rpc.url, b"\xff\xfe{}")
    assert response.status_code == 400 and response.json()["error"]["code"] == -32700


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"jsonrpc": "1.0", "id": 1, "method": "voicecall.status"}, 'jsonrpc must be "2.0"'),
        ({"id": 1, "method": "voicecall.status"}, 'jsonrpc must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "method must be a string"),
        ({"jsonrpc": "2.0", "id": 1}, "method must be a string"),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "voicecall.status"}, "id must be a string, a number or null"),
        ({"jsonrpc": "2.0", "id": True, "method": "voicecall.status"}, "id must be a string, a number or null"),
        ({"jsonrpc": "2.0", "id": 1, "method": "voicecall.status", "extra": 1}, "unknown member 'extra'"),
        ("just a string", "a request must be a JSON object"),
        (7, "a request must be a JSON object"),
    ],
)
def test_invalid_requests(rpc, body, problem):
    response = post(rpc.url, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32600
    assert error["message"] == f"Invalid Request: {problem}"


def test_an_invalid_request_keeps_a_usable_id(rpc):
    response = post(rpc.url, {"jsonrpc": "1.0", "id": "abc", "method": "voicecall.status"})
    assert response.json()["id"] == "abc"


def test_unknown_method(rpc):
    error = error_of(rpc("voicecall.nope"))
    assert error == {"code": -32601, "message": "Method not found: voicecall.nope", "data": {"code": "METHOD_NOT_FOUND"}}


@pytest.mark.parametrize("request_id", ["req-7", 7, 7.5, None])
def test_the_id_is_echoed(rpc, request_id):
    reply = rpc("voicecall.status", request_id=request_id)
    assert reply["id"] == request_id and reply["jsonrpc"] == "2.0"


def test_a_notification_runs_and_gets_no_body(rpc):
    response = post(rpc.url, {"jsonrpc": "2.0", "method": "voicecall.start", "params": {"to": TO}})
    assert response.status_code == 204 and response.content == b""
    assert Call.objects.filter(to_number=TO).count() == 1


def test_only_post(rpc):
    response = httpx.get(rpc.url, headers={"Authorization": f"Bearer {WRITE}"})
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert response.json()["error"]["code"] == -32600


def test_an_oversized_body_is_refused(rpc):
    response = post(rpc.url, b"[" + b" " * (1024 * 1024) + b"]")
    assert response.status_code == 413 and response.json()["error"]["code"] == -32600


# --- batches ----------------------------------------------------------------------------------


def test_a_batch_answers_each_request_and_skips_notifications(rpc, configure):
    configure({"maxConcurrentCalls": 5})
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "voicecall.start", "params": {"to": TO}},
        {"jsonrpc": "2.0", "method": "voicecall.start", "params": {"to": "+15550002222"}},
        {"jsonrpc": "2.0", "id": "b", "method": "voicecall.nope"},
        {"jsonrpc": "2.0", "id": "c", "method": "voicecall.start", "params": {}},
        1,
        {"jsonrpc": "2.0", "id": "d", "method": "voicecall.status"},
    ]
    response = post(rpc.url, batch)
    assert response.status_code == 200
    replies = response.json()
    assert [reply["id"] for reply in replies] == ["a", "b", "c", None, "d"]
    assert replies[0]["result"]["initiated"] is True
    assert replies[1]["error"]["code"] == -32601
    assert replies[2]["error"] == {"code": -32602, "message": "to required", "data": {"code": "INVALID_REQUEST"}}
    assert replies[3]["error"]["code"] == -32600
    assert "result" in replies[4]
    assert set(Call.objects.values_list("to_number", flat=True)) == {TO, "+15550002222"}


def test_a_batch_of_notifications_gets_no_body(rpc):
    response = post(rpc.url, [{"jsonrpc": "2.0", "method": "voicecall.status"}] * 2)
    assert response.status_code == 204


def test_a_batch_applies_scopes_per_request(rpc):
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "voicecall.start", "params": {"to": TO}},
        {"jsonrpc": "2.0", "id": 2, "method": "voicecall.status"},
    ]
    replies = post(rpc.url, batch, token=READ).json()
    assert replies[0]["error"]["code"] == -32003
    assert replies[1]["result"] == {"found": True, "calls": []}


@pytest.mark.parametrize("batch, problem", [([], "empty batch"), ([{"jsonrpc": "2.0", "method": "x"}] * 51, "batch over 50")])
def test_bad_batches(rpc, batch, problem):
    response = post(rpc.url, batch)
    assert response.status_code == 400
    assert problem in response.json()["error"]["message"]


# --- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("voicecall.start", [TO], "params must be an object of named params, not an array"),
        ("voicecall.start", "x", "params must be an object of named params, not str"),
        ("voicecall.start", {"to": 15550001111}, "to must be a string"),
        ("voicecall.initiate", {"message": ["Hi"]}, "message must be a string"),
        ("voicecall.speak", {"callId": "x", "message": "Hi", "allowTwimlFallback": "no"}, "allowTwimlFallback must be a boolean"),
        ("voicecall.start", {"to": TO, "mode": "shout"}, "mode must be notify or conversation, got 'shout'"),
        ("voicecall.end", {"callid": "x"}, "unknown param 'callid' (voicecall.end takes callId)"),
        ("voicecall.status", {"callId": 5}, "callId must be a string"),
    ],
)
def test_wrong_params_are_invalid_params(rpc, outbox, method, params, message):
    error = error_of(rpc(method, params))
    assert error == {"code": -32602, "message": message, "data": {"code": "INVALID_REQUEST"}}
    assert not Call.objects.exists() and outbox == []


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("voicecall.initiate", {}, "message required"),
        ("voicecall.initiate", {"message": "   "}, "message required"),
        ("voicecall.start", {"message": "Hi"}, "to required"),
        ("voicecall.continue", {"callId": "x"}, "callId and message required"),
        ("voicecall.continue", {"message": "Hi"}, "callId and message required"),
        ("voicecall.continue.start", {"callId": " "}, "callId and message required"),
        ("voicecall.continue.result", {}, "operationId required"),
        ("voicecall.speak", {"callId": "x"}, "callId and message required"),
        ("voicecall.dtmf", {"callId": "x"}, "callId and digits required"),
        ("voicecall.dtmf", {"digits": "1"}, "callId and digits required"),
        ("voicecall.end", {}, "callId required"),
        ("voicecall.continue", {"callId": "no-such-call", "message": "Hi"}, "Call not found"),
        ("voicecall.speak", {"callId": "no-such-call", "message": "Hi"}, "Call not found"),
        ("voicecall.start", {"to": TO, "agentId": "someone-else"}, "agentId requires a trusted plugin caller and a valid agent id"),
    ],
)
def test_missing_inputs_use_the_reference_messages(rpc, method, params, message):
    error = error_of(rpc(method, params))
    assert error == {"code": -32602, "message": message, "data": {"code": "INVALID_REQUEST"}}


def test_initiate_needs_a_number_from_the_params_or_the_config(rpc, configure):
    assert error_of(rpc("voicecall.initiate", {"message": "Hi"}))["message"] == "to required"
    configure({"toNumber": "+15550009999"})
    call_id = result_of(rpc("voicecall.initiate", {"message": "Hi"}))["callId"]
    call = Call.objects.get(pk=call_id)
    assert call.to_number == "+15550009999"
    assert call_metadata(call) == {"mode": "notify", "initialMessage": "Hi"}  # outbound.defaultMode


def test_initiate_and_start_pass_every_param_through(rpc, outbox, configure):
    configure({"maxConcurrentCalls": 2})
    result = result_of(rpc("voicecall.initiate", {
        "message": "Your code is ready", "to": TO, "mode": "notify", "sessionKey": "ops-line",
        "requesterSessionKey": "agent:main:chat:42",
    }))
    assert result == {"callId": result["callId"], "initiated": True}
    call = Call.objects.get(pk=result["callId"])
    assert call.mode == "notify"
    assert call.requester_session_key == "agent:main:chat:42"
    assert call.session_key.endswith("ops-line")
    assert [request.action for request in outbox] == ["initiate_call"]

    started = result_of(rpc("voicecall.start", {"to": "+15550002222", "mode": "conversation", "dtmfSequence": "12#", "agentId": "MAIN"}))
    call = Call.objects.get(pk=started["callId"])
    assert call.agent_id == "main"
    assert call.mode == "conversation"


def test_an_idempotency_key_places_one_call(rpc, outbox, configure):
    configure({"maxConcurrentCalls": 1})
    first = result_of(rpc("voicecall.initiate", {"to": TO, "message": "Hi", "idempotencyKey": "order-42"}))
    # A retried request (its answer was lost) gets the same call; no second dial, no second admission.
    again = result_of(rpc("voicecall.start", {"to": TO, "message": "Hi", "idempotencyKey": "order-42"}))
    assert again == first == {"callId": first["callId"], "initiated": True}
    assert [request.action for request in outbox] == ["initiate_call"]
    error = error_of(rpc("voicecall.initiate", {"to": "+15550002222", "message": "Hi", "idempotencyKey": "order-42"}))
    assert error["message"] == "idempotencyKey: already used for a call to another number"


def test_a_dial_the_carrier_has_not_accepted_within_the_wait_is_said_to_be_queued(rpc, outbox, settings, configure):
    from calls import background
    from providers.carriers import mock

    settings.VOICECALL_DIAL_WAIT_SECONDS = 0.2
    background.set_mode("thread")
    release = threading.Event()
    placed = mock.MockCarrier.initiate_call
    original, mock.MockCarrier.initiate_call = mock.MockCarrier.initiate_call, lambda self, dial: (release.wait(10), placed(self, dial))[1]
    try:
        result = result_of(rpc("voicecall.initiate", {"to": TO, "message": "Hi"}))
        assert result["initiated"] is False and result["queued"] is True
        assert result["status"].startswith("queued: ")
        release.set()
        wait_until(lambda: Call.objects.filter(pk=result["callId"], provider_call_id__isnull=False).exists(), "the dial")
    finally:
        release.set()
        mock.MockCarrier.initiate_call = original
        background.drain()


def test_operational_failures_are_unavailable_with_the_service_message(rpc, configure):
    error = error_of(rpc("voicecall.start", {"to": TO, "mode": "notify", "dtmfSequence": "1"}))
    assert error == {"code": -32000, "message": "dtmfSequence requires conversation mode", "data": {"code": "UNAVAILABLE"}}
    assert error_of(rpc("voicecall.start", {"to": "555"}))["message"].startswith("to: ")
    configure({"maxConcurrentCalls": 1})
    start_call(rpc)
    assert error_of(rpc("voicecall.start", {"to": "+15550002222"}))["message"] == "Maximum concurrent calls (1) reached"


def test_an_incomplete_setup_answers_every_method_with_the_list(rpc, configure):
    configure({"provider": "twilio"})
    error = error_of(rpc("voicecall.start", {"to": TO}))
    assert error["code"] == -32000
    assert error["message"].startswith("Voice call setup incomplete: ")
    assert "twilio.accountSid" in error["message"] or "accountSid" in error["message"]
    assert error_of(rpc("voicecall.status"))["message"] == error["message"]


def test_disabled_calls_are_unavailable(rpc, configure):
    configure({"enabled": False})
    assert error_of(rpc("voicecall.end", {"callId": "x"}))["message"].startswith("Voice calls are disabled")


def test_an_unexpected_error_is_an_internal_error_not_a_500(rpc, monkeypatch):
    from calls import services

    def explode(*, call_id):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(services, "call_end_request", explode)
    error = error_of(rpc("voicecall.end", {"callId": "x"}))
    assert error == {"code": -32603, "message": "Internal error", "data": {"code": "INTERNAL"}}


# --- the call methods -------------------------------------------------------------------------


def test_speak_dtmf_end_and_status(rpc, outbox):
    call_id = answered_call(rpc)
    outbox.clear()
    assert result_of(rpc("voicecall.speak", {"callId": call_id, "message": "Your order shipped"})) == {"success": True}
    assert [r.action for r in outbox] == ["play_tts"] and outbox[0].params["text"] == "Your order shipped"
    # The carrier's id works as well as ours.
    assert result_of(rpc("voicecall.speak", {"callId": f"mock-{call_id}", "message": "Again"})) == {"success": True}

    outbox.clear()
    assert result_of(rpc("voicecall.dtmf", {"callId": call_id, "digits": "12#"})) == {"success": True}
    assert [(r.action, r.params["digits"]) for r in outbox] == [("send_dtmf", "12#")]
    assert error_of(rpc("voicecall.dtmf", {"callId": call_id, "digits": "12x"}))["message"] == (
        "digits may only contain digits, *, #, comma, w, p"
    )

    status = result_of(rpc("voicecall.status", {"callId": call_id}))
    assert status["found"] is True
    assert set(status["call"]) == {"callId", "providerCallId", "provider", "direction", "state", "startedAt", "answeredAt"}
    assert result_of(rpc("voicecall.status", {"sid": f"mock-{call_id}"})) == status
    assert result_of(rpc("voicecall.status"))["calls"] == [status["call"]]

    assert result_of(rpc("voicecall.end", {"callId": call_id})) == {"success": True}
    assert result_of(rpc("voicecall.end", {"callId": call_id})) == {"success": True}  # already over: still fine
    ended = result_of(rpc("voicecall.status", {"callId": call_id}))["call"]
    assert ended["state"] == "hangup-bot" and ended["endReason"] == "hangup-bot" and "endedAt" in ended
    assert result_of(rpc("voicecall.status")) == {"found": True, "calls": []}
    assert result_of(rpc("voicecall.status", {"callId": "nobody"})) == {"found": False}


def test_end_of_an_unknown_call_is_unavailable(rpc):
    assert error_of(rpc("voicecall.end", {"callId": "nobody"})) == {
        "code": -32000, "message": "Call not found", "data": {"code": "UNAVAILABLE"},
    }


def test_message_actions_on_an_ended_call_say_why(rpc):
    call_id = answered_call(rpc)
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    ended_at = Call.objects.get(pk=call_id).ended_at
    stamp = ended_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ended_at.microsecond // 1000:03d}Z"
    expected = f"call is not active (last state=hangup-user, endReason=hangup-user, endedAt={stamp})"
    for method in ("voicecall.speak", "voicecall.continue", "voicecall.continue.start"):
        assert error_of(rpc(method, {"callId": call_id, "message": "Hi"}))["message"] == expected
    assert not ContinueOperation.objects.exists()


def test_speak_before_the_call_connects(rpc):
    call_id = start_call(rpc)
    Call.objects.filter(pk=call_id).update(provider_call_id=None)
    assert error_of(rpc("voicecall.speak", {"callId": call_id, "message": "Hi"}))["message"] == "Call not connected"


def test_blocking_continue_returns_the_transcript(rpc, outbox):
    call_id = answered_call(rpc)
    outbox.clear()
    replies = []
    worker = threading.Thread(
        target=lambda: replies.append(rpc("voicecall.continue", {"callId": call_id, "message": "Your order number?"}))
    )
    worker.start()
    wait_until(lambda: listening(call_id))
    event_process(event=CallSpeech(call_id=call_id, transcript="four two seven"))
    worker.join(10)
    assert result_of(replies[0]) == {"success": True, "transcript": "four two seven"}
    assert [r.action for r in outbox] == ["play_tts", "start_listening", "stop_listening"]


def test_continue_timeout_is_unavailable(rpc, configure):
    configure({"transcriptTimeoutMs": 200})
    call_id = answered_call(rpc)
    error = error_of(rpc("voicecall.continue", {"callId": call_id, "message": "Hello?"}))
    assert error == {"code": -32000, "message": "Timed out waiting for transcript after 200ms", "data": {"code": "UNAVAILABLE"}}


# --- continue operations ------------------------------------------------------------------------


def test_continue_start_returns_at_once_and_result_completes(rpc, configure):
    configure({"transcriptTimeoutMs": 60000, "tts": {"timeoutMs": 5000}})
    call_id = answered_call(rpc)
    started = result_of(rpc("voicecall.continue.start", {"callId": f"mock-{call_id}", "message": "Which day suits you?"}))
    assert started == {"operationId": started["operationId"], "status": "pending", "pollTimeoutMs": 60000 + 5000 + 30000}
    op_id = started["operationId"]
    assert result_of(rpc("voicecall.continue.result", {"operationId": op_id}, token=READ)) == {
        "operationId": op_id, "status": "pending", "pollTimeoutMs": 95000,
    }
    wait_until(lambda: listening(call_id))
    event_process(event=CallSpeech(call_id=call_id, transcript="Tuesday"))
    continue_operations_wait()
    completed = {"operationId": op_id, "status": "completed", "result": {"success": True, "transcript": "Tuesday"}}
    assert result_of(rpc("voicecall.continue.result", {"operationId": op_id})) == completed
    # Stored, not held by one process: a second read (from any process) gets the same answer.
    assert result_of(rpc("voicecall.continue.result", {"operationId": op_id})) == completed
    assert ContinueOperation.objects.get(pk=op_id).call_id == uuid.UUID(call_id)


def test_the_default_poll_timeout_uses_the_default_tts_timeout(rpc):
    call_id = answered_call(rpc)
    started = result_of(rpc("voicecall.continue.start", {"callId": call_id, "message": "Hi"}))
    assert started["pollTimeoutMs"] == 180000 + 8000 + 30000
    rpc("voicecall.end", {"callId": call_id})
    continue_operations_wait()


def test_a_failed_continue_operation_reports_the_error(rpc):
    call_id = answered_call(rpc)
    op_id = result_of(rpc("voicecall.continue.start", {"callId": call_id, "message": "Still there?"}))["operationId"]
    wait_until(lambda: listening(call_id))
    event_process(event=CallEnded(call_id=call_id, reason="hangup-user"))
    continue_operations_wait()
    result = result_of(rpc("voicecall.continue.result", {"operationId": op_id}))
    assert result["status"] == "failed" and result["operationId"] == op_id
    assert result["error"]  # the turn's own failure text, never empty
    assert set(result) == {"operationId", "status", "error"}


def test_a_second_continue_while_one_is_pending_fails_that_operation(rpc):
    call_id = answered_call(rpc)
    first = result_of(rpc("voicecall.continue.start", {"callId": call_id, "message": "One?"}))["operationId"]
    wait_until(lambda: listening(call_id))
    second = result_of(rpc("voicecall.continue.start", {"callId": call_id, "message": "Two?"}))["operationId"]
    wait_until(lambda: ContinueOperation.objects.filter(pk=second, status=OperationStatus.FAILED).exists())
    assert result_of(rpc("voicecall.continue.result", {"operationId": second}))["error"] == "Already waiting for transcript"
    event_process(event=CallSpeech(call_id=call_id, transcript="yes"))
    continue_operations_wait()
    assert result_of(rpc("voicecall.continue.result", {"operationId": first}))["result"]["transcript"] == "yes"


@pytest.mark.parametrize("op_id", ["5b4990eb-af91-442c-87d3-0dce9b5fdcd6", "not-a-uuid"], ids=["unknown-uuid", "not-a-uuid"])
def test_unknown_operations(rpc, op_id):
    assert error_of(rpc("voicecall.continue.result", {"operationId": op_id})) == {
        "code": -32602, "message": "operation not found", "data": {"code": "INVALID_REQUEST"},
    }


def test_an_abandoned_pending_operation_reads_as_failed_after_its_deadline(rpc):
    call_id = answered_call(rpc)
    op = ContinueOperation.objects.create(
        call_id=call_id, message="Hi", poll_timeout_ms=1000, deadline=now() - timedelta(seconds=1)
    )
    result = result_of(rpc("voicecall.continue.result", {"operationId": str(op.pk)}))
    assert result == {"operationId": str(op.pk), "status": "failed", "error": "continue operation did not finish within 1000ms"}
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED and op.completed_at is not None


def test_finished_operations_are_purged_after_five_minutes():
    call = Call.objects.create(provider="mock", direction="outbound", from_number="+15550000000", to_number=TO)
    moment = now()
    make = lambda **fields: ContinueOperation.objects.create(  # noqa: E731
        call=call, message="Hi", poll_timeout_ms=1000, deadline=moment + timedelta(minutes=10), **fields
    )
    old_done = make(status=OperationStatus.COMPLETED, completed_at=moment - timedelta(minutes=6))
    fresh_done = make(status=OperationStatus.FAILED, completed_at=moment - timedelta(minutes=4))
    pending = make()
    abandoned = make()
    ContinueOperation.objects.filter(pk=abandoned.pk).update(deadline=moment - timedelta(minutes=6))
    assert processed_webhooks_purge(at=moment) == 2
    assert set(ContinueOperation.objects.values_list("pk", flat=True)) == {fresh_done.pk, pending.pk}
    assert not ContinueOperation.objects.filter(pk__in=[old_done.pk, abandoned.pk]).exists()


# --- the agent tool over RPC ----------------------------------------------------------------------


def test_the_tool_runs_over_rpc_with_the_scope_of_its_action(rpc, outbox):
    details = result_of(rpc("voicecall.tool", {"action": "initiate_call", "to": TO, "message": "Hi"}))["details"]
    assert details["initiated"] is True
    status = result_of(rpc("voicecall.tool", {"action": "get_status", "callId": details["callId"]}, token=READ))
    assert status["details"]["found"] is True
    error = error_of(rpc("voicecall.tool", {"action": "end_call", "callId": details["callId"]}, token=READ))
    assert error["code"] == -32003
    # Bad tool arguments are the tool's own {error} result, not a JSON-RPC error.
    assert result_of(rpc("voicecall.tool", {"action": "end_call"}))["details"] == {"error": "callId required"}


def test_the_tool_document_is_served(live_gateway):
    response = httpx.get(live_gateway + "/voice/tools/voice_call.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document["name"] == "voice_call"
    assert document["openai"]["function"]["name"] == "voice_call"


# --- an agent-style client: the tool document and the RPC endpoint, nothing else ------------------


def test_an_agent_drives_a_whole_call_with_the_tool_document_and_rpc(live_gateway, outbox):
    import jsonschema

    schema = httpx.get(live_gateway + "/voice/tools/voice_call.json", timeout=10).json()["parameters"]
    url = live_gateway + "/voice/rpc"
    counter = iter(range(1, 100))

    def tool(arguments):
        jsonschema.validate(arguments, schema)  # the agent builds its calls from the schema alone
        reply = post(url, {"jsonrpc": "2.0", "id": next(counter), "method": "voicecall.tool", "params": arguments}).json()
        details = reply["result"]["details"]
        assert json.loads(reply["result"]["content"][0]["text"]) == details
        return details

    placed = tool({"action": "initiate_call", "to": TO, "message": "Hi, this is the clinic.", "mode": "conversation"})
    call_id = placed["callId"]
    event_process(event=CallAnswered(call_id=call_id))

    def caller_answers():
        wait_until(lambda: listening(call_id))
        event_process(event=CallSpeech(call_id=call_id, transcript="Thursday works"))
        connections.close_all()

    answering = threading.Thread(target=caller_answers)
    answering.start()
    assert tool({"action": "continue_call", "callId": call_id, "message": "Which day suits you?"}) == {
        "success": True, "transcript": "Thursday works",
    }
    answering.join(10)
    assert tool({"action": "speak_to_user", "callId": call_id, "message": "Booked for Thursday."}) == {"success": True}
    assert tool({"action": "send_dtmf", "callId": call_id, "digits": "1"}) == {"success": True}
    status = tool({"action": "get_status", "callId": call_id})
    assert status["found"] is True and status["call"]["state"] in {"speaking", "listening", "active"}
    assert "transcript" not in status["call"]
    assert tool({"action": "end_call", "callId": call_id}) == {"success": True}
    assert tool({"action": "get_status", "callId": call_id})["call"]["endReason"] == "hangup-bot"
    spoken = [r.params["text"] for r in outbox if r.action == "play_tts"]
    assert spoken == ["Hi, this is the clinic.", "Which day suits you?", "Booked for Thursday."]


def test_speak_with_realtime_on_and_no_fallback_reports_the_missing_bridge(rpc, outbox, monkeypatch):
    from types import SimpleNamespace

    from calls.runtime import get_runtime
    from calls.services import call_requests

    call_id = answered_call(rpc)
    outbox.clear()
    config = get_runtime().config
    realtime_on = config.model_copy(update={"realtime": config.realtime.model_copy(update={"enabled": True})})
    monkeypatch.setattr(call_requests, "get_runtime", lambda: SimpleNamespace(config=realtime_on))
    assert result_of(rpc("voicecall.speak", {"callId": call_id, "message": "Hi", "allowTwimlFallback": False})) == {
        "success": False, "error": "Realtime bridge is not active",
    }
    assert outbox == []
    # Fallback allowed (the default): the carrier's own TTS says it.
    assert result_of(rpc("voicecall.speak", {"callId": call_id, "message": "Hi"})) == {"success": True}
    assert [r.action for r in outbox] == ["play_tts"]


def test_transfer(rpc, outbox):
    from calls.models import Transfer

    call_id = answered_call(rpc)
    bad = error_of(rpc("voicecall.transfer", {"callId": call_id, "to": "front desk"}))
    assert (bad["code"], bad["data"]) == (-32602, {"code": "INVALID_REQUEST"})
    assert bad["message"].startswith("to: 'front desk' is not a transfer target. Expected an E.164 number")
    assert error_of(rpc("voicecall.transfer", {"callId": call_id, "to": TO, "mode": "warm"}))["message"].startswith(
        "summary required")
    assert error_of(rpc("voicecall.transfer", {"to": TO}))["message"] == "callId required"
    assert error_of(rpc("voicecall.transfer", {"callId": str(uuid.uuid4()), "to": TO}))["message"] == "Call not found"
    assert not Transfer.objects.exists()

    result = result_of(rpc("voicecall.transfer", {"callId": call_id, "to": "sip:desk@pbx.example.com"}))
    assert result["success"] is True and result["status"] == "dialing" and result["mode"] == "cold"
    assert [r.action for r in outbox][-1] == "transfer_call"
    assert Transfer.objects.get(pk=result["transferId"]).requested_by == "rpc"
    ended = error_of(rpc("voicecall.transfer", {"callId": call_id, "to": TO}))
    assert ended["code"] == -32602 and "has already ended (transferred)" in ended["message"]
