"""What a realtime model session is opened with: instructions (policy text, agent context), tools, language, voice."""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from providers.realtime.base import SessionSetup
from routing.routes import call_route

from ..models import Call
from .tools import CONSULT_TOOL, END_CALL_TOOL, TRANSFER_TOOL, tool_specs

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = (
    "You are a voice assistant on a live phone call. Keep your replies brief, natural and conversational. "
    f"For deeper reasoning, current or private information, or anything that needs tools, call {CONSULT_TOOL} "
    "and speak its answer. "
    f"When the conversation is over, say your final words to the caller, then call {END_CALL_TOOL}."
)
DEFAULT_INSTRUCTIONS_NO_CONSULT = (
    "You are a voice assistant on a live phone call. Keep your replies brief, natural and conversational. "
    f"When the conversation is over, say your final words to the caller, then call {END_CALL_TOOL}."
)

SUBSTANTIVE_POLICY = (
    f"Consult policy: answer small talk, greetings and simple conversation yourself. Call {CONSULT_TOOL} "
    "before answering only when the caller explicitly asks for the agent, or the answer needs private "
    "context or memory, current external data, a workspace task, an external or device action, or several "
    "steps of orchestration; give the matching reason."
)
ALWAYS_POLICY = (
    f"Consult policy: call {CONSULT_TOOL} before every substantive answer. Answer directly only for "
    "greetings, acknowledgements, checks that you can hear the caller, and short filler while you wait."
)

TRANSFER_POLICY = (
    f"When the caller asks for a person, or needs what you cannot give, tell them you are transferring them, "
    f"then call {TRANSFER_TOOL} with a short summary of who they are and what they need."
)

CAPSULE_HEADER = "OpenClaw agent voice context"
CAPSULE_GUIDANCE = (
    "Match this agent's personality and voice. For anything this context does not cover, "
    f"call {CONSULT_TOOL}: the agent's full brain answers there."
)
TRUNCATED = "[truncated]"
# One file may take at most this share of the capsule, so one long file cannot push out the others.
FILE_SHARE = 0.5
IDENTITY_FIELDS = ("name", "emoji", "vibe", "theme", "creature", "persona")


def session_setup(*, config, call_id: str) -> SessionSetup:
    """The instructions, tools, language and voice of a call's realtime session (reads the database: call it off the loop)."""
    realtime = config.realtime
    call = Call.objects.filter(pk=call_id).first()
    agent_id = (call.agent_id if call is not None else "") or config.resolved_agent_id()
    route = None
    if call is not None:
        route = call_route(config, call)
        if route is not None and route.agent_id:
            agent_id = route.agent_id
    # The transfer tool only where the route or the agent names where to transfer to.
    agent = config.agents.get(agent_id)
    transfer = bool((route is not None and route.transfer_to) or (agent is not None and agent.transfer_to))
    parts = [base_instructions(realtime)]
    policy = consult_policy_text(realtime)
    if policy:
        parts.append(policy)
    if transfer:
        parts.append(TRANSFER_POLICY)
    if realtime.agent_context.enabled:
        capsule = agent_context_capsule(config, agent_id)
        if capsule:
            parts.append(capsule)
    block = {}
    if realtime.provider and realtime.provider in realtime.providers:
        block = realtime.providers[realtime.provider].model_dump(by_alias=True, exclude_none=True)
    return SessionSetup(
        instructions="\n\n".join(parts),
        tools=tool_specs(realtime, transfer=transfer),
        language=block.get("language") or None,
        voice=block.get("voice") or None,
    )


def base_instructions(realtime) -> str:
    """realtime.instructions, or the built-in short prompt (without the consult sentence when consult is off)."""
    if realtime.instructions and realtime.instructions.strip():
        return realtime.instructions.strip()
    return DEFAULT_INSTRUCTIONS_NO_CONSULT if realtime.tool_policy == "none" else DEFAULT_INSTRUCTIONS


def consult_policy_text(realtime) -> str:
    """The consult policy's instruction text: none for auto, or when the consult tool is off."""
    if realtime.tool_policy == "none":
        return ""
    if realtime.consult_policy == "substantive":
        return SUBSTANTIVE_POLICY
    if realtime.consult_policy == "always":
        return ALWAYS_POLICY
    return ""


def agent_context_capsule(config, agent_id: str) -> str:
    """The agent's identity and workspace files for the model, cut to agentContext.maxChars."""
    settings = config.realtime.agent_context
    agent = config.agents.get(agent_id)
    lines = [f"## {CAPSULE_HEADER}", f"Agent id: {agent_id}", CAPSULE_GUIDANCE]
    if settings.include_identity and agent is not None:
        identity = agent.identity.model_dump(exclude_none=True) if agent.identity else {}
        if agent.name and not identity.get("name"):
            identity = {"name": agent.name, **identity}
        shown = [f"- {key}: {identity[key]}" for key in IDENTITY_FIELDS if identity.get(key)]
        if shown:
            lines.append("Identity:\n" + "\n".join(shown))
    sections = ["\n".join(lines)]
    if settings.include_workspace_files and agent is not None and agent.workspace:
        limit = max(200, int(settings.max_chars * FILE_SHARE))
        for name in settings.files:
            text = workspace_file(agent.workspace, name)
            if text:
                if len(text) > limit:
                    text = text[:limit].rstrip() + f"\n{TRUNCATED}"
                sections.append(f"### {name}\n{text}")
    return truncate("\n\n".join(sections), settings.max_chars)


def truncate(text: str, limit: int) -> str:
    """`text` within `limit` characters, ending with the [truncated] marker when it was cut."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(TRUNCATED) - 1)
    return (text[:keep].rstrip() + "\n" + TRUNCATED)[:limit] if keep else TRUNCATED[:limit]


def workspace_file(workspace: str, name: str) -> str:
    """A workspace-relative file's text, "" when missing, unreadable or outside the workspace."""
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts or Path(name).is_absolute():
        log.warning("realtime.agentContext.files: %r is not a path inside the workspace; skipped", name)
        return ""
    root = Path(workspace).expanduser()
    try:
        root = root.resolve()
        path = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:
        log.info("workspace file %s unreadable: %s", name, exc)
        return ""
    if not path.is_relative_to(root):
        # A symlink pointing out of the workspace: the files are the agent's, nothing else is read.
        log.warning("realtime.agentContext.files: %r leads outside the workspace; skipped", name)
        return ""
    try:
        if not path.is_file():
            return ""
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        log.info("workspace file %s unreadable: %s", path, exc)
        return ""


def greeting_instructions(message: str) -> str:
    """The model's first turn: greet the caller with the configured greeting."""
    return (
        "Start the call by greeting the caller warmly and briefly. Include this greeting, in these words: "
        f"{message.strip()}"
    )


def speak_instructions(text: str) -> str:
    """Injected speech (voicecall.speak, a forced consult's answer): say exactly this, then wait."""
    return f"Say exactly this to the caller, then wait for them to answer: {text.strip()}"


def checking_instructions() -> str:
    """While a consult runs: say briefly that you are checking, then wait for the result."""
    return (
        "Tell the caller in a few words that you are checking on that now. Do not answer the question yet; "
        "wait for the result."
    )
