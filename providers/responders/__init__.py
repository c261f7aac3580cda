"""Responder backends that turn a caller's words into the agent's reply: llm, webhook and scripted."""
from __future__ import annotations

from typing import Any

from .base import Responder
from .llm import LlmResponder
from .scripted import ScriptedResponder
from .webhook import WebhookResponder

__all__ = ["RESPONDERS", "LlmResponder", "Responder", "ScriptedResponder", "WebhookResponder", "responder_for"]

RESPONDERS: dict[str, type[Responder]] = {
    "llm": LlmResponder,
    "webhook": WebhookResponder,
    "scripted": ScriptedResponder,
}


def responder_for(settings: Any) -> Responder:
    """The responder an `agents.<id>.responder` block asks for; no block means the default llm responder."""
    if settings is None:
        return LlmResponder(None)
    kind = getattr(settings, "type", None) or "llm"
    try:
        responder_class = RESPONDERS[kind]
    except KeyError:
        raise ValueError(f"unknown responder type {kind!r} (known: {', '.join(RESPONDERS)})") from None
    return responder_class(settings)
