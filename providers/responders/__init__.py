"""Responder backends that turn a caller's words into the agent's reply: llm, webhook and scripted."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Responder
    from .llm import LlmResponder
    from .scripted import ScriptedResponder
    from .webhook import WebhookResponder

__all__ = ["RESPONDERS", "LlmResponder", "Responder", "ScriptedResponder", "WebhookResponder", "responder_for"]

# Backends are imported on first use: the llm and webhook ones bring an HTTP client that readers
# of `base` (call records, history) do not need.
_CLASSES = {
    "Responder": "base",
    "LlmResponder": "llm",
    "WebhookResponder": "webhook",
    "ScriptedResponder": "scripted",
}
# Responder type (the `type` of an agents.<id>.responder block) -> class name.
_TYPES = {"llm": "LlmResponder", "webhook": "WebhookResponder", "scripted": "ScriptedResponder"}


def _load(name: str) -> Any:
    value = getattr(import_module(f"{__name__}.{_CLASSES[name]}"), name)
    globals()[name] = value
    return value


def __getattr__(name: str) -> Any:
    if name == "RESPONDERS":
        return {kind: _load(class_name) for kind, class_name in _TYPES.items()}
    if name in _CLASSES:
        return _load(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def responder_for(settings: Any) -> Responder:
    """The responder an `agents.<id>.responder` block asks for; no block means the default llm responder."""
    if settings is None:
        return _load("LlmResponder")(None)
    kind = getattr(settings, "type", None) or "llm"
    try:
        class_name = _TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown responder type {kind!r} (known: {', '.join(_TYPES)})") from None
    return _load(class_name)(settings)
