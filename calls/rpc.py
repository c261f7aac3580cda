"""POST /voice/rpc: JSON-RPC 2.0 (single and batch) over the call services, behind bearer tokens.

Error codes: -32700 parse error, -32600 invalid request, -32601 unknown method, -32602 invalid
params (and the reference's INVALID_REQUEST input errors), -32000 operational failure (the
reference's UNAVAILABLE), -32001 unauthenticated, -32003 the token's scope is too narrow,
-32603 an unexpected internal error. `error.data.code` carries the reference's code name.
"""
from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from core import jsonsafe
from core.call_context import call_scope
from core.errors import VoiceCallError
from core.jsonsafe import JsonInputError
from core.redact import redact
from voicecall_project.rpc_tokens import RpcToken

from . import selectors, services, tools
from .config import get_config
from .metrics import recorders as metrics
from .rpc_tokens import AuthError, authenticate
from .call_options import AMD_MODES
from .services import MODES, InputRejected

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 50

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAVAILABLE = -32000
UNAUTHENTICATED = -32001
FORBIDDEN = -32003


class RpcError(Exception):
    def __init__(self, code: int, message: str, kind: str) -> None:
        message = redact(message)  # RPC answers carry carrier and provider errors to the caller
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": {"code": self.kind}}


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message, "INVALID_REQUEST")


# --- methods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    scope: str | Callable[[dict[str, Any]], str]  # the narrowest token scope allowed, or how to tell from the params
    params: dict[str, type] | None  # name → str or bool; None: free-form (the tool checks its own)
    handler: Callable[[dict[str, Any]], Any]
    fallback: str  # the failure text when a service error has none

    def scope_for(self, params: dict[str, Any]) -> str:
        return self.scope(params) if callable(self.scope) else self.scope


def _mode(params: dict[str, Any]) -> str | None:
    mode = params.get("mode")
    if mode is not None and mode not in MODES:
        raise invalid_params(f"mode must be notify or conversation, got {mode!r}")
    return mode


def _amd(params: dict[str, Any]) -> str | None:
    amd = params.get("amd")
    if amd is not None and amd not in AMD_MODES:
        raise invalid_params(f"amd must be off, detect or voicemail, got {amd!r}")
    return amd


def _agent(params: dict[str, Any]) -> str | None:
    agent = params.get("agentId")
    if agent is None:
        return None
    config = get_config().config
    known = {name.lower(): name for name in (*config.agents, config.resolved_agent_id())}
    if agent.lower() not in known:
        raise InputRejected("agentId requires a trusted plugin caller and a valid agent id")
    return known[agent.lower()]


def _initiate(p: dict[str, Any]) -> dict[str, Any]:
    services.input_required(p.get("message"), message="message required")
    return services.call_initiate_request(
        to=p.get("to"), message=p["message"], mode=_mode(p), dtmf_sequence=p.get("dtmfSequence"),
        session_key=p.get("sessionKey"), requester_session_key=p.get("requesterSessionKey"),
        idempotency_key=p.get("idempotencyKey"), at=p.get("at"), record=p.get("record"), amd=_amd(p),
    ).as_dict()


def _start(p: dict[str, Any]) -> dict[str, Any]:
    agent = _agent(p)
    services.input_required(p.get("to"), message="to required")
    return services.call_initiate_request(
        to=p["to"], message=p.get("message"), mode=_mode(p), dtmf_sequence=p.get("dtmfSequence"),
        session_key=p.get("sessionKey"), requester_session_key=p.get("requesterSessionKey"), agent_id=agent,
        idempotency_key=p.get("idempotencyKey"), at=p.get("at"), record=p.get("record"), amd=_amd(p),
    ).as_dict()


_CALL_MESSAGE = {"callId": str, "message": str}
_INITIATE = {
    "to": str, "message": str, "mode": str, "dtmfSequence": str, "sessionKey": str, "requesterSessionKey": str,
    "idempotencyKey": str, "at": str,  # at: a scheduled call (calls/dial_time.py)
    "record": bool,  # carrier recording for this call (calls/call_options.py)
    "amd": str,  # answering-machine detection: off, detect or voicemail (calls/call_options.py)
}

METHODS: dict[str, Method] = {
    "voicecall.initiate": Method("write", _INITIATE, _initiate, "initiate failed"),
    "voicecall.start": Method("write", {**_INITIATE, "agentId": str}, _start, "initiate failed"),
    "voicecall.continue": Method(
        "write", _CALL_MESSAGE,
        lambda p: services.call_continue_request(call_id=p.get("callId"), message=p.get("message")).as_dict(),
        "continue failed",
    ),
    "voicecall.continue.start": Method(
        "write", _CALL_MESSAGE,
        lambda p: services.continue_operation_start(call_id=p.get("callId"), message=p.get("message")).as_dict(),
        "continue failed",
    ),
    "voicecall.continue.result": Method(
        "read", {"operationId": str},
        lambda p: services.continue_operation_result(operation_id=p.get("operationId")).as_dict(),
        "continue failed",
    ),
    "voicecall.speak": Method(
        "write",
        {**_CALL_MESSAGE, "allowTwimlFallback": bool},
        lambda p: services.call_speak_request(
            call_id=p.get("callId"), message=p.get("message"), allow_twiml_fallback=p.get("allowTwimlFallback") is not False,
        ).as_dict(),
        "speak failed",
    ),
    "voicecall.dtmf": Method(
        "write", {"callId": str, "digits": str},
        lambda p: services.call_send_dtmf_request(call_id=p.get("callId"), digits=p.get("digits")).as_dict(),
        "dtmf failed",
    ),
    "voicecall.transfer": Method(
        "write", {"callId": str, "to": str, "mode": str, "summary": str},
        lambda p: services.call_transfer_request(
            call_id=p.get("callId"), to=p.get("to"), mode=p.get("mode"), summary=p.get("summary"), requested_by="rpc",
        ).as_dict(),
        "transfer failed",
    ),
    "voicecall.end": Method(
        "write", {"callId": str}, lambda p: services.call_end_request(call_id=p.get("callId")).as_dict(), "end failed"
    ),
    "voicecall.status": Method(
        "read", {"callId": str, "sid": str}, lambda p: selectors.call_status(ref=p.get("callId") or p.get("sid")), "status failed"
    ),
    # The agent tool over RPC: its own {error: ...} results, never a JSON-RPC error for bad input.
    "voicecall.tool": Method(tools.required_scope, None, tools.execute, "tool failed"),
}


def checked_params(name: str, method: Method, raw: Any) -> dict[str, Any]:
    """Named params with the declared types; strings trimmed, blank ones treated as absent."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        kind = "an array" if isinstance(raw, list) else type(raw).__name__
        raise invalid_params(f"params must be an object of named params, not {kind}")
    if method.params is None:
        return raw
    params: dict[str, Any] = {}
    for key, value in raw.items():
        expected = method.params.get(key)
        if expected is None:
            raise invalid_params(f"unknown param {key!r} ({name} takes {', '.join(method.params)})")
        if value is None:
            continue
        if not isinstance(value, expected):
            raise invalid_params(f"{key} must be a {'string' if expected is str else 'boolean'}")
        if expected is str:
            value = value.strip()
            if not value:
                continue
        params[key] = value
    return params


def call_method(name: str, raw_params: Any, token: RpcToken) -> Any:
    """Run one method (in a worker thread); raises RpcError for anything but a result."""
    method = METHODS.get(name)
    if method is None:
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {name}", "METHOD_NOT_FOUND")
    params = checked_params(name, method, raw_params)
    scope = method.scope_for(params)
    if not token.allows(scope):
        raise RpcError(FORBIDDEN, f"{name} needs a token with the {scope} scope", "FORBIDDEN")
    close_old_connections()
    try:
        with call_scope(_our_call_id(params)):  # the lines it logs name the call it is about
            return method.handler(params)
    except InputRejected as exc:
        raise invalid_params(exc.message) from None
    except VoiceCallError as exc:
        error = RpcError(UNAVAILABLE, services.failure_message(exc, method.fallback), "UNAVAILABLE")
        raise error from None
    except RpcError:
        raise
    except Exception:
        log.exception("RPC %s failed", name)
        raise RpcError(INTERNAL_ERROR, "Internal error", "INTERNAL") from None
    finally:
        close_old_connections()


def _our_call_id(params: dict[str, Any]) -> str | None:
    """The gateway's own id of the call a request names (a carrier's id is looked up later, if at all)."""
    value = params.get("callId")
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


# --- the JSON-RPC envelope ---------------------------------------------------------------------


def _response(request_id: Any, *, result: Any = None, error: RpcError | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0"}
    if error is not None:
        body["error"] = error.body()
    else:
        body["result"] = result
    body["id"] = request_id
    return body


def _envelope_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "a request must be a JSON object"
    if message.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if not isinstance(message.get("method"), str):
        return "method must be a string"
    request_id = message.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))):
        return "id must be a string, a number or null"
    if isinstance(request_id, float) and not math.isfinite(request_id):  # echoed back, it would not be JSON
        return "id must be a finite number"
    extra = set(message) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return f"unknown member {sorted(extra)[0]!r}"
    return None


async def handle_one(message: Any, token: RpcToken) -> dict[str, Any] | None:
    """The response to one request, or None for a notification (a request without an id)."""
    problem = _envelope_problem(message)
    if problem:
        request_id = message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), (str, int)) else None
        return _response(request_id, error=RpcError(INVALID_REQUEST, f"Invalid Request: {problem}", "INVALID_REQUEST"))
    notification = "id" not in message
    try:
        result = await sync_to_async(call_method, thread_sensitive=False)(message["method"], message.get("params"), token)
    except RpcError as error:
        return None if notification else _response(message.get("id"), error=error)
    return None if notification else _response(message.get("id"), result=result)


def _error_reply(code: int, message: str, kind: str, status: int, **headers: str) -> JsonResponse:
    response = JsonResponse(_response(None, error=RpcError(code, message, kind)), status=status)
    for key, value in headers.items():
        response[key.replace("_", "-")] = value
    return response


@csrf_exempt
async def rpc_view(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = _error_reply(INVALID_REQUEST, "Invalid Request: use POST", "INVALID_REQUEST", 405)
        response["Allow"] = "POST"
        return response
    try:
        token = authenticate(request.headers.get("Authorization"))  # in memory: no thread needed
    except AuthError as exc:
        metrics.refused("rpc_auth")
        return _error_reply(
            UNAUTHENTICATED, f"Unauthorized: {exc}", "UNAUTHORIZED", 401,
            WWW_Authenticate='Bearer realm="voicecall", error="invalid_token"',
        )
    too_large = _error_reply(INVALID_REQUEST, f"Invalid Request: body over {MAX_BODY_BYTES} bytes", "INVALID_REQUEST", 413)
    declared = request.headers.get("Content-Length") or "0"
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return too_large
    try:
        body = request.body
    except RequestDataTooBig:  # no Content-Length, and over Django's own limit
        return too_large
    if len(body) > MAX_BODY_BYTES:
        return too_large
    try:
        message = jsonsafe.loads(body)
    except JsonInputError as exc:
        return _error_reply(PARSE_ERROR, f"Parse error: {exc}", "PARSE_ERROR", 400)

    if isinstance(message, list):
        if not message:
            return _error_reply(INVALID_REQUEST, "Invalid Request: empty batch", "INVALID_REQUEST", 400)
        if len(message) > MAX_BATCH:
            return _error_reply(INVALID_REQUEST, f"Invalid Request: batch over {MAX_BATCH} requests", "INVALID_REQUEST", 400)
        # Members run concurrently (a continue in a batch must not hold up a status read).
        replies = await asyncio.gather(*(handle_one(item, token) for item in message))
        replies = [reply for reply in replies if reply is not None]
        return JsonResponse(replies, safe=False) if replies else HttpResponse(status=204)

    reply = await handle_one(message, token)
    if reply is None:
        return HttpResponse(status=204)
    status = 400 if reply.get("error", {}).get("code") == INVALID_REQUEST else 200
    return JsonResponse(reply, status=status)
