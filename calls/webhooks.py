"""The carrier webhook endpoint as a raw ASGI app, so checks run in the reference's order (docs/compatibility.md, Webhook pipeline):

method → signature headers present (401 before the body is read) → per-IP in-flight cap
(serve.maxInFlightPerIp, 429)
→ body size (413) and read timeout (408), here; then `services.webhook_process`: signature
verification (401) → replay check → parse (400 names the problem) → process events → the
carrier's answer.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from core.errors import VoiceCallError
from providers.carriers.base import WebhookRequest

from . import services
from .runtime import get_runtime
from .services import WebhookReply

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 5.0
HOLD_MUSIC_PATH = "/voice/hold-music"


# The edge's own refusals and the service's answers are sent alike.
Answer = WebhookReply


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
        if self.in_flight[client] >= runtime.config.serve.max_in_flight_per_ip:
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
            return await sync_to_async(_process_in_thread, thread_sensitive=False)(request)
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


def _process_in_thread(request: WebhookRequest) -> Answer:
    close_old_connections()
    try:
        return services.webhook_process(request=request)
    finally:
        close_old_connections()
