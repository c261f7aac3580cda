"""The carrier webhook endpoint as a raw ASGI app, so checks run in the reference's order (docs/compatibility.md, Webhook pipeline):

method → signature headers present (401 before the body is read) → per-IP in-flight cap
(serve.maxInFlightPerIp, 429)
→ body size (413) and read timeout (408), here; then `services.webhook_process`: signature
verification (401) → replay check → parse (400 names the problem) → process events → the
carrier's answer. Under uvicorn these checks see the body as it arrives; under Daphne, which buffers
it first, calls/daphne_guards.py makes the same ones in Twisted before that (docs/operations.md, HTTP limits).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from core.errors import VoiceCallError
from providers.carriers.base import WebhookRequest

from . import services
from .gateway import get_gateway
from .http_limits import BODY_REFUSALS, BodyError, read_body, refusal, scope_headers, send_answer, webhook_body_limits
from .metrics import recorders as metrics
from .runtime import get_runtime
from .services import WebhookReply

log = logging.getLogger(__name__)

HOLD_MUSIC_PATH = "/voice/hold-music"


# The edge's own refusals and the service's answers are sent alike.
Answer = WebhookReply


class WebhookApp:
    """ASGI app for POST {serve.path}."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = defaultdict(int)

    async def __call__(self, scope, receive, send) -> None:
        started = time.perf_counter()
        answer = await self._answer(scope, receive)
        await self._send(send, answer)
        runtime = get_gateway().current_runtime()
        metrics.webhook_answered(runtime.carrier.name if runtime is not None else "none", answer.status,
                                 time.perf_counter() - started)

    _send = staticmethod(send_answer)

    async def hold_music(self, scope, receive, send) -> None:
        """GET or POST /voice/hold-music: what callers on hold hear (Twilio's Enqueue waitUrl)."""
        from providers.carriers.twilio.twiml import hold_music

        await self._send(send, Answer(200, hold_music(), "application/xml"))

    async def _answer(self, scope, receive) -> Answer:
        if scope["method"] != "POST":
            return Answer(405, "Method Not Allowed", headers={"Allow": "POST"})
        try:
            # Built off the loop when the config changed (its carrier client and TLS context take a while).
            runtime = get_gateway().current_runtime() or await asyncio.to_thread(get_runtime)
        except VoiceCallError as exc:
            return Answer(503, exc.message)
        headers = scope_headers(scope)
        # Refused before the body is read, so the connection closes after the answer.
        if not runtime.config.skip_signature_verification and not runtime.carrier.has_signature_headers(headers):
            metrics.refused("webhook_signature")
            return refusal(401, "Unauthorized")
        client = (scope.get("client") or ("unknown", 0))[0] or "unknown"
        if self.in_flight[client] >= runtime.config.serve.max_in_flight_per_ip:
            metrics.refused("webhook_in_flight")
            return refusal(429, "Too Many Requests")
        self.in_flight[client] += 1
        try:
            body = await read_body(receive, headers, webhook_body_limits())
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
            metrics.refused(BODY_REFUSALS[exc.answer.status])
            return exc.answer
        except Exception:
            log.exception("webhook failed")
            return Answer(500, "Internal Server Error")
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


def _process_in_thread(request: WebhookRequest) -> Answer:
    close_old_connections()
    try:
        return services.webhook_process(request=request)
    finally:
        close_old_connections()
