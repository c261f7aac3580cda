"""Realtime session setup and the instructions that make the model speak (minimal: greeting, speak, checking)."""
from __future__ import annotations

from providers.realtime.base import SessionSetup, ToolSpec

from .tools import CONSULT_TOOL, END_CALL_TOOL

DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant on a phone call. Keep replies brief and natural. "
    f"For deeper reasoning, current information or tools, call {CONSULT_TOOL}. "
    f"When the conversation is over, say your final words, then call {END_CALL_TOOL}."
)


def session_setup(*, config, call_id: str) -> SessionSetup:
    """The model's instructions and tools for this call (sync: may read the database)."""
    realtime = config.realtime
    tools = [ToolSpec(END_CALL_TOOL, "End the phone call. Say your final words first.")]
    if realtime.tool_policy != "none":
        tools.append(ToolSpec(CONSULT_TOOL, "Ask the agent a question that needs reasoning, memory or tools.", {
            "type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"],
        }))
    block = realtime.providers.get(realtime.provider or "")
    return SessionSetup(instructions=realtime.instructions or DEFAULT_INSTRUCTIONS, tools=tuple(tools),
                        voice=getattr(block, "voice", None) if block is not None else None)


def greeting_instructions(message: str) -> str:
    return f"Start the call by greeting the caller. Include this greeting: {message}"


def speak_instructions(text: str) -> str:
    return f"Say exactly this to the caller, then wait: {text}"


def checking_instructions() -> str:
    return "Briefly tell the caller you are checking on that, then wait for the result."
