"""The realtime model's tools: their specs, parsing the model's arguments, running a call and recording it."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from core import jsonsafe
from core.jsonsafe import JsonInputError
from providers.realtime.base import ToolCall, ToolSpec

from ..runtime import get_runtime
from ..services import call_event_record

log = logging.getLogger(__name__)

END_CALL_TOOL = "openclaw_end_call"
CONSULT_TOOL = "openclaw_agent_consult"
TRANSFER_TOOL = "openclaw_transfer_call"
BUILT_IN_TOOLS = (END_CALL_TOOL, CONSULT_TOOL, TRANSFER_TOOL)

CONSULT_REASONS = (
    "explicit_agent_request",
    "private_context",
    "current_external_data",
    "workspace_task",
    "external_action",
    "device_action",
    "multi_step_orchestration",
)
QUESTION_ALIASES = ("question", "prompt", "query", "task")

# What the model is told while a consult runs (the bridge speaks it as its own response).
WORKING_RESULT = {"status": "working", "message": "Checking with the agent; say briefly that you are checking, then wait."}

# Arguments and outputs kept in call events: enough to read in the timeline, bounded in the database.
EVENT_TEXT_LIMIT = 2000

END_CALL_SPEC = ToolSpec(
    name=END_CALL_TOOL,
    description="End the phone call. Say your final words to the caller first, then call this.",
    parameters={"type": "object", "properties": {}},
)

TRANSFER_SPEC = ToolSpec(
    name=TRANSFER_TOOL,
    description=(
        "Hand the caller to a person at the number this line transfers to, when they ask for one or you cannot "
        "help. Tell the caller you are transferring them first, then call this; once handed over, the call "
        "leaves you."
    ),
    parameters={
        "type": "object",
        "properties": {
            "summary": {
                "type": "string",
                "description": "Who is calling and what they need, in a sentence or two: said to the person answering "
                               "before the caller joins, where the carrier can.",
            },
        },
    },
)

CONSULT_SPEC = ToolSpec(
    name=CONSULT_TOOL,
    description=(
        "Ask the full agent for deeper reasoning, current or private information, or to use tools; "
        "it answers with a short result to speak to the caller."
    ),
    parameters={
        "type": "object",
        "properties": {
            "question": {"type": "string", "description": "The concrete question or task for the agent."},
            "reason": {
                "type": "string",
                "enum": list(CONSULT_REASONS),
                "description": "Why the agent is needed.",
            },
            "context": {"type": "string", "description": "Relevant context or a summary of the conversation."},
            "responseStyle": {"type": "string", "description": "How the answer should sound (e.g. one short sentence)."},
            "confirmationId": {
                "type": "string",
                "description": "The id the agent issued, once the caller confirmed the action out loud.",
            },
        },
        "required": ["question", "reason"],
    },
)


class ToolArgumentError(ValueError):
    """The model's arguments cannot be used; the message is what the model is told."""


@dataclass(frozen=True)
class ConsultRequest:
    question: str
    reason: str
    context: str = ""
    response_style: str = ""
    confirmation_id: str = ""


@dataclass(frozen=True)
class ToolOutcome:
    """A tool call's result for the model; `end_call`: hang up once the model's last words played;
    `transferred`: the call was handed over (the bridge leaves it without hanging up)."""

    output: dict[str, Any]
    end_call: bool = False
    transferred: bool = False


def tool_specs(realtime, *, transfer: bool = False) -> tuple[ToolSpec, ...]:
    """End call first, then transfer (when the call's route or agent has transferTo), then consult (unless
    toolPolicy none), then the configured tools, built-ins never replaced."""
    specs = [END_CALL_SPEC]
    if transfer:
        specs.append(TRANSFER_SPEC)
    if realtime.tool_policy != "none":
        specs.append(CONSULT_SPEC)
    seen = {spec.name for spec in specs}
    for tool in realtime.tools:
        if tool.name in BUILT_IN_TOOLS:
            log.warning("realtime.tools: %s is a built-in tool name and cannot be replaced; dropped", tool.name)
            continue
        if tool.name in seen:
            log.warning("realtime.tools: %s is listed twice; the second one is dropped", tool.name)
            continue
        seen.add(tool.name)
        specs.append(ToolSpec(name=tool.name, description=tool.description or "",
                              parameters=tool.parameters.model_dump(exclude_none=True)))
    return tuple(specs)


def tool_waits_for_words(name: str) -> bool:
    """Whether what the model is saying must finish playing before the tool runs (the transfer cuts the audio)."""
    return name == TRANSFER_TOOL


def tool_is_slow(name: str) -> bool:
    """Whether the model should be told to say it is checking while this tool runs."""
    return name == CONSULT_TOOL


def parse_arguments(text: str | None) -> dict[str, Any]:
    """The model's argument JSON as an object; ToolArgumentError says what is wrong with it."""
    if text is None or not text.strip():
        return {}
    try:
        value = jsonsafe.loads(text)
    except JsonInputError as exc:
        raise ToolArgumentError(f"arguments: {exc}") from None
    if not isinstance(value, dict):
        raise ToolArgumentError(f"arguments must be a JSON object, not {type(value).__name__}")
    return value


def parse_consult(arguments: dict[str, Any]) -> ConsultRequest:
    """The consult's question (or its prompt/query/task alias), reason and hints; ToolArgumentError if unusable."""
    question = ""
    for key in QUESTION_ALIASES:
        value = arguments.get(key)
        if isinstance(value, str) and value.strip():
            question = value.strip()
            break
    if not question:
        raise ToolArgumentError("question required")
    reason = arguments.get("reason")
    if not isinstance(reason, str) or reason.strip() not in CONSULT_REASONS:
        raise ToolArgumentError("valid reason required (one of: " + ", ".join(CONSULT_REASONS) + ")")

    def text(key: str) -> str:
        value = arguments.get(key)
        return value.strip() if isinstance(value, str) else ""

    return ConsultRequest(question=question, reason=reason.strip(), context=text("context"),
                          response_style=text("responseStyle"), confirmation_id=text("confirmationId"))


def tool_run(*, call_id: str, call: ToolCall, partial: str = "") -> ToolOutcome:
    """Run one tool call of the model (on a worker thread); model mistakes become error results, never exceptions.

    `partial`: what the caller has said so far that is not final yet (goes with a consult).
    The call and its result are stored as call events (realtime.tool_call, realtime.tool_result).
    """
    started = time.monotonic()
    _record(call_id, "realtime.tool_call", call.call_id, {"name": call.name, "arguments": _clip(call.arguments)})
    try:
        outcome = _dispatch(call_id, call, partial)
    except ToolArgumentError as exc:
        log.info("call %s: tool %s: %s", call_id, call.name, exc)
        outcome = ToolOutcome({"error": str(exc)})
    except Exception as exc:  # a tool must answer the model whatever broke; the cause is logged
        log.exception("call %s: tool %s failed", call_id, call.name)
        outcome = ToolOutcome({"error": f"the tool {call.name} failed: {type(exc).__name__}"})
    payload: dict[str, Any] = {"name": call.name, "durationMs": round((time.monotonic() - started) * 1000)}
    if "error" in outcome.output:
        payload["error"] = str(outcome.output["error"])
    else:
        payload["output"] = _clip(json.dumps(outcome.output, ensure_ascii=False))
    if outcome.end_call:
        payload["endCall"] = True
    if outcome.transferred:
        payload["transferred"] = True
    _record(call_id, "realtime.tool_result", call.call_id, payload)
    return outcome


def _dispatch(call_id: str, call: ToolCall, partial: str) -> ToolOutcome:
    realtime = get_runtime().config.realtime
    if call.name == END_CALL_TOOL:
        return ToolOutcome({"ok": True}, end_call=True)
    if call.name == TRANSFER_TOOL:
        return _transfer(call_id, parse_arguments(call.arguments))
    consulting = call.name == CONSULT_TOOL and realtime.tool_policy != "none"
    custom = call.name not in BUILT_IN_TOOLS and call.name in {tool.name for tool in realtime.tools}
    if not (consulting or custom):
        # Said before anything about its arguments: a made-up name is the mistake to tell the model.
        shown = call.name[:64] or "(no name)"
        log.warning("call %s: the model called an unknown tool %s", call_id, shown)
        return ToolOutcome({"error": f"unknown tool {shown}"})
    arguments = parse_arguments(call.arguments)
    if consulting:
        from .consult import consult

        return ToolOutcome(consult(call_id=call_id, request=parse_consult(arguments), partial=partial))
    from .consult import custom_tool_run

    return ToolOutcome(custom_tool_run(call_id=call_id, name=call.name, arguments=arguments))


def _transfer(call_id: str, arguments: dict[str, Any]) -> ToolOutcome:
    """Hand the call to its route's or agent's transferTo; warm with the model's summary where the carrier can."""
    from core.errors import VoiceCallError

    from ..models import Call
    from ..services import call_transfer, transfer_default_target

    call = Call.objects.filter(pk=call_id).first()
    if call is None or not transfer_default_target(call):
        return ToolOutcome({"error": "transfers are not offered on this call"})
    summary = arguments.get("summary")
    summary = summary.strip() if isinstance(summary, str) else ""
    warm = bool(summary) and get_runtime().carrier.supports_warm_transfer
    try:
        result = call_transfer(call_id=call_id, mode="warm" if warm else "cold", summary=summary if warm else None,
                               requested_by="realtime")
    except VoiceCallError as exc:
        return ToolOutcome({"error": f"the transfer failed: {exc}"})
    return ToolOutcome({"ok": True, "status": "transferring", "mode": result.kind}, transferred=True)


def _record(call_id: str, kind: str, tool_call_id: str, payload: dict[str, Any]) -> None:
    # Per tool call id and kind: a model reusing an id (or a replay) stores its first record only.
    key = f"{kind}:{call_id}:{tool_call_id}"[:255] if tool_call_id else None
    try:
        call_event_record(call_id=call_id, type=kind, payload=payload, key=key)
    except Exception:  # the record is for people reading the timeline; the call goes on without it
        log.exception("call %s: storing %s failed", call_id, kind)


def _clip(text: str) -> str:
    return text if len(text) <= EVENT_TEXT_LIMIT else text[:EVENT_TEXT_LIMIT] + " [truncated]"

