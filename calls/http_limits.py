"""The gateway's HTTP limits in one place, and the ASGI-layer reading of a request body within them (docs/operations.md, HTTP limits).

Daphne enforces them in Twisted before the application runs (calls/daphne_guards.py), uvicorn in
its protocol and in this ASGI layer (calls/uvicorn_guards.py); the numbers are the same.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings

from core.config.schema import normalize_path

from .metrics import recorders as metrics
from .services import WebhookReply

WEBHOOK_MAX_BODY_BYTES = 64 * 1024
# Admin forms and RPC calls are small; the RPC answers its own JSON-RPC 413 above 1 MB, so the
# server's cap for every other path sits above that.
OTHER_MAX_BODY_BYTES = 2 * 1024 * 1024
# After an early refusal the answer is sent, reading stops and the write side is closed; the socket
# is released this long later (so the client can read the answer before a reset).
LINGER_SECONDS = 1.0
# Request line and headers together (Twisted's own cap; uvicorn's httptools parser has none).
MAX_HEAD_BYTES = 16 * 1024
# Connections the kernel queues before the server accepts them (uvicorn's default). Twisted's own 50
# drops a burst's handshakes, and each dropped client is accepted only seconds later on a retry.
LISTEN_BACKLOG = 2048

# The refusal reason (calls/metrics/recorders.py) of each answer a body that cannot be read gets.
BODY_REFUSALS = {400: "bad_request", 408: "body_timeout", 413: "body_too_large"}

REASONS = {400: b"Bad Request", 401: b"Unauthorized", 408: b"Request Timeout", 413: b"Payload Too Large",
           429: b"Too Many Requests", 431: b"Request Header Fields Too Large"}


def refusal_bytes(status: int) -> bytes:
    """A whole HTTP/1.1 answer written by a server layer itself, before any application ran."""
    text = REASONS[status]
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s") % (status, text, len(text), text)


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout: float


def is_webhook_path(path: str) -> bool:
    """Whether `path` (decoded, without the query) is the carrier webhook's, as the router decides."""
    from .config import get_config

    return normalize_path(path) == get_config().config.webhook_path()


def webhook_body_limits() -> BodyLimits:
    return BodyLimits(WEBHOOK_MAX_BODY_BYTES, float(settings.VOICECALL_WEBHOOK_BODY_TIMEOUT))


def body_limits(path: str) -> BodyLimits:
    """How big a request body to `path` may be, and how long after its headers it must have arrived."""
    if is_webhook_path(path):
        return webhook_body_limits()
    return BodyLimits(OTHER_MAX_BODY_BYTES, float(settings.VOICECALL_HTTP_BODY_TIMEOUT))


def head_timeout() -> float:
    """Seconds a connection has to send a whole request head, from its opening or its previous answer."""
    return float(settings.VOICECALL_HTTP_HEAD_TIMEOUT)


def max_connections_per_ip() -> int:
    from .config import get_config

    return get_config().config.serve.max_connections_per_ip


@dataclass
class PerIpCount:
    """How many of something each client address holds (open connections, requests in flight)."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def take(self, host: str, limit: int) -> bool:
        """Count one more for `host` unless it already holds `limit`; whether it was counted."""
        if self.counts[host] >= limit:
            if not self.counts[host]:
                del self.counts[host]
            return False
        self.counts[host] += 1
        return True

    def give_back(self, host: str) -> None:
        self.counts[host] -= 1
        if self.counts[host] <= 0:
            del self.counts[host]

    def total(self) -> int:
        return sum(self.counts.values())


_refusals_noted: dict[str, float] = {}
REFUSAL_LOG_EVERY = 60.0


def note_connection_refused(log: logging.Logger, host: str) -> None:
    """Log that `host` hit `serve.maxConnectionsPerIp`: once a minute per address, as a flood of them is the point."""
    now = time.monotonic()
    if now - _refusals_noted.get(host, -REFUSAL_LOG_EVERY) < REFUSAL_LOG_EVERY:
        return
    if len(_refusals_noted) > 1000:
        _refusals_noted.clear()
    _refusals_noted[host] = now
    log.warning("HTTP connections from %s refused: it holds serve.maxConnectionsPerIp (%d) already "
                "(logged once a minute per address)", host, max_connections_per_ip())


class BodyError(Exception):
    """The body cannot be read within the limits; `answer` is what the client is told."""

    def __init__(self, answer: WebhookReply) -> None:
        self.answer = answer


def refusal(status: int, text: str) -> WebhookReply:
    """An answer given before the body was read whole: the connection closes after it."""
    return WebhookReply(status, text, headers={"Connection": "close"})


def declared_length(headers: dict[str, str], max_bytes: int) -> None:
    """Refuse a Content-Length that is not a number, or over `max_bytes`, before any body is read."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError(refusal(400, "Content-Length is not a number"))
        if int(declared) > max_bytes:
            raise BodyError(refusal(413, "Payload Too Large"))


async def read_body(receive, headers: dict[str, str], limits: BodyLimits) -> bytes:
    """The whole request body, or BodyError: 413 as soon as it passes `limits.max_bytes`, 408 when it
    has not all arrived within `limits.timeout`, 400 when the client went away."""
    declared_length(headers, limits.max_bytes)

    async def collect() -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(WebhookReply(400, "Client disconnected"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limits.max_bytes:
                raise BodyError(refusal(413, "Payload Too Large"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        async with asyncio.timeout(limits.timeout):
            return await collect()
    except TimeoutError:
        raise BodyError(refusal(408, "Request Timeout")) from None



def scope_headers(scope) -> dict[str, str]:
    """The request's headers by lower-case name (repeated ones joined with ", ")."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def send_answer(send, answer: WebhookReply) -> None:
    headers = [(b"content-type", answer.content_type.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    body = answer.body.encode("utf-8")
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware for every path but the webhook's (which reads its own body): reads the body within
    `body_limits` before the application sees it, then hands it over whole. Django reads a body whole
    before any view runs anyway, so this bounds what it would read, and how long it would wait."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        headers = scope_headers(scope)
        try:
            body = await read_body(receive, headers, body_limits(scope["path"]))
        except BodyError as exc:
            metrics.refused(BODY_REFUSALS[exc.answer.status])
            return await send_answer(send, exc.answer)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body only http.disconnect comes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def daphne_endpoint(bind: str, port: int) -> str:
    """The Twisted endpoint Daphne listens on: `bind`:`port` with the gateway's listen backlog."""
    host = bind.strip("[]").replace(":", r"\:")
    return f"tcp:port={int(port)}:interface={host}:backlog={LISTEN_BACKLOG}"
