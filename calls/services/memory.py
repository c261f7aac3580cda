"""Conversation memory: each session key's messages, stored in the database so they outlive calls and restarts."""
from __future__ import annotations

from datetime import datetime

from django.db import connection

from ..clock import now
from ..models import Call, ConversationSession, MessageRole, SessionMessage


def session_message_add(*, call: Call, role: MessageRole | str, text: str, at: datetime | None = None) -> SessionMessage | None:
    """Add a line to the call's session memory (the session is created on first use).

    None for a call without a session key, or for blank text.
    """
    if not call.session_key:
        return None
    session_id = _session_touched(call.session_key) if text.strip() else None
    touch = False
    if session_id is None:
        session, created = ConversationSession.objects.get_or_create(key=call.session_key, defaults={"agent_id": call.agent_id})
        if not text.strip():
            return None
        session_id, touch = session.pk, not created
    message = SessionMessage.objects.create(session_id=session_id, call=call, role=role, text=text.strip(), spoken_at=at or now())
    if touch:
        ConversationSession.objects.filter(pk=session_id).update(updated_at=now())
    return message


def _session_touched(key: str) -> int | None:
    """Mark the session as just used and return its id, in one statement; None if it does not exist yet
    (or the database cannot return rows from an UPDATE: then it is looked up and touched in two)."""
    if not connection.features.can_return_columns_from_insert:
        return None
    quote = connection.ops.quote_name
    updated = ConversationSession._meta.get_field("updated_at").get_db_prep_value(now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(ConversationSession._meta.db_table)} SET {quote('updated_at')} = %s"
            f" WHERE {quote('key')} = %s RETURNING {quote('id')}",
            [updated, key],
        )
        row = cursor.fetchone()
    return row[0] if row else None
