"""Reply requests: the caller's finished words start an automatic reply and supersede older ones."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from routing.routes import call_route

from .. import background
from ..clock import from_ms, now
from ..models import Call, CallMode, Direction, MessageRole, ReplyStatus, ReplyTurn, Speaker, TranscriptEntry
from ..runtime import get_runtime
from .common import back_to_listening, log
from .memory import session_message_add, session_messages_add


def conversational(call: Call) -> bool:
    """Whether the call answers the caller by itself: inbound and conversation-mode calls do, when
    something can answer — a responder for the call's agent, or a responseModel (config or route).

    Without one the call only listens, and whoever drives it (`continue`) does the talking.
    """
    if call.direction != Direction.INBOUND and call.mode != CallMode.CONVERSATION:
        return False
    config = get_runtime().config
    agent = config.agents.get(call.agent_id or config.resolved_agent_id())
    if agent is not None and agent.responder is not None:
        return True
    route = call_route(config, call)
    return bool(config.response_model or (route and route.response_model))


def reply_requested(call: Call, text: str, *, heard_at: datetime) -> ReplyTurn:
    """The caller finished saying `text`: remember it, supersede older replies, start a new one.

    Runs inside the event's transaction; the job starts after it commits.
    """
    return replies_requested(call, [(text, heard_at)])


def replies_requested(call: Call, heard: list[tuple[str, datetime]]) -> ReplyTurn:
    """The caller finished saying each of `heard`, in order (one request's worth): `reply_requested` for each.

    Every utterance is remembered (memory and a reply row), but as each supersedes the one before,
    only the last is answered: the earlier ones are written superseded, in a few statements
    whatever their number. Returns the reply that is answered.
    """
    superseded = ReplyTurn.objects.filter(call=call, status=ReplyStatus.PENDING).update(
        status=ReplyStatus.SUPERSEDED, completed_at=now())
    superseded += len(heard) - 1
    if superseded:
        log.info("call %s: newer caller speech supersedes %d pending repl%s", call.pk, superseded,
                 "y" if superseded == 1 else "ies")
    messages = session_messages_add(call=call, role=MessageRole.USER, lines=heard)
    last = len(heard) - 1
    replies = [
        ReplyTurn(call=call, transcript=text, user_message=message, heard_at=heard_at,
                  **({} if index == last else {"status": ReplyStatus.SUPERSEDED, "completed_at": now()}))
        for index, ((text, heard_at), message) in enumerate(zip(heard, messages))
    ]
    if len(replies) > 1 and connection.features.can_return_rows_from_bulk_insert:
        ReplyTurn.objects.bulk_create(replies)
    else:  # one row, or a database that would not hand back the new ids (the job needs the last one's)
        for reply in replies:
            reply.save(force_insert=True)
    reply = replies[-1]
    background.submit("calls.auto_reply", reply_id=reply.pk)
    return reply


def replies_interrupted(*, call_id: str, since_ms: int) -> int:
    """The caller started talking at `since_ms`: replies to what they said before are superseded."""
    since = from_ms(since_ms)
    return ReplyTurn.objects.filter(call_id=call_id, status=ReplyStatus.PENDING, heard_at__lt=since).update(
        status=ReplyStatus.SUPERSEDED, completed_at=now())


@dataclass(frozen=True)
class ReplyHeard:
    """What a reply's caller heard, written with the reply's outcome (one transaction)."""

    call: Call
    text: str  # "" when nothing was heard
    at: datetime
    transcript_line: bool  # the bot's transcript line is written here (the carrier path wrote its own)
    memory: bool  # kept in the session memory
    speaking_over: bool  # the reply had moved the call to speaking: back to listening
    session_id: int | None = None  # the session the caller's message went to, when known


def reply_settle(*, reply_id: int, status: str, reply: str = "", error: str = "", first_text_ms: int | None = None,
                 first_audio_ms: int | None = None, total_ms: int | None = None, force: bool = False,
                 heard: ReplyHeard | None = None) -> str:
    """Write the reply's outcome; a reply superseded meanwhile keeps that status. Returns the status.

    With `heard`, in the same transaction: the bot's transcript line, the call back to listening
    and the heard words in session memory.
    """
    fields = {
        "reply": reply, "error": error[:2000], "first_text_ms": first_text_ms, "first_audio_ms": first_audio_ms,
        "total_ms": total_ms, "completed_at": now(),
    }
    with transaction.atomic():
        _call_locked(reply_id)
        if heard is not None:
            _heard_record(heard)
        replies = ReplyTurn.objects.filter(pk=reply_id)
        if force:
            replies.update(status=status, **fields)
            return status
        if replies.filter(status=ReplyStatus.PENDING).update(status=status, **fields):
            return status
        # Superseded (or settled) meanwhile: that status stays.
        replies.update(**fields)
        return replies.values_list("status", flat=True).get()


def _call_locked(reply_id: int) -> None:
    """Lock the reply's call row before its reply, the order an event batch takes them in (the call, then
    the replies it supersedes). In the other order PostgreSQL deadlocks the two: the bot's transcript
    line checks its call at commit (a deferred foreign key) while the batch, holding the call, waits
    for this reply. SQLite takes one writer at a time: nothing to lock there."""
    if connection.features.has_select_for_update:
        list(Call.objects.select_for_update(of=("self",)).filter(replies__pk=reply_id).values_list("pk", flat=True))


def _heard_record(heard: ReplyHeard) -> None:
    call = heard.call
    line = bool(heard.text) and heard.transcript_line
    if line:
        TranscriptEntry.objects.create(call=call, speaker=Speaker.BOT, text=heard.text, is_final=True, timestamp=heard.at)
    if heard.speaking_over:
        back_to_listening(call, touch=line)
    elif line:
        # The record changed: followers of updated_at (tail) must see the new line.
        Call.objects.filter(pk=call.pk).update(updated_at=now())
    if heard.text and heard.memory:
        session_message_add(call=call, role=MessageRole.ASSISTANT, text=heard.text, at=heard.at, session_id=heard.session_id)
