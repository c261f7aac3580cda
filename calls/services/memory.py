"""Conversation memory: each session key's messages, stored in the database so they outlive calls and restarts."""
from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, connection, transaction

from ..clock import now
from ..models import Call, ConversationSession, MessageRole, SessionMessage


def session_message_add(*, call: Call, role: MessageRole | str, text: str, at: datetime | None = None,
                        session_id: int | None = None) -> SessionMessage | None:
    """Add a line to the call's session memory (the session is created on first use).

    `session_id`: the call's session when already known (no lookup). None for a call without a
    session key, or for blank text.
    """
    if session_id is not None and call.session_key and text.strip():  # known to the caller: touched by id
        message = SessionMessage.objects.create(session_id=session_id, call=call, role=role, text=text.strip(),
                                                spoken_at=at or now())
        ConversationSession.objects.filter(pk=session_id).update(updated_at=now())
        return message
    return session_messages_add(call=call, role=role, lines=[(text, at)])[0]


def session_messages_add(*, call: Call, role: MessageRole | str,
                         lines: list[tuple[str, datetime | None]]) -> list[SessionMessage | None]:
    """Add lines (text, when said) to the call's session memory in order, in one insert; each line's message.

    None in place of a blank line, and for every line of a call without a session key.
    """
    if not call.session_key:
        return [None] * len(lines)
    kept = [(text.strip(), at or now()) for text, at in lines]
    if not any(text for text, _ in kept):
        ConversationSession.objects.get_or_create(key=call.session_key, defaults={"agent_id": call.agent_id})
        return [None] * len(lines)
    session_id, touch = _session_touched(call.session_key), False
    if session_id is None:
        session, created = _session_new(call)
        session_id, touch = session.pk, not created
    messages = [
        SessionMessage(session_id=session_id, call=call, role=role, text=text, spoken_at=at) if text else None
        for text, at in kept
    ]
    rows = [message for message in messages if message is not None]
    if len(rows) > 1 and connection.features.can_return_rows_from_bulk_insert:
        SessionMessage.objects.bulk_create(rows)
    else:  # one row, or a database that would not hand back the new ids (replies refer to them)
        for row in rows:
            row.save(force_insert=True)
    if touch:
        ConversationSession.objects.filter(pk=session_id).update(updated_at=now())
    return messages


def _session_new(call: Call) -> tuple[ConversationSession, bool]:
    """The call's session when touching it found none: created now, unless another writer just did."""
    if not connection.features.can_return_columns_from_insert:
        # Nothing was touched, so nothing is known: looked up first.
        return ConversationSession.objects.get_or_create(key=call.session_key, defaults={"agent_id": call.agent_id})
    try:
        with transaction.atomic():  # a savepoint: a concurrent insert must not spoil the caller's transaction
            return ConversationSession.objects.create(key=call.session_key, agent_id=call.agent_id), True
    except IntegrityError:
        return ConversationSession.objects.get(key=call.session_key), False


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
