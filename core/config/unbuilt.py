"""Config keys the schema accepts (so a reference config loads as is) but that change nothing yet.

`unbuilt_settings(config)` names every such key the user actually set (a value other than its
default), grouped by reason, one line per reason. The loader adds these lines to the loaded
config's warnings, which the gateway logs at startup. When a feature gets built, remove its
rule here (docs/compatibility.md, Accepted but not built yet).
"""
from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# (path patterns, reason). `*` matches any part of a path, including a number or agent id.
RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("realtime.consultThinkingLevel", "realtime.consultFastMode"),
        "agent consults run the agent's responder, which has no thinking level or fast mode",
    ),
    (
        ("silenceTimeoutMs",),
        "end of speech is set per transcription provider (streaming.providers.<id>.silenceDurationMs)",
    ),
    (
        ("store",),
        "calls are kept in the database (DATABASE_URL), not in a store directory",
    ),
    (
        tuple(
            f"{base}.{key}"
            for base in ("tts", "numbers.*.tts")
            for key in ("auto", "enabled", "mode", "summaryModel", "modelOverrides.*", "prefsPath", "maxTextLength")
        ),
        "phone calls speak through tts.provider and tts.providers only",
    ),
    (
        ("tts.providers.*.language", "numbers.*.tts.providers.*.language"),
        "no TTS provider reads a language setting (elevenlabs takes languageCode)",
    ),
    (
        tuple(f"agents.*.identity.{key}" for key in ("emoji", "vibe", "theme", "creature")),
        "only identity.name (the agent's name in its prompt) is used",
    ),
)


def unbuilt_settings(config: BaseModel, prefix: str = "") -> list[str]:
    """One warning per reason, naming each key set to a non-default value that has no effect yet."""
    found: dict[str, list[str]] = {}
    for path in set_paths(config):
        if path.startswith("agents.") and ".identity." in path and _identity_in_realtime(config):
            continue
        reason = _reason(path)
        if reason is not None:
            found.setdefault(reason, []).append(prefix + path)
    lines = []
    for _, reason in RULES:
        paths = found.get(reason)
        if paths:
            verbs = "is accepted but has" if len(paths) == 1 else "are accepted but have"
            lines.append(f"{', '.join(paths)} {verbs} no effect yet: {reason}")
    return lines


def _identity_in_realtime(config: Any) -> bool:
    """The identity fields do count when the realtime agent context includes them."""
    realtime = getattr(config, "realtime", None)
    context = getattr(realtime, "agent_context", None)
    return bool(realtime and realtime.enabled and context and context.enabled and context.include_identity)


def _reason(path: str) -> str | None:
    for patterns, reason in RULES:
        if any(fnmatchcase(path, pattern) for pattern in patterns):
            return reason
    return None


def set_paths(node: BaseModel, path: str = "") -> Iterator[str]:
    """The camelCase path of every leaf whose value differs from its field's default."""
    for name, info in type(node).model_fields.items():
        key = info.alias or name
        value = getattr(node, name)
        child = f"{path}.{key}" if path else key
        if value == _default(info):
            continue
        yield from _leaves(value, child)
    for key, value in (node.model_extra or {}).items():
        yield from _leaves(value, f"{path}.{key}" if path else key)


def _leaves(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from set_paths(value, path)
    elif isinstance(value, dict) and value and all(isinstance(item, BaseModel) for item in value.values()):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    else:
        yield path


def _default(info: Any) -> Any:
    if info.default_factory is not None:
        return info.default_factory()
    return None if info.default is PydanticUndefined else info.default
