"""The carrier webhook endpoint as a raw ASGI app, so checks run in the reference's order (behaviour.md §3.6):

method → signature headers present (401 before the body is read) → per-IP in-flight cap (429)
→ body size (413) and read timeout (408) → signature verification (401) → replay check
→ parse (400 names the problem) → process events → the carrier's answer.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections

from core.errors import VoiceCallError
from providers.carriers.base import (
    CallView,
    WebhookAnswer,
    WebhookParseError,
    WebhookRequest,
    WebhookVerification,
)

from . import background
from .documents import document_for, stream_token
from .models import Call, CallTurn, MediaStream, ProcessedWebhook, TurnStatus
from .runtime import CallRuntime, get_runtime
from .services import EventOutcome, event_process
from .services.common import call_lookup, now
from .services.control import call_voice, initial_message_delivered

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 5.0
MAX_IN_FLIGHT_PER_IP = 8
REPLAY_WINDOW = timedelta(minutes=10)
# Caps on remembered requests, so a flood of valid requests cannot grow the table without bound.
MAX_KEYS_PER_CALL = 500
MAX_KEYS = 10_000
GLOBAL_CAP_EVERY = 64  # inserts between checks of the global cap
HOLD_MUSIC_PATH = "/voice/hold-music"


@dataclass
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class BodyError(Exception):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class WebhookApp:
    """ASGI app for POST {serve.path}."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = defaultdict(int)

    async def __call__(self, scope, receive, send) -> None:
        await self._send(send, await self._answer(scope, receive))

    @staticmethod
    async def _send(send, answer: Answer) -> None:
        headers = [(b"content-type", answer.content_type.encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
        body = answer.body.encode("utf-8")
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def hold_music(self, scope, receive, send) -> None:
        """GET or POST /voice/hold-music: what callers on hold hear (Twilio's Enqueue waitUrl)."""
        from providers.carriers.twilio.twiml import hold_music

        await self._send(send, Answer(200, hold_music(), "application/xml"))

    async def _answer(self, scope, receive) -> Answer:
        if scope["method"] != "POST":
            return Answer(405, "Method Not Allowed", headers={"Allow": "POST"})
        try:
            runtime = get_runtime()
        except VoiceCallError as exc:
            return Answer(503, exc.message)
        headers = _headers(scope)
        if not runtime.config.skip_signature_verification and not runtime.carrier.has_signature_headers(headers):
            return Answer(401, "Unauthorized")
        client = (scope.get("client") or ("unknown", 0))[0] or "unknown"
        if self.in_flight[client] >= MAX_IN_FLIGHT_PER_IP:
            return Answer(429, "Too Many Requests")
        self.in_flight[client] += 1
        try:
            body = await _read_body(receive, headers)
            request = WebhookRequest(
                method=scope["method"],
                path=scope["path"],
                query_string=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=body,
                remote_addr=None if client == "unknown" else client,
                scheme=scope.get("scheme", "http"),
            )
            return await sync_to_async(_handle_in_thread, thread_sensitive=False)(runtime, request)
        except BodyError as exc:
            return exc.answer
        except Exception:
            log.exception("webhook failed")
            return Answer(500, "Internal Server Error")
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


def _headers(scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _read_body(receive, headers: dict[str, str]) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError(Answer(400, "Content-Length is not a number"))
        if int(declared) > MAX_BODY_BYTES:
            raise BodyError(Answer(413, "Payload Too Large"))

    async def collect() -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(Answer(400, "Client disconnected"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyError(Answer(413, "Payload Too Large"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await collect()
    except TimeoutError:
        raise BodyError(Answer(408, "Request Timeout")) from None


def _handle_in_thread(runtime: CallRuntime, request: WebhookRequest) -> Answer:
    close_old_connections()
    try:
        return handle_webhook(runtime, request)
    finally:
        close_old_connections()


def handle_webhook(runtime: CallRuntime, request: WebhookRequest) -> Answer:
    """Verify, de-duplicate, parse and process one carrier request (sync; runs in a worker thread)."""
    carrier = runtime.carrier
    verification = _verify(runtime, request)
    if not verification.ok or not verification.request_key:
        # Never the body or headers: they may carry tokens. The reason names what failed.
        log.warning(
            "%s webhook from %s refused: %s", carrier.name, request.remote_addr or "unknown",
            verification.reason or "no request key",
        )
        return Answer(401, "Unauthorized")
    key = verification.request_key

    first = ProcessedWebhook.objects.filter(key=key, expires_at__gt=now()).first()
    if first is not None:
        log.info("replayed webhook %s answered with its first response", key)
        return Answer(first.status_code, first.body, first.content_type, dict(first.headers))

    try:
        parsed = carrier.parse_webhook(request, request_key=key)
        _check_storable(parsed)
    except WebhookParseError as exc:
        log.warning("%s webhook refused as malformed: %s", carrier.name, exc)
        return Answer(400, str(exc))
    outcomes = [event_process(event, hangup_rejected=False) for event in parsed.events]
    rejected = EventOutcome.REJECTED in outcomes
    call = call_lookup(parsed.call_ref) if parsed.call_ref else None
    answer = carrier.answer_webhook(parsed, call=call_view(runtime, call, rejected=rejected, document_token=parsed.document_token))
    if call is not None and answer.greeting_delivered:
        initial_message_delivered(call_id=str(call.pk))
    if rejected and call is not None and not answer.rejects_call:
        background.submit("calls.reject_hangup", call_id=str(call.pk))
    if EventOutcome.UNKNOWN_CALL in outcomes:
        return _answer_from(answer)  # not remembered: the carrier's retry may find the call then
    _remember(key, carrier.name, call, answer)
    return _answer_from(answer)


MAX_CARRIER_ID = Call._meta.get_field("provider_call_id").max_length


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


def call_view(runtime: CallRuntime, call: Call | None, *, rejected: bool, document_token: str | None) -> CallView | None:
    """The read-only view of a call a carrier builds its answer from."""
    if call is None:
        return None
    call_id = str(call.pk)
    pending = CallTurn.objects.filter(call=call, status=TurnStatus.PENDING).values_list("token", flat=True).first()
    return CallView(
        call_id=call_id,
        provider_call_id=call.provider_call_id,
        direction=call.direction,
        state=call.state,
        mode=call.metadata.get("mode", "conversation"),
        ended=call.is_terminal,
        rejected=rejected,
        initial_message=call.metadata.get("initialMessage") or None,
        voice=call_voice(runtime, call),
        pending_turn_token=pending,
        document=document_for(call_id, document_token),
        stream_token=stream_token(call_id),
        # Streams of other calls: with as many as calls allowed, a new caller waits on hold.
        media_streams_active=MediaStream.objects.open().exclude(call=call).count(),
    )


_inserts = 0


def _remember(key: str, provider: str, call: Call | None, answer: WebhookAnswer) -> None:
    """Keep the first answer for replays, within the per-call and global caps (oldest go first)."""
    global _inserts
    try:
        ProcessedWebhook.objects.get_or_create(
            key=key,
            defaults={
                "provider": provider,
                "call": call,
                "status_code": answer.status_code,
                "content_type": answer.content_type,
                "body": answer.body,
                "headers": answer.headers,
                "expires_at": now() + REPLAY_WINDOW,
            },
        )
    except IntegrityError:
        return  # a concurrent delivery stored the first answer
    if call is not None:
        _trim(ProcessedWebhook.objects.filter(call=call), MAX_KEYS_PER_CALL)
    _inserts += 1
    if _inserts % GLOBAL_CAP_EVERY == 0:
        _trim(ProcessedWebhook.objects.all(), MAX_KEYS)


def _trim(queryset, keep: int) -> None:
    surplus = list(queryset.order_by("-created_at", "-key").values_list("key", flat=True)[keep:])
    if surplus:
        ProcessedWebhook.objects.filter(key__in=surplus).delete()


def _verify(runtime: CallRuntime, request: WebhookRequest) -> WebhookVerification:
    if runtime.config.skip_signature_verification:
        digest = hashlib.sha256(
            b"\n".join([request.method.encode(), f"{request.path}?{request.query_string}".encode(), request.body])
        ).hexdigest()
        return WebhookVerification(ok=True, request_key=f"{runtime.carrier.name}:skip:{digest}")
    return runtime.carrier.verify_webhook(request)


def _answer_from(answer: WebhookAnswer) -> Answer:
    return Answer(answer.status_code, answer.body, answer.content_type, dict(answer.headers))
