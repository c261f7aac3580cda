"""Legacy config keys and their rewrite to the current keys (docs/compatibility.md, Legacy keys and doctor --fix), shared by the loader and doctor."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

# Legacy `tts.<provider>` blocks and the provider ids they became.
LEGACY_TTS_BLOCKS = {"openai": "openai", "elevenlabs": "elevenlabs", "edge": "microsoft"}


@dataclass(frozen=True)
class Change:
    """One legacy key found: where it was and what the rewrite does with it."""

    path: str
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.action}"


def migrate_block(block: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[Change]]:
    """Rewrite legacy keys of one voice-call config block; the current value wins when both exist."""
    out = copy.deepcopy(block)
    changes: list[Change] = []

    def note(path: str, action: str) -> None:
        changes.append(Change(prefix + path, action))

    if out.get("provider") == "log":
        out["provider"] = "mock"
        note("provider", 'rewrote "log" to "mock"')

    twilio = out.get("twilio")
    if isinstance(twilio, dict) and "from" in twilio:
        legacy = twilio.pop("from")
        if out.get("fromNumber"):
            note("twilio.from", "removed (fromNumber is already set)")
        else:
            out["fromNumber"] = legacy
            note("twilio.from", "moved to fromNumber")

    streaming = out.get("streaming")
    if isinstance(streaming, dict):
        _migrate_streaming(streaming, note)

    realtime = out.get("realtime")
    if isinstance(realtime, dict):
        agent_context = realtime.get("agentContext")
        if isinstance(agent_context, dict) and "includeSystemPrompt" in agent_context:
            agent_context.pop("includeSystemPrompt")
            note("realtime.agentContext.includeSystemPrompt", "removed (no longer used)")

    if "stt" in out:
        out.pop("stt")
        note("stt", "removed (use streaming.provider and streaming.providers)")

    if isinstance(out.get("tts"), dict):
        changes += migrate_tts(out["tts"], prefix + "tts.")
    numbers = out.get("numbers")
    if isinstance(numbers, dict):
        for number, route in numbers.items():
            if isinstance(route, dict) and isinstance(route.get("tts"), dict):
                changes += migrate_tts(route["tts"], f"{prefix}numbers.{number}.tts.")
    return out, changes


def migrate_tts(tts: dict[str, Any], prefix: str) -> list[Change]:
    """Move legacy `tts.<provider>` blocks under `tts.providers` (in place)."""
    changes: list[Change] = []
    if tts.get("provider") == "edge":
        tts["provider"] = "microsoft"
        changes.append(Change(prefix + "provider", 'rewrote "edge" to "microsoft"'))
    for legacy, provider_id in LEGACY_TTS_BLOCKS.items():
        if legacy not in tts:
            continue
        block = tts.pop(legacy)
        target_path = f"providers.{provider_id}"
        if not isinstance(block, dict):
            changes.append(Change(prefix + legacy, "removed (not an object)"))
            continue
        providers = tts.setdefault("providers", {})
        current = providers.setdefault(provider_id, {})
        kept = [key for key in block if key in current]
        for key, value in block.items():
            current.setdefault(key, value)
        action = f"moved to {prefix}{target_path}"
        if kept:
            action += f" (kept current {', '.join(sorted(kept))})"
        changes.append(Change(prefix + legacy, action))
    return changes


def _migrate_streaming(streaming: dict[str, Any], note) -> None:
    if "sttProvider" in streaming:
        legacy = streaming.pop("sttProvider")
        if streaming.get("provider"):
            note("streaming.sttProvider", "removed (streaming.provider is already set)")
        else:
            streaming["provider"] = "openai" if legacy == "openai-realtime" else legacy
            note("streaming.sttProvider", "moved to streaming.provider")
    moves = {
        "openaiApiKey": "apiKey",
        "sttModel": "model",
        "silenceDurationMs": "silenceDurationMs",
        "vadThreshold": "vadThreshold",
    }
    numeric = {"silenceDurationMs", "vadThreshold"}
    for legacy, key in moves.items():
        if legacy not in streaming:
            continue
        value = streaming.pop(legacy)
        path = f"streaming.{legacy}"
        if legacy in numeric and not _finite_number(value):
            note(path, "removed (not a finite number)")
            continue
        providers = streaming.setdefault("providers", {})
        openai = providers.setdefault("openai", {}) if isinstance(providers, dict) else None
        if not isinstance(openai, dict):
            note(path, "removed (streaming.providers.openai is not an object)")
        elif key in openai:
            note(path, f"removed (streaming.providers.openai.{key} is already set)")
        else:
            openai[key] = value
            note(path, f"moved to streaming.providers.openai.{key}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
