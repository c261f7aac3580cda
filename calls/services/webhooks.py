"""One carrier webhook request: verify, answer replays from the replay store, parse, apply its events, answer.

The HTTP edge (calls/webhooks.py) reads and limits the request and sends what `webhook_process`
returns; everything that touches calls or the database happens here.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import IntegrityError, OperationalError, connection, transaction

from providers.carriers.base import ParsedWebhook, WebhookAnswer, WebhookParseError, WebhookRequest, WebhookVerification

from .. import background
from ..metrics import recorders as metrics
from ..clock import now
from ..models import Call, ProcessedWebhook
from ..runtime import CallRuntime, get_runtime
from ..selectors import call_find, call_view
from .common import transcript_add
from .events import EventBatch, EventOutcome, event_process
from .greeting import initial_message_delivered, initial_message_taken

# The edge's log name: operators follow refusals there.
log = logging.getLogger("calls.webhooks")

REPLAY_WINDOW = timedelta(minutes=10)
# Caps on remembered requests, so a flood of valid requests cannot grow the table without bound.
MAX_KEYS_PER_CALL = 500
MAX_KEYS = 10_000
# About one insert in this many also checks the global cap. Chosen by the request key, so every
# process agrees without shared state, and a flood (many distinct keys) trims regularly.
GLOBAL_CAP_EVERY = 64
MAX_CARRIER_ID = Call._meta.get_field("provider_call_id").max_length


@dataclass(frozen=True)
class WebhookReply:
    """The HTTP answer for the carrier's request."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def webhook_process(*, request: WebhookRequest) -> WebhookReply:
    """Verify, de-duplicate, parse and process one carrier request (sync; runs in a worker thread).

    A request is applied in one transaction with its first answer remembered in it, so a handful
    of statements do it all. A duplicate anywhere (a replayed request, an event or a new call
    already stored) rolls that back; the request is then answered the careful way, step by step.
    """
    runtime = get_runtime()
    carrier = runtime.carrier
    verification = _verify(runtime, request)
    if not verification.ok or not verification.request_key:
        # Never the body or headers: they may carry tokens. The reason names what failed.
        log.warning(
            "%s webhook from %s refused: %s", carrier.name, request.remote_addr or "unknown",
            verification.reason or "no request key",
        )
        metrics.refused("webhook_signature")
        return WebhookReply(401, "Unauthorized")
    key = verification.request_key
    try:
        parsed = carrier.parse_webhook(request, request_key=key)
        _check_storable(parsed)
    except WebhookParseError as exc:
        if (first := _first_answer(key)) is not None:
            return first  # a replay is answered as the first time, parsed or not
        log.warning("%s webhook refused as malformed: %s", carrier.name, exc)
        metrics.refused("webhook_malformed")
        return WebhookReply(400, str(exc))
    try:
        with _writer_turn(), transaction.atomic():
            return _process_at_once(runtime, key, parsed)
    except IntegrityError:
        pass  # rolled back: nothing of it was applied
    except OperationalError as exc:
        # A batch naming two calls locks both rows; two such batches locking them in opposite
        # orders deadlock on PostgreSQL, which rolls one back. That one goes step by step, one
        # call's lock at a time.
        if getattr(exc.__cause__, "sqlstate", None) not in RETRYABLE_SQLSTATES:
            raise
        log.info("%s webhook %s: %s; applied event by event", carrier.name, key, type(exc.__cause__).__name__)
    if (first := _first_answer(key)) is not None:
        return first
    return _process_stepwise(runtime, key, parsed)


# SQLite has one writer at a time, and a connection that finds the write lock taken sleeps in
# growing steps (up to 100 ms) before it tries again. This process's webhook threads queue on a
# lock instead and take the database in turn. Only while jobs run on other threads: jobs run
# inline at commit may wait on this process's own webhooks (a carrier answering in the request).
_sqlite_writer = threading.Lock()
# Deadlock detected, serialization failure: nothing was applied, and a retry can succeed.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _writer_turn():
    if connection.vendor == "sqlite" and background.mode() == "thread":
        return _sqlite_writer
    return nullcontext()


def _first_answer(key: str) -> WebhookReply | None:
    first = ProcessedWebhook.objects.filter(key=key, expires_at__gt=now()).first()
    if first is None:
        return None
    log.info("replayed webhook %s answered with its first response", key)
    return WebhookReply(first.status_code, first.body, first.content_type, dict(first.headers))


def _process_at_once(runtime: CallRuntime, key: str, parsed: ParsedWebhook) -> WebhookReply:
    """The usual case, in the caller's transaction: each call row read and written once, one insert per table.

    Events already stored, or repeated within the request, are found up front and skipped as
    duplicates. Raises IntegrityError on a duplicate written meanwhile by another request (the
    request key remembered, an event's dedupe key, a new call's carrier id); the caller rolls back.
    """
    batch = EventBatch(runtime, hangup_rejected=False, check_duplicates=False)
    batch.preload(parsed.events)
    outcomes = [batch.apply(event) for event in parsed.events]
    rejected = EventOutcome.REJECTED in outcomes
    call = batch.call(parsed.call_ref)
    answer = runtime.carrier.answer_webhook(
        parsed, call=call_view(call=call, rejected=rejected, document_token=parsed.document_token),
    )
    greeting = initial_message_taken(call) if call is not None and answer.greeting_delivered else None
    if greeting is not None:
        batch.changed.add(call.pk)
    batch.flush()
    if greeting is not None:
        transcript_add(call=call, speaker="bot", text=greeting, touch=False)
    if rejected and call is not None and not answer.rejects_call:
        background.submit("calls.reject_hangup", call_id=str(call.pk))
    if EventOutcome.UNKNOWN_CALL not in outcomes:  # else not remembered: the carrier's retry may find the call then
        _remember_new(key, runtime.carrier.name, call, answer)
    return WebhookReply(answer.status_code, answer.body, answer.content_type, dict(answer.headers))


def _process_stepwise(runtime: CallRuntime, key: str, parsed: ParsedWebhook) -> WebhookReply:
    """Each event in its own transaction (a duplicate is skipped alone), then the answer, then remembering it."""
    carrier = runtime.carrier
    outcomes = [event_process(event=event, hangup_rejected=False) for event in parsed.events]
    rejected = EventOutcome.REJECTED in outcomes
    call = call_find(ref=parsed.call_ref) if parsed.call_ref else None
    answer = carrier.answer_webhook(parsed, call=call_view(call=call, rejected=rejected, document_token=parsed.document_token))
    if call is not None and answer.greeting_delivered:
        initial_message_delivered(call_id=str(call.pk))
    if rejected and call is not None and not answer.rejects_call:
        background.submit("calls.reject_hangup", call_id=str(call.pk))
    if EventOutcome.UNKNOWN_CALL not in outcomes:  # else not remembered: the carrier's retry may find the call then
        _remember(key, carrier.name, call, answer)
    return WebhookReply(answer.status_code, answer.body, answer.content_type, dict(answer.headers))


def _verify(runtime: CallRuntime, request: WebhookRequest) -> WebhookVerification:
    if runtime.config.skip_signature_verification:
        digest = hashlib.sha256(
            b"\n".join([request.method.encode(), f"{request.path}?{request.query_string}".encode(), request.body])
        ).hexdigest()
        return WebhookVerification(ok=True, request_key=f"{runtime.carrier.name}:skip:{digest}")
    return runtime.carrier.verify_webhook(request)


def _check_storable(parsed) -> None:
    """Refuse what no database column can hold: NUL characters (PostgreSQL) and over-long carrier ids."""
    for name, value in (("callId", parsed.call_ref), ("doc", parsed.document_token)):
        if value and "\x00" in value:
            raise WebhookParseError(f"{name}: contains a NUL character")
    for event in parsed.events:
        for name, value in event.to_dict().items():
            if isinstance(value, str) and "\x00" in value:
                raise WebhookParseError(f"{name}: contains a NUL character")
        if event.provider_call_id and len(event.provider_call_id) > MAX_CARRIER_ID:
            raise WebhookParseError(f"carrier call id: longer than {MAX_CARRIER_ID} characters")


# --- the replay store -----------------------------------------------------------------------------


def _remember_new(key: str, provider: str, call: Call | None, answer: WebhookAnswer) -> None:
    """Keep the first answer in the caller's transaction; IntegrityError if the key is already kept."""
    ProcessedWebhook.objects.bulk_create([_first_answer_row(key, provider, call, answer)])
    # The call was read with its count of kept answers (calls/selectors.py, call_find_locked).
    if call is not None and getattr(call, "replay_keys", MAX_KEYS_PER_CALL) + 1 > MAX_KEYS_PER_CALL:
        _trim(ProcessedWebhook.objects.filter(call=call), MAX_KEYS_PER_CALL)
    _trim_globally_now_and_then(key)


def _remember(key: str, provider: str, call: Call | None, answer: WebhookAnswer) -> None:
    """Keep the first answer for replays, within the per-call and global caps (oldest go first)."""
    row = _first_answer_row(key, provider, call, answer)
    try:
        ProcessedWebhook.objects.get_or_create(
            key=key, defaults={field: getattr(row, field) for field in REMEMBERED if field != "key"},
        )
    except IntegrityError:
        return  # a concurrent delivery stored the first answer
    if call is not None:
        _trim(ProcessedWebhook.objects.filter(call=call), MAX_KEYS_PER_CALL)
    _trim_globally_now_and_then(key)


REMEMBERED = ("key", "provider", "call", "status_code", "content_type", "body", "headers", "expires_at")


def _first_answer_row(key: str, provider: str, call: Call | None, answer: WebhookAnswer) -> ProcessedWebhook:
    return ProcessedWebhook(
        key=key, provider=provider, call=call, status_code=answer.status_code, content_type=answer.content_type,
        body=answer.body, headers=answer.headers, expires_at=now() + REPLAY_WINDOW,
    )


def _trim_globally_now_and_then(key: str) -> None:
    # A job after commit: the request that happens to draw it does not wait for the trim.
    if zlib.crc32(key.encode()) % GLOBAL_CAP_EVERY == 0:
        background.submit("calls.replay_trim")


@background.job("calls.replay_trim")
def replay_trim() -> None:
    """Keep at most MAX_KEYS remembered answers in all, the newest."""
    _trim(ProcessedWebhook.objects.all(), MAX_KEYS)


def _trim(queryset, keep: int) -> None:
    surplus = list(queryset.order_by("-created_at", "-key").values_list("key", flat=True)[keep:])
    if surplus:
        ProcessedWebhook.objects.filter(key__in=surplus).delete()
