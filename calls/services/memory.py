"""Conversation memory: each session key's messages, stored in the database so they outlive calls and restarts."""
from __future__ import annotations

from datetime import datetime

from ..clock import now
from ..models import Call, ConversationSession, MessageRole, SessionMessage


def session_message_add(*, call: Call, role: MessageRole | str, text: str, at: datetime | None = None,
                        session_id: int | None = None) -> SessionMessage | None:
    """Add a line to the call's session memory (the session is created on first use).

    `session_id`: the call's session when already known (no lookup). None for a call without a
    session key, or for blank text.
    """
    if not call.session_key:
        return None
    if session_id is None:
        session, _ = ConversationSession.objects.get_or_create(key=call.session_key, defaults={"agent_id": call.agent_id})
        session_id = session.pk
    if not text.strip():
        return None
    message = SessionMessage.objects.create(session_id=session_id, call=call, role=role, text=text.strip(), spoken_at=at or now())
    ConversationSession.objects.filter(pk=session_id).update(updated_at=now())
    return message
