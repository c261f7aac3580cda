"""Conversation memory: each session key's messages, stored in the database so they outlive calls and restarts."""
from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from providers.responders.base import HistoryMessage

from .models import Call, ConversationSession, MessageRole, SessionMessage


def session_for(call: Call) -> ConversationSession | None:
    """The call's session (created on first use); None for a call without a session key."""
    if not call.session_key:
        return None
    session, _ = ConversationSession.objects.get_or_create(key=call.session_key, defaults={"agent_id": call.agent_id})
    return session


def remember(call: Call, role: MessageRole | str, text: str, *, at: datetime | None = None) -> SessionMessage | None:
    """Add a line to the call's session memory."""
    session = session_for(call)
    if session is None or not text.strip():
        return None
    message = SessionMessage.objects.create(session=session, call=call, role=role, text=text.strip(),
                                            spoken_at=at or timezone.now())
    ConversationSession.objects.filter(pk=session.pk).update(updated_at=timezone.now())
    return message


def history(call: Call, *, before: SessionMessage | None, limit: int) -> tuple[HistoryMessage, ...]:
    """Up to `limit` of the session's latest messages said before `before` (oldest first)."""
    if limit <= 0 or not call.session_key:
        return ()
    messages = SessionMessage.objects.filter(session__key=call.session_key)
    if before is not None:
        messages = messages.filter(spoken_at__lte=before.spoken_at).exclude(pk=before.pk)
        # Equal timestamps: only rows written earlier count as before.
        messages = messages.exclude(spoken_at=before.spoken_at, pk__gt=before.pk)
    latest = list(messages.order_by("-spoken_at", "-id").values_list("role", "text")[:limit])
    return tuple(HistoryMessage(role=role, text=text) for role, text in reversed(latest))
