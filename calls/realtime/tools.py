"""The realtime model's tools: end the call, consult the agent (minimal: consult answers with an error result)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from providers.realtime.base import ToolCall

END_CALL_TOOL = "openclaw_end_call"
CONSULT_TOOL = "openclaw_agent_consult"
WORKING_RESULT = {"status": "working"}


@dataclass(frozen=True)
class ToolOutcome:
    output: dict[str, Any] = field(default_factory=dict)
    end_call: bool = False


def tool_is_slow(name: str) -> bool:
    """Tools the caller waits for (the model is told to say it is checking meanwhile)."""
    return name == CONSULT_TOOL


def tool_run(*, call_id: str, call: ToolCall, partial: str = "") -> ToolOutcome:
    """Run one tool call of the model; never raises for bad model input."""
    if call.name == END_CALL_TOOL:
        return ToolOutcome({"ok": True}, end_call=True)
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        return ToolOutcome({"error": "arguments are not valid JSON"})
    if call.name == CONSULT_TOOL:
        if not isinstance(arguments, dict) or not str(arguments.get("question") or "").strip():
            return ToolOutcome({"error": "question required"})
        return ToolOutcome({"error": "the agent is not available"})
    return ToolOutcome({"error": f"unknown tool {call.name}"})
