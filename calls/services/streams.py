"""Services a media stream calls: open (authenticate, register), ready, transcripts, DTMF, close (grace)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction

from core.events import CallDtmf, CallSpeech, NormalizedEvent
from core.states import TERMINAL_STATES
from routing.routes import call_route, effective_tts

from .. import background
from ..clock import now
from ..documents import stream_token_valid
from ..models import Call, CallEvent, MediaStream
from ..runtime import get_runtime
from ..selectors import call_find_locked
from .common import log
from .events import EventBatch
from .replies import replies_interrupted

DISCONNECT_GRACE = timedelta(milliseconds=2000)


class StreamRefused(Exception):
    """The stream may not attach to a call; the message is the close reason sent to the carrier."""


@dataclass(frozen=True)
class StreamCall:
    """What a stream needs to know about its call, read once at start."""

    call_id: str
    stream_pk: int
    provider_call_id: str
    direction: str
    mode: str
    tts: dict[str, Any] = field(default_factory=dict)
    language: str | None = None
    record_local: bool = False  # the gateway writes a WAV of the stream (calls/streams/recording.py)


def stream_open(*, provider_call_id: str, stream_id: str, token: str | None) -> StreamCall:
    """Attach a stream to its live call, if the token is the call's; replaces an older stream."""
    runtime = get_runtime()
    with transaction.atomic():
        call = call_find_locked(ref=provider_call_id)  # its statement is built once, not per stream
        if call is None or call.is_terminal or call.provider != runtime.carrier.name:
            raise StreamRefused("Unknown call")
        if not token:
            log.warning("media stream for call %s refused: its start carries no stream token", call.pk)
            raise StreamRefused("Unknown call")
        if not stream_token_valid(str(call.pk), token):
            # The call exists, so the token was most likely made by a process with another key.
            log.warning("media stream for call %s refused: bad stream token; the likely cause is a gateway "
                        "process with a different SECRET_KEY answered the call's webhook (every process "
                        "must share SECRET_KEY)", call.pk)
            raise StreamRefused("Unknown call")
        replaced = MediaStream.objects.open().filter(call=call).update(closed_at=now(), close_reason="replaced")
        stream = MediaStream.objects.create(call=call, stream_id=stream_id[:128], carrier=runtime.carrier.name,
                                            node_id=serving_node())
        if call.stream_grace_deadline is not None:
            call.stream_grace_deadline = None  # a reconnect within the grace keeps the call
            call.save(update_fields=["stream_grace_deadline", "updated_at"])
    if replaced:
        log.info("call %s: stream %s replaces %d older stream(s)", call.pk, stream_id, replaced)
    route = call_route(runtime.config, call)
    return StreamCall(
        call_id=str(call.pk), stream_pk=stream.pk, provider_call_id=call.provider_call_id or provider_call_id,
        direction=call.direction, mode=call.mode, tts=effective_tts(runtime.config, route),
        record_local=call.record_local,
    )


def serving_node():
    """This process's gateway node, which holds the sockets of the streams it opens (None outside a serving gateway)."""
    from ..gateway import get_gateway

    return get_gateway().node.node_id


def stream_ready(*, call_id: str) -> None:
    """Transcription is listening: now the greeting may be spoken (docs/compatibility.md, Transcription)."""
    # Only what decides it, by the call's own id: the whole row and the model cost more than the query.
    found = Call.objects.filter(pk=call_id).order_by().values_list("state", "initial_message")[:1]
    if not found or found[0][0] in TERMINAL_STATES or not found[0][1]:
        return
    background.submit("calls.greeting", call_id=call_id)


def stream_transcript(*, call_id: str, stream_id: str, sequence: int, text: str, heard_ms: int | None = None) -> None:
    """A final transcript from the stream: a waiting turn takes it, else the call may auto-reply."""
    fields = {"timestamp": heard_ms} if heard_ms else {}
    _live_call_event(call_id, lambda call: CallSpeech(
        call_id=call_id, provider_call_id=call.provider_call_id, transcript=text, is_final=True,
        dedupe_key=f"stream-transcript-{stream_id}-{sequence}", **fields,
    ))


def stream_speech_started(*, call_id: str, since_ms: int) -> None:
    """The caller started talking: replies to what they said before are superseded (docs/compatibility.md, Barge-in and automatic replies)."""
    replies_interrupted(call_id=call_id, since_ms=since_ms)


def stream_dtmf(*, call_id: str, stream_id: str, sequence: int, digit: str) -> None:
    _live_call_event(call_id, lambda call: CallDtmf(
        call_id=call_id, provider_call_id=call.provider_call_id, digits=digit, dedupe_key=f"stream-dtmf-{stream_id}-{sequence}",
    ))


def _live_call_event(call_id: str, event_for: Callable[[Call], NormalizedEvent]) -> None:
    """Apply the stream's event to its call unless the call has ended; once per key.

    The call row is read once, locked, in the event's transaction. A key seen before is not looked
    up first: the event record's unique key refuses it at the end and the whole transaction rolls
    back (a stream sends each key once, so this is rare). Any other conflict, e.g. a session
    created at the same time, is tried again.
    """
    runtime = get_runtime()
    event = None
    for attempt in range(3):
        try:
            with transaction.atomic():
                batch = EventBatch(runtime, hangup_rejected=True, check_duplicates=False)
                call = batch.call(call_id)
                if call is None or call.is_terminal:
                    return
                event = event or event_for(call)
                batch.apply(event)
                batch.flush()
                return
        except IntegrityError:
            if event is not None and CallEvent.objects.filter(dedupe_key=event.key).exists():
                return
            if attempt == 2:
                raise


def stream_closed(*, stream_pk: int, reason: str, stats: dict[str, Any]) -> None:
    """Record the stream's end; if it was the call's current stream, start the disconnect grace.

    The call row is locked first, as a stream's start locks it before it replaces streams, so the
    two never wait on each other's rows.
    """
    with transaction.atomic():
        found = (
            Call.objects.select_for_update(of=("self",)).filter(media_streams__pk=stream_pk).order_by()
            .values_list("pk", "state", "media_streams__closed_at").first()
        )
        if found is None:
            return
        call_pk, state, closed_at = found
        if closed_at is None and state not in TERMINAL_STATES:
            _grace_started(call_pk, stream_pk)
        # The first close keeps its time and reason; the stats are the stream's last word. The
        # stream read as open may have been replaced while this waited for the call's lock.
        streams = MediaStream.objects.filter(pk=stream_pk)
        if closed_at is not None or not streams.filter(closed_at__isnull=True).update(
            closed_at=now(), close_reason=reason[:64], stats=stats,
        ):
            streams.update(stats=stats)


def _grace_started(call_pk, stream_pk: int) -> None:
    """Only the current stream starts the timer; a reconnect before it fires keeps the call.

    Read after the call's lock was taken, so a stream that replaced this one meanwhile is seen.
    """
    deadline = now() + DISCONNECT_GRACE
    moment = Call._meta.get_field("stream_grace_deadline")
    call = Call._meta.pk.get_db_prep_value(call_pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(_grace_sql(), [
            moment.get_db_prep_value(deadline, connection), moment.get_db_prep_value(now(), connection),
            call, stream_pk, call, stream_pk,
        ])
        current = cursor.rowcount
    if current:
        background.deadline_set(deadline)


def _grace_sql() -> str:
    # Written out: with its two subqueries the ORM took longer to build this than the database to run it.
    q = connection.ops.quote_name
    calls, streams = q(Call._meta.db_table), q(MediaStream._meta.db_table)
    return (
        f"UPDATE {calls} SET {q('stream_grace_deadline')} = %s, {q('updated_at')} = %s WHERE {q('id')} = %s"
        f" AND EXISTS (SELECT 1 FROM {streams} WHERE {q('id')} = %s AND {q('closed_at')} IS NULL)"
        f" AND NOT EXISTS (SELECT 1 FROM {streams} WHERE {q('call_id')} = %s AND {q('closed_at')} IS NULL"
        f" AND {q('id')} <> %s)"
    )
