"""Fake agent service for the webhook responder: checks the turn's signature, records turns, answers by knob."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import urlsplit

from tests.fakes.base import LoopbackHttpFake

__all__ = ["AgentRequest", "FakeAgentWebhook"]

Reply = str | dict[str, Any] | Callable[[dict[str, Any]], "dict[str, Any] | str"]


@dataclass
class AgentRequest:
    """One request to the agent, whether or not its signature held."""

    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any
    verified: bool
    refusal: str = ""  # why the signature was refused: missing | malformed | stale | mismatch
    status: int = 0


class FakeAgentWebhook(LoopbackHttpFake):
    """A user's agent service on 127.0.0.1, written the way its docs tell users to write one.

    The signature check is done here from first principles (HMAC-SHA256 over "<t>." + body) rather
    than with the gateway's own helper, so a bug in the helper cannot hide a bug in the signing.

    Knobs (attributes):
      reply         str (spoken, no hangup), dict (sent as JSON as it is), or callable(turn) -> dict | str
      status        the HTTP status to answer with (204: no body; >= 300: a small JSON error)
      delay         seconds to wait before answering
      content_type  Content-Type of the answer (text/plain: a str reply is sent as the bare words)
      body          raw bytes sent instead of anything built from `reply`
    """

    def __init__(self, secret: str = "whsec-fake-agent", *, reply: Reply = "Sure, I can help with that.",
                 status: int = 200, delay: float = 0.0, content_type: str = "application/json",
                 body: bytes | None = None, tolerance_s: int = 300, path: str = "/agent/turn") -> None:
        super().__init__()
        self.secret = secret
        self.reply: Reply = reply
        self.status = status
        self.delay = delay
        self.content_type = content_type
        self.body = body
        self.tolerance_s = tolerance_s
        self.path = path
        self.requests: list[AgentRequest] = []
        self.errors: list[BaseException] = []  # crashes in the fake itself
        self.lock = threading.Lock()

    thread_name = "fake-agent"

    def handler_class(self) -> type:
        return _Handler

    @property
    def url(self) -> str:
        return self.origin + self.path

    @property
    def turns(self) -> list[dict[str, Any]]:
        """Bodies of the requests whose signature held, oldest first."""
        with self.lock:
            return [r.json for r in self.requests if r.verified]

    # ---- behaviour

    def check_signature(self, header: str | None, body: bytes) -> str:
        """"" when the header signs the body with our secret recently enough, else why not."""
        if not header:
            return "missing"
        fields: dict[str, list[str]] = {}
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            fields.setdefault(name, []).append(value)
        try:
            timestamp = int(fields["t"][0])
            signatures = fields["v1"]
        except (KeyError, ValueError):
            return "malformed"
        if abs(time.time() - timestamp) > self.tolerance_s:
            return "stale"
        expected = hmac.new(self.secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(expected.encode(), s.encode()) for s in signatures):
            return "mismatch"
        return ""

    def answer(self, turn: dict[str, Any]) -> tuple[int, str, bytes]:
        """(status, content type, body) for a verified turn."""
        if self.status == 204:
            return 204, "", b""
        if self.body is not None:
            return self.status, self.content_type, self.body
        if self.status >= 300:
            return self.status, "application/json", json.dumps({"error": f"agent failed ({self.status})"}).encode()
        reply = self.reply(turn) if callable(self.reply) else self.reply
        if isinstance(reply, str) and self.content_type.startswith("text/plain"):
            return self.status, self.content_type, reply.encode()
        if isinstance(reply, str):
            reply = {"spoken": reply, "hangup": False}
        return self.status, self.content_type, json.dumps(reply).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeAgentWebhook

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is FakeAgentWebhook.requests

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up on a kept-alive connection (it gave up on an answer): nothing to serve

    def do_POST(self) -> None:
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        refusal = fake.check_signature(self.headers.get("X-Voicecall-Signature"), body)
        record = AgentRequest(path=parts.path, query=parts.query,
                              headers={k.lower(): v for k, v in self.headers.items()},
                              body=body, json=parsed, verified=not refusal, refusal=refusal)
        with fake.lock:
            fake.requests.append(record)
        try:
            if refusal:
                status, kind, payload = 401, "application/json", json.dumps({"error": f"signature {refusal}"}).encode()
            elif parts.path != fake.path:
                status, kind, payload = 404, "application/json", b'{"error":"not found"}'
            else:
                if fake.delay and fake._release.wait(fake.delay):
                    self.close_connection = True
                    return
                status, kind, payload = fake.answer(parsed)
        except Exception as exc:  # a fake bug must surface as a 500, not a hung client
            fake.errors.append(exc)
            status, kind, payload = 500, "application/json", json.dumps({"error": repr(exc)}).encode()
        record.status = status
        try:
            self.send_response(status)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway gave up first (a timeout test)
