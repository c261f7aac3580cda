"""The `voice_call` agent tool: its parameter schema, OpenAI function form, served document and executor."""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from core.errors import VoiceCallError
from core.redact import redact
from core.phone import E164, SIP_URI

from . import selectors, services
from .services import DTMF_PATTERN, MODES

log = logging.getLogger(__name__)

TOOL_NAME = "voice_call"
TOOL_DESCRIPTION = (
    "Make phone calls and have voice conversations. Start with initiate_call (mode notify to say a "
    "message and hang up, mode conversation to keep the line open); on a conversation call use "
    "continue_call to say something and wait for the caller's reply, speak_to_user to say something "
    "without waiting, send_dtmf to press keypad digits, transfer_call to hand the caller to a person, get_status to check the call and end_call to "
    "hang up. Every result is JSON; failures come back as {\"error\": \"...\"}."
)

ACTIONS = ("initiate_call", "continue_call", "speak_to_user", "send_dtmf", "transfer_call", "end_call", "get_status")
READ_ACTIONS = ("get_status",)
LEGACY_MODES = ("call", "status")
CALL_ID_PLACEHOLDER = "CALL_ID"


ACTION_DESCRIPTIONS = {
    "initiate_call": "Place an outbound call; returns its callId.",
    "continue_call": "Say a message on a live call and wait for the caller's spoken reply (returned as transcript).",
    "speak_to_user": "Say a message on a live call without waiting for a reply.",
    "send_dtmf": "Press keypad digits on a live call (e.g. to navigate a phone menu).",
    "transfer_call": "Hand a live call to another number or SIP address (the call's configured transferTo when none is "
                     "given); the gateway leaves the call. Warm: the person answering first hears the summary.",
    "end_call": "Hang up a call.",
    "get_status": "Look up a call's state (no transcript).",
}

# What each action needs, in the words the flattened (OpenAI) form gives the model.
ACTION_FIELDS = {
    "initiate_call": "message (required); to, mode, dtmfSequence, sessionKey, requesterSessionKey, idempotencyKey, at, record, amd optional",
    "continue_call": "callId and message",
    "speak_to_user": "callId and message",
    "send_dtmf": "callId and digits",
    "transfer_call": "callId; transferTo, transferMode, summary optional (summary required when warm)",
    "end_call": "callId",
    "get_status": "callId",
}


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


FIELDS: dict[str, dict[str, Any]] = {
    "to": _string(
        "E.164 number to call, e.g. +15550001234; defaults to the configured toNumber",
        pattern=E164.pattern,
    ),
    "mode": _string(
        "notify: say the message, then hang up; conversation: say the message and keep the call open "
        "for continue_call, speak_to_user and send_dtmf. Defaults to the configured outbound mode",
        enum=list(MODES),
    ),
    "dtmfSequence": _string(
        "Keypad digits to press once the call connects, e.g. ww1234# (0-9, *, #; w, p or a comma "
        "pause); only with mode conversation",
        pattern=DTMF_PATTERN.pattern,
    ),
    "amd": _string(
        "Answering-machine detection for this call: off; detect (hang up on a machine, never start a "
        "conversation with one); voicemail (wait for the beep, leave the message, hang up). Defaults to the "
        "configured amd",
        enum=["off", "detect", "voicemail"],
    ),
    "sessionKey": _string(
        "Conversation session to attach the call to, e.g. my-thread; defaults to one per phone "
        "number or per call as configured",
        minLength=1,
    ),
    "requesterSessionKey": _string(
        "Session of whoever asked for the call, so results can be reported back to it",
        minLength=1,
    ),
    "idempotencyKey": _string(
        "Your own id for this call request (up to 255 characters); asking again with the same key returns "
        "the same call instead of placing a second one",
        minLength=1, maxLength=255,
    ),
    "at": _string(
        "Place the call later instead of now: an ISO 8601 time with its UTC offset, e.g. 2026-12-05T10:30:00+01:00, "
        "or a delay like +15m or +2h. The result says scheduled and when; end_call cancels it until then",
        minLength=1,
    ),
    "record": {
        "type": "boolean",
        "description": "true: the carrier records the call; false: no recording at all. Defaults to the configured recording",
    },
    "callId": _string(
        "The callId returned by initiate_call (the carrier's call id is accepted too)",
        minLength=1,
    ),
    "transferTo": _string(
        "Where to hand the call: an E.164 number (+15550001234) or a SIP URI (sip:desk@example.com); defaults to the "
        "transferTo configured for the call's number or agent",
        pattern=f"{E164.pattern}|{SIP_URI.pattern}",
    ),
    "transferMode": _string(
        "cold (default): connect the caller to the target at once; warm: call the target first and say the summary "
        "to them, then join the caller (not every carrier supports it)",
        enum=["cold", "warm"],
    ),
    "summary": _string(
        "Warm transfer: what to tell the person answering before the caller joins, e.g. Caller wants to move "
        "their Tuesday appointment",
        minLength=1,
    ),
    "digits": _string(
        "Keypad digits to press now, e.g. 1 or 12#: 0-9, *, #, and w, p or a comma for a pause",
        pattern=DTMF_PATTERN.pattern,
    ),
}

MESSAGES = {
    "initiate_call": "What to say when the call is answered, e.g. Hi, this is the clinic calling about your appointment.",
    "continue_call": "What to say to the caller before listening for their reply, e.g. Does Tuesday at 10am work for you?",
    "speak_to_user": "What to say to the caller; no reply is awaited, e.g. One moment while I check.",
}


def _message(action: str) -> dict[str, Any]:
    return _string(MESSAGES[action], minLength=1)


def _action_object(action: str, properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "title": action,
        "description": ACTION_DESCRIPTIONS[action],
        "properties": {"action": {"const": action, "description": ACTION_DESCRIPTIONS[action]}, **properties},
        "required": ["action", *required],
        "additionalProperties": False,
    }


def _legacy_object() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "legacy",
        "description": "Older form without action: mode call places a call, mode status looks one up by sid.",
        "properties": {
            "mode": _string(
                "call (default): place a call to `to` saying `message`; status: look up the call given by sid",
                enum=list(LEGACY_MODES),
            ),
            "to": FIELDS["to"],
            "sid": _string("The call to look up (required when mode is status): a callId or the carrier's call id", minLength=1),
            "message": _string("What to say when the call is answered (mode call)", minLength=1),
            "sessionKey": FIELDS["sessionKey"],
            "requesterSessionKey": FIELDS["requesterSessionKey"],
            "dtmfSequence": FIELDS["dtmfSequence"],
        },
        "additionalProperties": False,
    }


def tool_schema() -> dict[str, Any]:
    """The tool's parameters as JSON Schema (draft 2020-12): one object per action, plus the legacy form."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{TOOL_NAME} parameters",
        "anyOf": [
            _action_object(
                "initiate_call",
                {
                    "message": _message("initiate_call"),
                    "to": FIELDS["to"],
                    "mode": FIELDS["mode"],
                    "dtmfSequence": FIELDS["dtmfSequence"],
                    "sessionKey": FIELDS["sessionKey"],
                    "requesterSessionKey": FIELDS["requesterSessionKey"],
                    "idempotencyKey": FIELDS["idempotencyKey"],
                    "at": FIELDS["at"],
                    "record": FIELDS["record"],
                    "amd": FIELDS["amd"],
                },
                ["message"],
            ),
            _action_object("continue_call", {"callId": FIELDS["callId"], "message": _message("continue_call")}, ["callId", "message"]),
            _action_object("speak_to_user", {"callId": FIELDS["callId"], "message": _message("speak_to_user")}, ["callId", "message"]),
            _action_object("send_dtmf", {"callId": FIELDS["callId"], "digits": FIELDS["digits"]}, ["callId", "digits"]),
            _action_object(
                "transfer_call",
                {"callId": FIELDS["callId"], "transferTo": FIELDS["transferTo"], "transferMode": FIELDS["transferMode"],
                 "summary": FIELDS["summary"]},
                ["callId"],
            ),
            _action_object("end_call", {"callId": FIELDS["callId"]}, ["callId"]),
            _action_object("get_status", {"callId": FIELDS["callId"]}, ["callId"]),
            _legacy_object(),
        ],
    }


def openai_function() -> dict[str, Any]:
    """The same tool in OpenAI function-calling form (a flat object root: `action` plus optional fields)."""
    needs = "; ".join(f"{action}: {fields}" for action, fields in ACTION_FIELDS.items())
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "parameters": {
                "type": "object",
                "properties": {
                    "action": _string(f"What to do. Fields each action needs: {needs}.", enum=list(ACTIONS)),
                    "callId": FIELDS["callId"],
                    "message": _string(
                        "What to say: the opening message for initiate_call, the question for continue_call, "
                        "the words for speak_to_user",
                        minLength=1,
                    ),
                    "to": FIELDS["to"],
                    "mode": FIELDS["mode"],
                    "digits": FIELDS["digits"],
                    "transferTo": FIELDS["transferTo"],
                    "transferMode": FIELDS["transferMode"],
                    "summary": FIELDS["summary"],
                    "dtmfSequence": FIELDS["dtmfSequence"],
                    "sessionKey": FIELDS["sessionKey"],
                    "requesterSessionKey": FIELDS["requesterSessionKey"],
                    "idempotencyKey": FIELDS["idempotencyKey"],
                    "at": FIELDS["at"],
                    "record": FIELDS["record"],
                    "amd": FIELDS["amd"],
                },
                "required": ["action"],
                "additionalProperties": False,
            },
        },
    }


EXAMPLES: list[dict[str, Any]] = [
    {
        "title": "Call someone for a conversation",
        "arguments": {
            "action": "initiate_call",
            "to": "+15550001234",
            "message": "Hi, this is the clinic calling about your appointment.",
            "mode": "conversation",
        },
    },
    {
        "title": "Ask a question and wait for the answer",
        "arguments": {"action": "continue_call", "callId": CALL_ID_PLACEHOLDER, "message": "Does Tuesday at 10am work for you?"},
    },
    {
        "title": "Say something without waiting for a reply",
        "arguments": {"action": "speak_to_user", "callId": CALL_ID_PLACEHOLDER, "message": "One moment while I check the calendar."},
    },
    {
        "title": "Press 1 in a phone menu",
        "arguments": {"action": "send_dtmf", "callId": CALL_ID_PLACEHOLDER, "digits": "1"},
    },
    {
        "title": "Check on the call",
        "arguments": {"action": "get_status", "callId": CALL_ID_PLACEHOLDER},
    },
    {
        "title": "Hang up",
        "arguments": {"action": "end_call", "callId": CALL_ID_PLACEHOLDER},
    },
    {
        "title": "Check on a call (legacy form)",
        "arguments": {"mode": "status", "sid": CALL_ID_PLACEHOLDER},
    },
    {
        "title": "Leave a one-way message on the configured number, then hang up",
        "arguments": {"action": "initiate_call", "message": "Reminder: your appointment is tomorrow at 10am.", "mode": "notify"},
    },
    {
        "title": "Hand the caller to the front desk, telling them first what it is about",
        "arguments": {"action": "transfer_call", "callId": CALL_ID_PLACEHOLDER, "transferTo": "+15550009876",
                      "transferMode": "warm", "summary": "The caller wants to move their Tuesday appointment."},
    },
]


def tool_document() -> dict[str, Any]:
    """What GET /voice/tools/voice_call.json serves."""
    return {
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "parameters": tool_schema(),
        "openai": openai_function(),
        "examples": copy.deepcopy(EXAMPLES),
    }


def required_scope(arguments: Any) -> str:
    """The token scope a call with these arguments needs: "read" for lookups, else "write"."""
    if isinstance(arguments, dict):
        action = arguments.get("action")
        if isinstance(action, str):
            return "read" if action in READ_ACTIONS else "write"
        if _text(arguments, "mode") == "status":
            return "read"
    return "write"


def execute(arguments: Any, *, session_key: str | None = None, agent_id: str | None = None) -> dict[str, Any]:
    """Run one tool call; failures come back as {"error": ...} in the result, never as exceptions.

    `session_key` is the calling agent's own session (trusted: it wins over requesterSessionKey in the
    arguments); `agent_id` is passed to the call it places.
    """
    action = arguments.get("action") if isinstance(arguments, dict) else None
    name = action if isinstance(action, str) else "legacy"
    try:
        services.runtime_ready()
        result = _dispatch(arguments, session_key=session_key, agent_id=agent_id)
        if result.get("success") is False:
            result = {"error": result.get("error") or f"{_verb(name)} failed"}
    except VoiceCallError as exc:
        result = {"error": services.failure_message(exc, f"{_verb(name)} failed")}
    except Exception as exc:  # the agent gets an error result, never a traceback
        log.exception("%s tool action %s failed", TOOL_NAME, name)
        result = {"error": services.failure_message(exc, f"{_verb(name)} failed")}
    if "error" in result:  # the agent may repeat it anywhere: never a credential an upstream echoed
        result["error"] = redact(str(result["error"]))
    return _result(result)


def tool_document_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    return JsonResponse(tool_document())


# --- internals ------------------------------------------------------------------------------


def _result(obj: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(obj, indent=2, ensure_ascii=False)}], "details": obj}


def _text(arguments: dict[str, Any], key: str) -> str | None:
    """A string argument, stripped; anything else (or blank) counts as missing."""
    value = arguments.get(key)
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _verb(action: str) -> str:
    return {
        "initiate_call": "initiate",
        "continue_call": "continue",
        "speak_to_user": "speak",
        "send_dtmf": "dtmf",
        "transfer_call": "transfer",
        "end_call": "end",
        "get_status": "status",
    }.get(action, "voice_call")


def _dispatch(arguments: Any, *, session_key: str | None, agent_id: str | None) -> dict[str, Any]:
    if not isinstance(arguments, dict):
        return {"error": "arguments must be an object"}
    action = arguments.get("action")
    if not isinstance(action, str):
        return _legacy(arguments, session_key=session_key, agent_id=agent_id)
    handler = _HANDLERS.get(action)
    if handler is None:
        return {"error": f"unknown action: {action}"}
    return handler(arguments, session_key=session_key, agent_id=agent_id)


def _initiate(arguments: dict[str, Any], *, session_key: str | None, agent_id: str | None, missing_to: str = "to required") -> dict[str, Any]:
    return services.call_initiate_request(
        to=_text(arguments, "to"),
        message=_text(arguments, "message"),
        mode=_text(arguments, "mode"),  # an unknown mode means the configured default
        dtmf_sequence=_text(arguments, "dtmfSequence"),
        session_key=_text(arguments, "sessionKey"),
        requester_session_key=(session_key or "").strip() or _text(arguments, "requesterSessionKey"),
        agent_id=agent_id,
        idempotency_key=_text(arguments, "idempotencyKey"),
        missing_to=missing_to,
        at=_text(arguments, "at"),
        record=arguments.get("record"),  # not a boolean: refused, naming it
        amd=arguments.get("amd"),  # checked by call_initiate: anything but off, detect or voicemail is refused
    ).as_dict()


def _initiate_call(arguments: dict[str, Any], *, session_key: str | None, agent_id: str | None) -> dict[str, Any]:
    if not _text(arguments, "message"):
        return {"error": "message required"}
    return _initiate(arguments, session_key=session_key, agent_id=agent_id)


def _continue_call(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    return services.call_continue_request(call_id=_text(arguments, "callId"), message=_text(arguments, "message")).as_dict()


def _speak_to_user(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    return services.call_speak_request(call_id=_text(arguments, "callId"), message=_text(arguments, "message")).as_dict()


def _send_dtmf(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    return services.call_send_dtmf_request(call_id=_text(arguments, "callId"), digits=_text(arguments, "digits")).as_dict()


def _transfer_call(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    return services.call_transfer_request(
        call_id=_text(arguments, "callId"), to=_text(arguments, "transferTo") or _text(arguments, "to"),
        mode=_text(arguments, "transferMode"), summary=_text(arguments, "summary"), requested_by="tool",
    ).as_dict()


def _end_call(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    return services.call_end_request(call_id=_text(arguments, "callId")).as_dict()


def _get_status(arguments: dict[str, Any], **_: Any) -> dict[str, Any]:
    call_id = _text(arguments, "callId")
    if not call_id:
        return {"error": "callId required"}
    return selectors.call_status(ref=call_id)


def _legacy(arguments: dict[str, Any], *, session_key: str | None, agent_id: str | None) -> dict[str, Any]:
    if (_text(arguments, "mode") or "call") == "status":
        sid = _text(arguments, "sid")
        if not sid:
            return {"error": "sid required for status"}
        return selectors.call_status(ref=sid)
    # The legacy form's mode is call|status, not a call mode: the call gets the configured default.
    return _initiate({**arguments, "mode": None}, session_key=session_key, agent_id=agent_id, missing_to="to required for call")


_HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "initiate_call": _initiate_call,
    "continue_call": _continue_call,
    "speak_to_user": _speak_to_user,
    "send_dtmf": _send_dtmf,
    "transfer_call": _transfer_call,
    "end_call": _end_call,
    "get_status": _get_status,
}
