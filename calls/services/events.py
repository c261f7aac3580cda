"""Applying normalized events to calls, in the reference's order (docs/compatibility.md, Event processing)."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime, timedelta
from enum import StrEnum

from django.db import IntegrityError, transaction
from django.db.models import Q

from core.call_context import bind_call_id, call_scope
from core.events import (
    CallActive,
    CallAmd,
    CallAnswered,
    CallDtmf,
    CallEnded,
    CallError,
    CallInitiated,
    CallRecording,
    CallRinging,
    CallSilence,
    CallSpeaking,
    CallSpeech,
    CallSpoken,
    CallStreamFailed,
    CallTransfer,
    NormalizedEvent,
)
from core.states import CallState
from routing.policy import inbound_decision
from routing.routes import all_routes, greeting_for, match_route, route_snapshot

from .. import background
from ..call_options import first_words, recording_for
from ..clock import from_ms, now, to_ms
from ..metrics import recorders as metrics
from ..models import Call, CallEvent, CallMode, CallTurn, Direction, PairingStatus, Speaker, TranscriptEntry, TurnStatus
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_find_locked, call_pending_turn
from ..session_keys import session_key_for_call
from .amd import amd_answered, amd_verdict_applied
from .common import CLAIM_TTL, finalize, log, move_to, set_answered, turn_changed
from .greeting import greeting_decision
from .pairing import PAIRING_PROMPT, pairing_admission, pairing_input
from .recordings import recording_event_apply, recording_on_answer
from .replies import conversational, replies_requested
from .transfer import transfer_outcome_apply

FIELD_LIMIT = Call._meta.get_field("from_number").max_length
# Keys or refs per preload statement: well under every database's limit on bound parameters.
PRELOAD_CHUNK = 500
PRELOAD_MIN_EVENTS = 8
VERDICT_LIMIT = Call._meta.get_field("answered_by").max_length


class EventOutcome(StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"  # its dedupe key was seen before: nothing happened
    REJECTED = "rejected"  # an inbound call the policy refused: recorded and hung up once
    UNKNOWN_CALL = "unknown-call"  # no such call and not enough to create one; a retry may succeed


def event_process(*, event: NormalizedEvent, hangup_rejected: bool = True) -> EventOutcome:
    """Apply one event. Idempotent per dedupe key, across processes (unique key in the database).

    An inbound call the policy refuses is hung up once, unless `hangup_rejected` is False (the
    caller refuses it another way, e.g. in its answer to the carrier).
    """
    runtime = get_runtime()
    for attempt in range(3):
        try:
            with transaction.atomic():
                batch = EventBatch(runtime, hangup_rejected=hangup_rejected, check_duplicates=True)
                outcome = batch.apply(event)
                batch.flush()
                return outcome
        except IntegrityError:
            # A concurrent delivery of the same event (dedupe key) or the same new inbound call
            # (carrier call id) committed first; looking again sees its result.
            if CallEvent.objects.filter(dedupe_key=event.key).exists():
                return EventOutcome.DUPLICATE
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# Events whose effects stay on the call row: they may apply to a call created in the same batch
# before it is inserted. Any other event first writes the new call, since it may touch other rows.
_ROW_ONLY = (CallInitiated, CallRinging, CallAnswered, CallActive, CallSpeaking, CallAmd, CallSilence)


class EventBatch:
    """Events applied in the caller's transaction: each call row read once under its lock, written once.

    `flush()` writes the calls and inserts the event records together, with the caller's words
    (transcript lines, and the replies they ask for) one statement per table, however many events.
    Without `check_duplicates` an event already seen is not looked up one by one: `preload()`
    reads the stored keys of a whole request at once, and a key stored meanwhile makes `flush()`
    raise IntegrityError; the caller rolls the whole transaction back (webhook_process then takes
    the careful path, event by event).
    """

    def __init__(self, runtime: CallRuntime, *, hangup_rejected: bool, check_duplicates: bool) -> None:
        self.runtime = runtime
        self.hangup_rejected = hangup_rejected
        self.check_duplicates = check_duplicates
        self.calls: dict[str, Call] = {}  # by every ref seen: our id, the carrier's id
        self.unsaved: set = set()  # pks of calls created here and not yet inserted
        self.changed: set = set()  # pks of calls to save at flush
        self.records: list[CallEvent] = []
        self.read: dict = {}  # pk → the stored columns of each call read here, as read
        self.by_pk: dict = {}  # pk → the one Call object held for it
        self.seen_keys: set[str] = set()  # dedupe keys stored before (preload) or recorded in this batch
        self.missing: set[str] = set()  # refs known to name no stored call (preload)
        self.lines: list[TranscriptEntry] = []  # the caller's final words, inserted at flush
        self.heard: dict = {}  # pk → [(text, heard_at)] to answer, in order (conversational calls)
        self._routes = None

    def preload(self, events: list[NormalizedEvent]) -> None:
        """Read what a whole request's events will ask, in a statement or two instead of one per event.

        Which dedupe keys are already stored (those events are duplicates), and which call refs
        name no stored call (no lookup each). A carrier's usual request (one to three events) is
        left to its own lookups: reading ahead would only add a statement to it. Repeats within
        the request are caught without any (`seen_keys`).
        """
        if len(events) < PRELOAD_MIN_EVENTS:
            return
        keys = list({event.key for event in events})
        for start in range(0, len(keys), PRELOAD_CHUNK):
            chunk = keys[start:start + PRELOAD_CHUNK]
            self.seen_keys.update(CallEvent.objects.filter(dedupe_key__in=chunk).values_list("dedupe_key", flat=True))
        refs = {ref for event in events for ref in (event.call_id, event.provider_call_id) if ref}
        ids = {ref: _as_uuid(ref) for ref in refs}
        found: set[str] = set()
        refs_list = sorted(refs)
        for start in range(0, len(refs_list), PRELOAD_CHUNK):
            chunk = refs_list[start:start + PRELOAD_CHUNK]
            uuids = [ids[ref] for ref in chunk if ids[ref] is not None]
            for pk, carrier_id in Call.objects.filter(Q(pk__in=uuids) | Q(provider_call_id__in=chunk)).values_list("pk", "provider_call_id"):
                found.update((str(pk), carrier_id or ""))
        self.missing = {ref for ref in refs if ref not in found and str(ids[ref]) not in found}

    def routes(self):
        """The number routes, read once per batch (a batch of new inbound calls matches each)."""
        if self._routes is None:
            self._routes = all_routes(self.runtime.config)
        return self._routes

    def call(self, ref: str | None) -> Call | None:
        """A call this batch holds (locked), else looked up and locked now."""
        if not ref:
            return None
        if ref not in self.calls:
            if ref in self.missing:
                return None
            call = call_find_locked(ref=ref)
            if call is None:
                return None
            self.read.setdefault(call.pk, _columns(call))
            self._hold(call, ref)
        return self.calls[ref]

    def _hold(self, call: Call, ref: str | None = None) -> Call:
        known = self.by_pk.setdefault(call.pk, call)
        for key in (ref, str(call.pk), call.provider_call_id):
            if key:
                self.calls[key] = known
        return known

    def apply(self, event: NormalizedEvent) -> EventOutcome:
        with call_scope():  # the lines logged while applying it name the call, once it is known
            return self._apply(event)

    def _apply(self, event: NormalizedEvent) -> EventOutcome:
        if event.key in self.seen_keys:
            return EventOutcome.DUPLICATE  # stored before (preload), or earlier in this request
        if self.check_duplicates and CallEvent.objects.filter(dedupe_key=event.key).exists():
            return EventOutcome.DUPLICATE
        call = self.call(event.call_id)
        if call is None and event.provider_call_id and event.provider_call_id != event.call_id:
            call = self.call(event.provider_call_id)
        # A verdict alone never creates a call: for a call we do not know it is a logged no-op.
        if call is None and event.provider_call_id and event.direction and not isinstance(event, CallAmd):
            call, rejected = _create_webhook_call(self.runtime, event, self.routes)
            bind_call_id(call.pk)
            call.pending_turn_id, call.replay_keys = None, 0  # new: no turn, no remembered answers
            self._hold(call, event.call_id)
            self.unsaved.add(call.pk)
            if rejected:
                self._record(call, event)
                if self.hangup_rejected:
                    background.submit("calls.reject_hangup", call_id=str(call.pk))
                return EventOutcome.REJECTED
        if call is None:
            log.warning("event %s for unknown call %s ignored", event.type, event.call_id)
            return EventOutcome.UNKNOWN_CALL
        bind_call_id(call.pk)
        if isinstance(event, CallAmd) and call.is_terminal:
            # A late verdict (the call ended first) changes nothing on the call (not even its updated_at); like every accepted
            # event it is kept in the call's timeline.
            log.info("answering-machine verdict %s for ended call %s ignored", event.answered_by, call.pk)
            self._record(call, event)
            return EventOutcome.PROCESSED

        if call.pk in self.unsaved and not isinstance(event, _ROW_ONLY):
            self._insert(call)
        if event.provider_call_id and event.provider_call_id != call.provider_call_id:
            _rekey(call, event.provider_call_id)
            self._hold(call)
        self._record(call, event)
        if isinstance(event, CallRecording):  # carriers report recordings once the call is over, too
            recording_event_apply(call=call, event=event, config=self.runtime.config)
        elif isinstance(event, CallTransfer):
            # A transfer's outcome arrives after the gateway's part of the call ended (transferred).
            transfer_outcome_apply(call, event)
        elif not call.is_terminal:
            _apply(self, call, event)
        self.changed.add(call.pk)
        return EventOutcome.PROCESSED

    def held(self) -> list[Call]:
        return list(self.by_pk.values())

    def flush(self) -> None:
        """Write every held call (insert the new ones) and the event records, in this transaction."""
        inserted = set(self.unsaved)
        if inserted:  # one insert for a request's new calls
            Call.objects.bulk_create([call for call in self.held() if call.pk in inserted])
            self.unsaved.clear()
        for call in self.held():
            if call.pk in self.changed and call.pk not in inserted:
                call.save(update_fields=self._changed_columns(call))
        self.changed.clear()
        if self.records:
            CallEvent.objects.bulk_create(self.records)
            self.records = []
        if self.lines:
            TranscriptEntry.objects.bulk_create(self.lines)
            self.lines = []
        heard, self.heard = self.heard, {}
        for pk, said in heard.items():
            replies_requested(self.by_pk[pk], said)

    def _changed_columns(self, call: Call) -> list[str] | None:
        """The columns that differ from the row as read, and updated_at (followers of it see the event)."""
        read = self.read.get(call.pk)
        if read is None:
            return None  # every column
        changed = {name for name, value in _columns(call).items() if value != read[name]}
        return [*changed, "updated_at"]

    def _insert(self, call: Call) -> None:
        call.save(force_insert=True)
        self.unsaved.discard(call.pk)

    def _record(self, call: Call, event: NormalizedEvent) -> None:
        # A retryable error is not remembered as processed, so a redelivery is applied again.
        retryable = isinstance(event, CallError) and event.retryable
        if not retryable:
            self.seen_keys.add(event.key)
        self.records.append(CallEvent(
            call=call,
            type=event.type,
            dedupe_key=None if retryable else event.key,
            payload=event.to_dict(),
            occurred_at=from_ms(event.timestamp),
        ))


# Writing only the changed columns keeps the UPDATE short: compiling and sending every column
# of the call cost more than the rest of a small event.
_COLUMNS = [field.attname for field in Call._meta.concrete_fields if not field.primary_key and field.name != "updated_at"]


def _columns(call: Call) -> dict:
    # A copy of JSON values: an event may change them in place.
    return {name: deepcopy(value) if isinstance(value := getattr(call, name), (dict, list)) else value for name in _COLUMNS}


def _rekey(call: Call, provider_call_id: str) -> None:
    """Adopt the carrier's newer id for this call (e.g. Plivo request UUID → call UUID)."""
    taken = Call.objects.filter(provider=call.provider, provider_call_id=provider_call_id).exclude(pk=call.pk)
    if taken.exists():
        log.warning("not re-keying call %s: %s already belongs to another call", call.pk, provider_call_id)
        return
    call.provider_call_id = provider_call_id


def _create_webhook_call(runtime: CallRuntime, event: NormalizedEvent, routes: Callable[[], dict]) -> tuple[Call, bool]:
    """A call first seen in a webhook: inbound (policy applies) or an outbound call we do not know.

    `routes`: the number routes (read once for the whole batch).

    Returns the new record, not yet saved (the batch inserts it), and whether the inbound policy
    rejected it (then it is already ended).
    """
    config = runtime.config
    direction = Direction(event.direction)
    call = Call(
        provider=runtime.carrier.name,
        provider_call_id=event.provider_call_id,
        direction=direction,
        state=CallState.RINGING.value,
        # Display values (a SIP URI may be long): clipped to the column, never refused.
        from_number=(event.from_number or "unknown")[:FIELD_LIMIT],
        to_number=(event.to_number or config.from_number or "unknown")[:FIELD_LIMIT],
        agent_id=config.resolved_agent_id(),
        started_at=now(),
    )
    if direction == Direction.INBOUND:
        decision = inbound_decision(policy=config.inbound_policy, allow_from=config.allow_from, caller=event.from_number)
        reason = decision.reason if not decision.allowed else (pairing_admission(event.from_number) if decision.pairing else "")
        if reason:
            log.info("inbound call from %s rejected (inboundPolicy %s): %s", event.from_number, config.inbound_policy, reason)
            call.state = call.end_reason = CallState.HANGUP_BOT.value
            call.ended_at = call.started_at
            call.rejection_reason = reason
            return call, True
        matched = match_route(config, event.to_number, routes=routes())
        route_key, route = matched if matched else (None, None)
        if route and route.agent_id:
            call.agent_id = route.agent_id
        call.initial_message = greeting_for(config, route)
        if decision.pairing:
            # The greeting waits until the caller has paired; first they are asked for the code.
            call.initial_message = PAIRING_PROMPT
            call.pairing = PairingStatus.WAITING
        if route_key:
            call.route_key = route_key
            call.route = route_snapshot(route)
        call.record_carrier, call.record_local = recording_for(config, route)
        call.initial_message = first_words(config, call.initial_message, recorded=call.record_carrier or call.record_local)
    else:
        call.mode = ""  # an outbound call the gateway did not place: no mode, no automatic replies
    call.session_key = session_key_for_call(
        scope=config.session_scope,
        agent_id=call.agent_id,
        direction=direction,
        from_number=call.from_number,
        to_number=call.to_number,
        call_id=str(call.pk),
    )
    bind_call_id(call.pk)  # within EventBatch.apply's call scope
    log.info("%s call %s created from webhook (%s)", direction, call.pk, event.provider_call_id)
    return call, False


def _apply(batch: EventBatch, call: Call, event: NormalizedEvent) -> None:
    """The event's effect on the call in memory (the batch saves the row) and on its other rows."""
    runtime = batch.runtime
    config = runtime.config
    if isinstance(event, CallInitiated):
        move_to(call, CallState.INITIATED)
        if call.direction == Direction.INBOUND and runtime.carrier.supports_answer:
            background.submit("calls.answer", call_id=str(call.pk))
    elif isinstance(event, CallRinging):
        move_to(call, CallState.RINGING)
    elif isinstance(event, CallAnswered):
        first_answer = call.answered_at is None
        set_answered(call, from_ms(event.timestamp), config.max_duration_seconds)
        move_to(call, CallState.ANSWERED)
        _after_answer(call)
        if first_answer:
            recording_on_answer(call=call, carrier=runtime.carrier)
    elif isinstance(event, CallActive):
        move_to(call, CallState.ACTIVE)
    elif isinstance(event, CallSpeaking):
        move_to(call, CallState.SPEAKING)
        set_answered(call, from_ms(event.timestamp), config.max_duration_seconds)
    elif isinstance(event, CallSpeech):
        _apply_speech(batch, call, event)
    elif isinstance(event, CallEnded):
        reason = _end_reason(call, event)
        finalize(call, reason, ended_at=from_ms(event.timestamp), save=False, error=_carrier_end_error(call, reason, event.detail))
    elif isinstance(event, CallError):
        if not event.retryable:
            finalize(call, CallState.ERROR, error=event.error, turn_error=f"Call error: {event.error}", save=False)
    elif isinstance(event, CallSpoken):
        _notify_message_played(config, call)
    elif isinstance(event, CallAmd):
        # The first verdict is kept apart: later ones (e.g. end of greeting) refine but do not replace it.
        previous = call.answered_by
        call.answered_by = event.answered_by[:VERDICT_LIMIT]
        call.answered_by_first = call.answered_by_first or call.answered_by
        if call.answered_by != previous:
            amd_verdict_applied(runtime, call, previous)
    elif isinstance(event, CallDtmf):
        if call.pairing == PairingStatus.WAITING:
            pairing_input(call, digits=event.digits)
    elif isinstance(event, CallSilence):
        pass  # recorded only
    elif isinstance(event, CallStreamFailed):
        background.submit("calls.stream_failed", call_id=str(call.pk), error=event.error)


def _after_answer(call: Call) -> None:
    """The answer's follow-up (dial digits, the greeting) runs as a job, unless it has nothing to do."""
    amd_answered(call)
    decision = greeting_decision(call=call)
    if call.pending_dtmf or decision.speak or decision.spoken_by_carrier:
        background.submit("calls.call_answered", call_id=str(call.pk))
    else:
        log.info("call %s answered; greeting: %s", call.pk, decision.why)


def _end_reason(call: Call, event: CallEnded) -> str:
    """The carrier's reason, unless our own hang-up of this call is in flight: then ours."""
    claim = call.hangup_claimed_at
    requested = call.hangup_reason
    if claim is not None and requested and now() - claim < CLAIM_TTL:
        return requested
    return event.reason


def _carrier_end_error(call: Call, reason: str, detail: str) -> str:
    """A failure the carrier reports: in its own words when it gave any (none kept already)."""
    if reason not in (CallState.FAILED, CallState.ERROR) or call.last_error:
        return ""
    if detail:
        return f"The carrier ended the call as {reason}: {detail}."
    return f"The carrier ended the call as {reason} and gave no reason (see its call log for {call.provider_call_id or 'this call'})."


def _notify_message_played(config, call: Call) -> None:
    """A notify call's message finished playing: hang up after the configured delay from now.

    Until this arrives the hang-up waits on a generous estimate, so a long message is never cut.
    """
    if call.mode != CallMode.NOTIFY or call.initial_message or call.notify_hangup_at is None:
        return
    call.notify_hangup_at = min(call.notify_hangup_at, now() + timedelta(seconds=config.outbound.notify_hangup_delay_sec))
    background.deadline_set(call.notify_hangup_at)


def _apply_speech(batch: EventBatch, call: Call, event: CallSpeech) -> None:
    text = event.transcript.strip()
    if event.is_final and text:
        turn = call_pending_turn(call=call)
        if turn is not None and turn.token and event.turn_token != turn.token:
            # A stale or replayed result from an earlier turn must not complete this one.
            log.warning("speech for call %s ignored: turn token %r does not match", call.pk, event.turn_token)
            return
        heard_at = from_ms(event.timestamp)
        # Inserted at flush with the batch's other lines; the call row saved then tells followers of updated_at.
        batch.lines.append(TranscriptEntry(call=call, speaker=Speaker.USER, text=text, is_final=True, timestamp=heard_at))
        if turn is not None:
            _complete_turn(call, turn, text)
        elif call.pairing == PairingStatus.WAITING:
            pairing_input(call, text=text)
        elif conversational(call):
            batch.heard.setdefault(call.pk, []).append((text, heard_at))
    move_to(call, CallState.LISTENING)
    set_answered(call, from_ms(event.timestamp), batch.runtime.config.max_duration_seconds)


def _complete_turn(call: Call, turn: CallTurn, text: str) -> None:
    """Finish a waiting `continue` turn: its latencies go on the turn, the call counts one more turn."""
    finished = now()
    turn.status = TurnStatus.COMPLETED
    turn.transcript = text
    turn.completed_at = finished
    turn.turn_latency_ms = max(0, to_ms(finished) - to_ms(turn.started_at))
    listen_from = turn.listen_started_at or turn.started_at
    turn.listen_wait_ms = max(0, to_ms(finished) - to_ms(listen_from))
    turn.deadline = None
    turn.save()
    # Once the batch is stored: a batch rolled back (and applied again event by event) is one turn.
    latency = turn.turn_latency_ms / 1000
    transaction.on_commit(lambda: metrics.turn_completed("continue", latency))
    call.pending_turn_id = None  # it no longer waits
    call.turn_count += 1
    turn_changed()


def call_event_record(*, call_id: str, type: str, payload: dict, key: str | None = None,
                      at: datetime | None = None) -> bool:
    """Store an event that changes nothing on the call (a realtime tool call, its result) for its timeline.

    `key` makes a redelivery a no-op; returns False when an event with that key was stored before
    or the call does not exist.
    """
    try:
        with transaction.atomic():
            if not Call.objects.filter(pk=call_id).exists():
                log.warning("event %s for unknown call %s not stored", type, call_id)
                return False
            CallEvent.objects.create(call_id=call_id, type=type, dedupe_key=key, payload=payload,
                                     occurred_at=at or now())
    except IntegrityError:
        return False
    return True


def _as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None
