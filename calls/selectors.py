"""Every read of call state: lookups, the view carriers answer from, status projections, the admin timeline.

Selectors never write. Projections are in the reference's JSON shapes (camelCase, times in epoch ms).
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone as dt_timezone
from typing import Any

from django.db import connection, router
from django.db.models import Count, Exists, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from core.errors import CallHasEnded, CallNotConnected, CallNotFound, InvalidRequest
from providers.carriers.base import CallView
from providers.responders.base import HistoryMessage
from routing.routes import call_route, effective_tts, preferred_voice

from .amd_verdicts import amd_holds
from .clock import to_ms
from .dial_progress import pending_dial_find, pending_dial_summary
from .documents import document_for, stream_token
from .models import (
    Call,
    ProcessedWebhook,
    CallMode,
    CallTurn,
    ConversationSession,
    Direction,
    MediaStream,
    PairingStatus,
    ReplyStatus,
    ReplyTurn,
    SessionMessage,
    TranscriptEntry,
    TurnStatus,
)
from .prepared import PreparedQuery, PreparedRows
from .runtime import get_runtime

# --- lookups --------------------------------------------------------------------------------


def call_find(*, ref: str | None, for_update: bool = False, with_stream: bool = False) -> Call | None:
    """A call by our id, else by the carrier's id (newest first). `for_update` locks the row.

    `with_stream`: also read whether it has an open media stream (`has_open_stream`, for call_uses_stream).
    """
    if not ref:
        return None
    calls = Call.objects.select_for_update() if for_update else Call.objects.all()
    if with_stream:
        calls = calls.annotate(has_open_stream=Exists(MediaStream.objects.open().filter(call=OuterRef("pk"))))
    try:
        call = calls.filter(pk=uuid.UUID(str(ref))).first()
    except ValueError:
        call = None
    if call is None:
        call = calls.filter(provider_call_id=ref).order_by("-started_at").first()
    return call


SHORT_REF = re.compile(r"[0-9a-f]{8}(?:-?[0-9a-f]{1,4}){0,6}", re.IGNORECASE)  # a prefix of a UUID, at least 8 hex digits


def call_ref_expanded(ref: str) -> str:
    """A call id shortened to its first 8+ hex digits (as `status` and the admin show it) made whole again.

    Anything else (a whole id, a carrier's id, a prefix matching no call) comes back as it is, so it is
    looked up, or reported not found, as before. A prefix that matches several calls is an error
    naming them: acting on the wrong call would be worse than asking for more digits.
    """
    text = ref.strip()
    try:
        uuid.UUID(text)
        return ref  # whole
    except ValueError:
        pass
    if not SHORT_REF.fullmatch(text) or Call.objects.filter(provider_call_id=ref).exists():
        return ref
    matches = [str(pk) for pk in Call.objects.filter(pk__startswith=text.lower()).order_by("pk").values_list("pk", flat=True)[:5]]
    if len(matches) > 1:
        shown = ", ".join(matches[:4]) + (", …" if len(matches) > 4 else "")
        raise InvalidRequest(f"The short id {text} matches {'5 or more' if len(matches) > 4 else len(matches)} calls "
                             f"({shown}): give more of its digits")
    return matches[0] if matches else ref


def call_find_locked(*, ref: str | None) -> Call | None:
    """`call_find(for_update=True)`, with what applying an event asks next, read in the same statement.

    `pending_turn_id`: the call's waiting `continue` turn, or None; `replay_keys`: how many first
    answers of webhooks about it are remembered (calls/services/webhooks.py caps them).
    """
    if not ref:
        return None
    try:
        call = _first_locked("pk", uuid.UUID(str(ref)))
    except ValueError:
        call = None
    if call is None:
        call = _first_locked("provider_call_id", ref)
    return call


# Built once per database and lookup column: every webhook runs this query, and building it
# through the ORM (two subqueries) costs more than running it.
_LOCKED_SQL: dict[tuple[str, str], tuple[str, list, int]] = {}
_MARK = {"pk": uuid.UUID(int=0), "provider_call_id": "\x00ref"}


def _first_locked(column: str, value) -> Call | None:
    key = (connection.alias, column)
    if key not in _LOCKED_SQL:
        pending = CallTurn.objects.filter(call=OuterRef("pk"), status=TurnStatus.PENDING).order_by("id").values("id")[:1]
        remembered = (
            ProcessedWebhook.objects.filter(call=OuterRef("pk")).order_by().values("call")
            .annotate(n=Count("*")).values("n")
        )
        calls = Call.objects.select_for_update().annotate(
            pending_turn_id=Subquery(pending), replay_keys=Coalesce(Subquery(remembered), 0),
        ).filter(**{column: _MARK[column]}).order_by("-started_at")[:1]
        sql, params = calls.query.get_compiler(connection=connection).as_sql()
        slot = list(params).index(_prepared(column, _MARK[column]))
        _LOCKED_SQL[key] = (sql, list(params), slot)
    sql, params, slot = _LOCKED_SQL[key]
    params = [*params[:slot], _prepared(column, value), *params[slot + 1:]]
    return next(iter(Call.objects.raw(sql, params)), None)


def _prepared(column: str, value):
    field = Call._meta.pk if column == "pk" else Call._meta.get_field(column)
    return field.get_db_prep_value(value, connection, prepared=False)


def call_pending_turn(*, call: Call) -> CallTurn | None:
    """The call's waiting `continue` turn; no query when the call was read knowing it has none."""
    if not hasattr(call, "pending_turn_id"):
        return CallTurn.objects.filter(call=call, status=TurnStatus.PENDING).first()
    if call.pending_turn_id is None:
        return None
    return CallTurn.objects.filter(pk=call.pending_turn_id, status=TurnStatus.PENDING).first()


def call_connected(*, ref: str, for_update: bool = False, with_stream: bool = False) -> Call:
    """A live call with a carrier id, or the reference's error for why not."""
    call = call_find(ref=ref, for_update=for_update, with_stream=with_stream)
    if call is None:
        raise CallNotFound()
    if not call.provider_call_id:
        raise CallNotConnected()
    if call.is_terminal:
        raise CallHasEnded()
    return call


def calls_live() -> list[Call]:
    """Calls not yet ended, oldest first."""
    return list(Call.objects.live().order_by("started_at"))


def calls_recently_updated(*, limit: int) -> list[Call]:
    """The `limit` most recently updated calls, oldest of them first."""
    return list(Call.objects.order_by("-updated_at", "-pk")[:limit])[::-1]


def calls_last_update() -> tuple[datetime | None, set[tuple[Any, datetime]]]:
    """The newest update time of any call, and the (id, updated_at) of the calls updated then."""
    newest = Call.objects.order_by("-updated_at").values_list("updated_at", flat=True).first()
    if newest is None:
        return None, set()
    return newest, set(Call.objects.filter(updated_at=newest).values_list("pk", "updated_at"))


def calls_updated_since(*, mark: datetime | None) -> list[Call]:
    """Calls updated at or after `mark` (every call without one), in update order."""
    changed = Call.objects.order_by("updated_at", "pk")
    if mark is not None:
        changed = changed.filter(updated_at__gte=mark)
    return list(changed)


def turn_latencies(*, last: int) -> list[tuple[int | None, int | None]]:
    """(turn latency, listen wait) in ms of the last `last` completed turns, newest first."""
    return list(
        CallTurn.objects.filter(status=TurnStatus.COMPLETED)
        .order_by("-completed_at", "-id")
        .values_list("turn_latency_ms", "listen_wait_ms")[:last]
    )


def call_voice(*, call: Call) -> str | None:
    """The preferred TTS voice of the call's effective config (its number route for inbound)."""
    config = get_runtime().config
    return preferred_voice(effective_tts(config, call_route(config, call)))


def call_uses_stream(*, call: Call) -> bool:
    """Whether the call's audio goes through a media stream (then never through TwiML <Say>).

    No query when the call was read knowing whether it has an open stream (`has_open_stream`, see reply_find).
    """
    runtime = get_runtime()
    if not (runtime.config.streaming.enabled and runtime.carrier.supports_media_streams):
        return False
    known = getattr(call, "has_open_stream", None)
    if known is not None:
        return known
    return MediaStream.objects.open().filter(call=call).exists()


def call_transcript_lines(*, call: Call) -> list[tuple[str, str]]:
    """The call's transcript so far as (speaker, text), in order."""
    return list(TranscriptEntry.objects.filter(call=call).values_list("speaker", "text"))


# --- automatic replies and conversation memory --------------------------------------------------


def _reply_query(reply_id) -> QuerySet:
    earlier = (
        ReplyTurn.objects.filter(call_id=OuterRef("call_id"), pk__lt=OuterRef("pk")).order_by()
        .values("call_id").annotate(n=Count("*")).values("n")
    )
    return (
        ReplyTurn.objects.select_related("call", "user_message")
        .annotate(
            open_stream=Exists(MediaStream.objects.open().filter(call=OuterRef("call_id"))),
            earlier_replies=Coalesce(Subquery(earlier), 0),
        )
        .filter(pk=reply_id).order_by()
    )


# Every automatic reply starts with this read, before the caller hears anything.
_REPLY = PreparedQuery(_reply_query, mark=-(2**31) + 7)


def reply_find(*, reply_id: int) -> ReplyTurn | None:
    """A reply with its call and the caller's message it answers, in one statement.

    Also read: whether the call has an open media stream (`call.has_open_stream`, for
    call_uses_stream) and how many replies the call had before (`earlier_replies`).
    """
    reply = _REPLY.first(int(reply_id), using=router.db_for_read(ReplyTurn))
    if reply is not None:
        reply.call.has_open_stream = reply.open_stream
    return reply


def reply_is_current(*, reply_id: int) -> bool:
    """Whether an automatic reply is still wanted (no newer caller speech superseded it)."""
    return ReplyTurn.objects.filter(pk=reply_id, status=ReplyStatus.PENDING).exists()


def replies_before_count(*, reply: ReplyTurn) -> int:
    """How many replies the call had before this one, superseded or not."""
    if hasattr(reply, "earlier_replies"):
        return reply.earlier_replies
    return ReplyTurn.objects.filter(call_id=reply.call_id, pk__lt=reply.pk).count()


def session_history(*, call: Call, before: SessionMessage | None, limit: int) -> tuple[HistoryMessage, ...]:
    """Up to `limit` of the call's session's latest messages said before `before` (oldest first)."""
    if limit <= 0 or not call.session_key:
        return ()
    if before is None:
        return _history(SessionMessage.objects.filter(session__key=call.session_key), limit)
    key = (limit, router.db_for_read(SessionMessage))
    prepared = _HISTORY.get(key)
    if prepared is None:
        prepared = _HISTORY.setdefault(key, PreparedRows(
            lambda **marks: _history_before(**marks)[:limit],
            marks={"key": "\x00session", "at": datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=dt_timezone.utc), "pk": -(2**31) + 13},
            fields={"key": ConversationSession._meta.get_field("key"), "at": SessionMessage._meta.get_field("spoken_at"),
                    "pk": SessionMessage._meta.pk},
        ))
    latest = prepared.rows(key=call.session_key, at=before.spoken_at, pk=before.pk, using=key[1])
    return tuple(HistoryMessage(role=role, text=text) for role, text in reversed(latest))


# Every automatic reply reads its history before the caller hears anything: compiled once per limit.
_HISTORY: dict[tuple[int, str], PreparedRows] = {}


def _history_before(*, key: str, at: datetime, pk: int):
    messages = SessionMessage.objects.filter(session__key=key, spoken_at__lte=at).exclude(pk=pk)
    # Equal timestamps: only rows written earlier count as before.
    messages = messages.exclude(spoken_at=at, pk__gt=pk)
    return messages.order_by("-spoken_at", "-id").values_list("role", "text")


def _history(messages, limit: int) -> tuple[HistoryMessage, ...]:
    latest = list(messages.order_by("-spoken_at", "-id").values_list("role", "text")[:limit])
    return tuple(HistoryMessage(role=role, text=text) for role, text in reversed(latest))


# --- the view a carrier builds its answer from ---------------------------------------------------


def call_view(*, call: Call | None, rejected: bool, document_token: str | None) -> CallView | None:
    """The read-only view of a call a carrier builds its answer from."""
    if call is None:
        return None
    call_id = str(call.pk)
    runtime = get_runtime()
    turn = call_pending_turn(call=call)
    # Only a streaming carrier asks how many streams are open (to put a new caller on hold).
    streams = runtime.config.streaming.enabled and runtime.carrier.supports_media_streams
    return CallView(
        call_id=call_id,
        provider_call_id=call.provider_call_id,
        direction=call.direction,
        state=call.state,
        # An outbound call the gateway did not place (no mode) is answered like a conversation.
        mode=call.mode or CallMode.CONVERSATION,
        ended=call.is_terminal,
        rejected=rejected,
        initial_message=call.initial_message or None,
        voice=call_voice(call=call),
        pending_turn_token=turn.token if turn else None,
        document=document_for(call_id, document_token),
        stream_token=stream_token(call_id),
        # Streams of other calls: with as many as calls allowed, a new caller waits on hold.
        media_streams_active=MediaStream.objects.open().exclude(call=call).count() if streams else 0,
        held=amd_holds(call),
    )


# --- status projections ------------------------------------------------------------------------


def call_record(call: Call) -> dict[str, Any]:
    """The full record: what `status` prints and `tail` follows (transcript included)."""
    record = call_summary(call)
    record.update(
        {
            "from": call.from_number,
            "to": call.to_number,
            "sessionKey": call.session_key or None,
            "agentId": call.agent_id or None,
            "transcript": [
                {"timestamp": to_ms(entry.timestamp), "speaker": entry.speaker, "text": entry.text, "isFinal": entry.is_final}
                for entry in call.transcript_entries.all()
            ],
            "processedEventIds": [key for key in call.events.values_list("dedupe_key", flat=True) if key],
            "metadata": call_metadata(call),
            # Only on a call that has been handed off (or tried to be): where to, and how it went.
            "transfers": [
                _without_none({
                    "transferId": str(t.pk), "to": t.target, "mode": t.kind, "status": t.status,
                    "requestedBy": t.requested_by or None, "error": t.error or None,
                    "requestedAt": to_ms(t.requested_at), "finishedAt": to_ms(t.finished_at) if t.finished_at else None,
                })
                for t in call.transfers.all()
            ] or None,
        }
    )
    return _without_none(record)


def call_metadata(call: Call) -> dict[str, Any]:
    """The call's facts under the reference's metadata keys, over the carrier extras kept in `metadata`.

    A key is present only when the reference would have it: `mode` on calls the gateway placed (and
    `amd` when it asked for answering-machine detection),
    `pairing` while the caller is asked for a code, `turnCount` and the last turn's latencies once
    a `continue` turn completed. `lastError` is this gateway's own: the error that ended the call.
    """
    facts: dict[str, Any] = {
        "mode": call.mode if call.direction == Direction.OUTBOUND else None,
        "amd": call.amd_mode if call.amd_mode in ("detect", "voicemail") else None,
        "dtmfSequence": call.pending_dtmf,
        "initialMessage": call.initial_message,
        "requesterSessionKey": call.requester_session_key,
        "numberRouteKey": call.route_key,
        "pairing": (
            {"attempts": call.pairing_attempts, "digits": call.pairing_digits}
            if call.pairing == PairingStatus.WAITING else None
        ),
        "pairedWithCode": call.paired_code_id,
        "rejectionReason": call.rejection_reason,
        "answeredBy": call.answered_by,
        "answeredByFirst": call.answered_by_first,
        "hangupReason": call.hangup_reason,
        "turnCount": call.turn_count or None,
        **(_last_turn(call) if call.turn_count else {}),
        "lastError": call.last_error,
    }
    return {**call.metadata, **{key: value for key, value in facts.items() if value is not None and value != ""}}


def _last_turn(call: Call) -> dict[str, Any]:
    """The latencies of the call's latest completed `continue` turn, as the reference keeps them."""
    turn = CallTurn.objects.filter(call=call, status=TurnStatus.COMPLETED).order_by("-completed_at", "-id").first()
    if turn is None:
        return {}
    return {
        "lastTurnLatencyMs": turn.turn_latency_ms,
        "lastTurnListenWaitMs": turn.listen_wait_ms,
        "lastTurnCompletedAt": to_ms(turn.completed_at),
    }


def call_summary(call: Call) -> dict[str, Any]:
    """The redacted status object (no transcript, no metadata) for the RPC and the agent tool."""
    return _without_none(
        {
            "callId": str(call.pk),
            "providerCallId": call.provider_call_id,
            "provider": call.provider,
            "direction": call.direction,
            "state": call.state,
            "startedAt": to_ms(call.started_at),
            "answeredAt": to_ms(call.answered_at),
            "endedAt": to_ms(call.ended_at),
            "endReason": call.end_reason or None,
        }
    )


def call_status(*, ref: str | None = None) -> dict[str, Any]:
    """What the RPC's and the tool's status answer: one call's summary, or every live call's."""
    get_runtime()  # the setup/disabled error comes first, as for every call operation
    if not ref:
        return {"found": True, "calls": [call_summary(call) for call in calls_live()]}
    call = call_find(ref=ref)
    if call is not None:
        return {"found": True, "call": call_summary(call)}
    dial = pending_dial_find(ref=ref)  # a scheduled call (or dial-list row) not placed yet
    return {"found": True, "call": pending_dial_summary(dial)} if dial else {"found": False}


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


# --- the admin timeline ---------------------------------------------------------------------------


def call_timeline(*, call: Call) -> list[dict]:
    """Events, spoken lines, turns and replies of a call in time order, as seconds from its start."""
    rows = [_row(e.occurred_at, "event", e.type, _event_detail(e.payload, e.type)) for e in call.events.all()]
    rows += [
        _row(t.timestamp, t.speaker, "bot said" if t.speaker == "bot" else "caller said", t.text)
        for t in call.transcript_entries.all()
    ]
    rows += [
        _row(t.completed_at or t.started_at, "turn", f"turn {t.status}",
             f"latency {t.turn_latency_ms} ms, listen wait {t.listen_wait_ms} ms" if t.turn_latency_ms is not None else t.error)
        for t in call.turns.all()
    ]
    rows += [
        _row(r.completed_at or r.heard_at, "reply", f"reply {r.status}",
             f"first words after {r.first_audio_ms} ms, done after {r.total_ms} ms"
             if r.first_audio_ms is not None else (r.error or ""))
        for r in call.replies.all()
    ]
    rows += [_row(t.finished_at or t.requested_at, "transfer", f"transfer {t.status}", _transfer_detail(t))
             for t in call.transfers.all()]
    rows.sort(key=lambda row: row["at"])
    for row in rows:
        row["offset"] = (row["at"] - call.started_at).total_seconds()
    return rows


def _row(at: datetime, kind: str, label: str, detail: str) -> dict:
    return {"at": at, "kind": kind, "label": label, "detail": detail}


def _event_detail(payload: dict, kind: str = "") -> str:
    if kind.startswith("realtime."):
        return _realtime_detail(payload, kind)
    if kind.startswith("operator."):
        return _operator_detail(payload, kind)
    if kind == "call.transfer":
        return str(payload.get("outcome") or "") + (f": {payload['error']}" if payload.get("error") else "")
    for key in ("transcript", "digits", "reason", "error", "text"):
        if payload.get(key):
            return str(payload[key])
    if payload.get("latencyMs") is not None:  # a realtime turn: caller's speech end to the model's first audio
        return f"latency {payload['latencyMs']} ms"
    return ""


def _operator_detail(payload: dict, kind: str) -> str:
    """An operator's action from the console: who did what, and how it went."""
    action = kind.removeprefix("operator.")
    said = {"speak": payload.get("text"), "dtmf": payload.get("digits")}.get(action)
    if action == "transfer":
        said = f"{payload.get('mode') or 'cold'} to {payload.get('to') or 'the configured transferTo'}"
    detail = f"{action} by {payload.get('user') or 'unknown user'}" + (f": {said}" if said else "")
    if payload.get("ok") is False:
        return f"{detail} (failed: {payload.get('error') or 'no reason given'})"
    if payload.get("ok") is None:
        return f"{detail} (no outcome recorded)"
    return detail


def _transfer_detail(transfer) -> str:
    """A transfer of the call: where to, how, asked by whom, and why it failed if it did."""
    who = f", asked by {transfer.requested_by}" if transfer.requested_by else ""
    detail = f"{transfer.kind} to {transfer.target}{who}"
    return f"{detail}: {transfer.error}" if transfer.error else detail


def _realtime_detail(payload: dict, kind: str) -> str:
    """A realtime tool call, its result or a consult, as one readable line."""
    name = payload.get("name") or ""
    took = f" ({payload['durationMs']} ms)" if payload.get("durationMs") is not None else ""
    if kind == "realtime.tool_call":
        return f"{name} {payload.get('arguments') or '{}'}"
    if kind == "realtime.tool_result":
        if payload.get("error"):
            return f"{name} failed: {payload['error']}{took}"
        return f"{name} → {payload.get('output', '')}{took}"
    if kind == "realtime.consult":
        asked = ("forced consult: " if payload.get("forced") else "consult: ") + str(payload.get("question", ""))
        if payload.get("error"):
            return f"{asked} → failed: {payload['error']}{took}"
        source = " from fast context" if payload.get("source") == "fastContext" else ""
        return f"{asked} → {payload.get('answer', '')}{source}{took}"
    if payload.get("latencyMs") is not None:
        return f"latency {payload['latencyMs']} ms"
    for key in ("transcript", "reason", "error", "text"):
        if payload.get(key):
            return str(payload[key])
    return ""
