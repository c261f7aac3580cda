"""The webhook responder: POST each turn, signed, to the user's own agent service and speak its answer.

Request: a compact UTF-8 JSON object {"type": "turn", "callId", "agentId", "sessionKey", "direction",
"from", "to", "transcript", "history": [{"role", "text"}], "replyNumber"} with the header
`X-Voicecall-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
Answer: 200 JSON {"spoken": "...", "hangup": false}, 204 for nothing to say, or text/plain words.

A realtime model's consult arrives as a turn whose "transcript" is the question, with an added
"consult": {"question", "reason", "context", "responseStyle", "confirmationId", "partial"} (what
the caller is still saying); the answer is the same. A realtime call's custom tool goes to the same URL, signed the same way: {"type": "tool_call", "callId",
"agentId", "sessionKey", "name", "arguments": {...}}; the answer is a JSON object given to the model
as the tool's result (204: {"ok": true}; text/plain: {"result": "<text>"}).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from core.redact import remember_secret

from ..tls import http_tls
from .base import Hangup, Responder, ResponderError, Turn
from .llm import DeadlineGuard, clip, is_json, media_type, read_capped

__all__ = ["SIGNATURE_HEADER", "WebhookResponder", "sign", "verify"]

SIGNATURE_HEADER = "X-Voicecall-Signature"
BODY_LIMIT = 64 * 1024  # a spoken reply is a few sentences; anything near this is a misbehaving service
DEFAULT_TOLERANCE_S = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Voicecall-Signature value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str | None, now: float | None = None,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance_s` of `now` (default: the clock).

    Several v1= entries are accepted, so a sender can sign with an old and a new secret while rotating.
    """
    if not header or not secret:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value.strip().lower())
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False  # a replayed request, or a clock far off
    expected = sign(secret, body, timestamp).partition(",v1=")[2].encode()
    matched = False
    for candidate in candidates:
        # every candidate is compared, so timing does not reveal which one matched
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    return matched


def public_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe to show in messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "the configured URL"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookResponder(Responder):
    """The agent service answers each turn with the exact words to say."""

    type = "webhook"
    follows_contract = False

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._client = httpx.Client(follow_redirects=False, verify=http_tls())

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def request_body(turn: Turn) -> bytes:
        document = {
            "type": "turn",
            "callId": turn.call_id,
            "agentId": turn.agent_id,
            "sessionKey": turn.session_key,
            "direction": turn.direction,
            "from": turn.from_number,
            "to": turn.to_number,
            "transcript": turn.transcript,
            "history": [{"role": item.role, "text": item.text} for item in turn.history],
            "replyNumber": turn.replies_so_far,
        }
        consult = turn.extra.get("consult")
        if consult:
            document["consult"] = consult
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _post(self, body: bytes, deadline: float, *, about: str = "") -> tuple[httpx.Response, bytes]:
        """POST the signed body and read the answer by the deadline; a ResponderError (never showing the
        secret) for no URL, no answer in time, an unreachable service or an HTTP error. `about` names
        what is answered in those messages (e.g. " the tool call")."""
        url = getattr(self.settings, "url", None)
        if not url:
            raise ResponderError("webhook responder: no url configured (set agents.<id>.responder.url)")
        secret = self._secret()
        shown = public_url(url)
        budget = max(0.0, deadline - time.monotonic())
        timeout_error = ResponderError(f"webhook responder: {shown} did not answer{about} within {round(budget * 1000)} ms")
        if budget <= 0:
            raise timeout_error
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "voicecall-gateway",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        }
        try:
            with self._client.stream("POST", url, content=body, headers=headers,
                                     timeout=httpx.Timeout(budget)) as response:
                with DeadlineGuard(response, deadline) as guard:
                    try:
                        raw = self._read(response, deadline)
                    except (httpx.HTTPError, TimeoutError) as exc:
                        if guard.fired or isinstance(exc, TimeoutError):
                            raise timeout_error from None
                        raise
        except ResponderError:
            raise
        except httpx.TimeoutException:
            raise timeout_error from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise ResponderError(f"webhook responder: {shown} is not a usable http(s) URL") from None
        except httpx.HTTPError as exc:
            raise ResponderError(f"webhook responder: {shown} unreachable: {exc}") from None
        if not response.is_success:
            detail = clip(raw.decode("utf-8", "replace")) if raw else response.reason_phrase
            answered = f"answered{about} with HTTP" if about else "answered HTTP"
            raise ResponderError(f"webhook responder: {shown} {answered} {response.status_code}: {detail}")
        return response, raw

    def respond(self, turn: Turn) -> Iterator[str | Hangup]:
        response, raw = self._post(self.request_body(turn), turn.deadline)
        yield from self._answer(response, raw)

    def tool_call(self, *, call_id: str, agent_id: str, session_key: str, name: str,
                  arguments: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Run a realtime model's custom tool on the agent service; its JSON object answer is the result."""
        body = json.dumps({"type": "tool_call", "callId": call_id, "agentId": agent_id, "sessionKey": session_key,
                           "name": name, "arguments": arguments},
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        response, raw = self._post(body, deadline, about=" the tool call")
        if response.status_code == 204 or not raw.strip():
            return {"ok": True}
        if media_type(response) == "text/plain":
            return {"result": raw.decode(response.charset_encoding or "utf-8", "replace").strip()}
        try:
            payload = json.loads(raw) if is_json(response) else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ResponderError("webhook responder: the agent's tool result must be a JSON object")
        return payload

    def _secret(self) -> str:
        secret = getattr(self.settings, "secret", None)
        if secret is None:
            raise ResponderError("webhook responder: no secret configured (set agents.<id>.responder.secret)")
        try:
            value = secret.reveal() if hasattr(secret, "reveal") else str(secret)
        except ValueError as exc:  # SecretError: names the missing variable or file, never a value
            raise ResponderError(f"webhook responder: secret: {exc}") from None
        if not value:
            raise ResponderError("webhook responder: the secret is empty")
        remember_secret(value)  # ResponderError messages (the agent's answers) are redacted with it
        return value

    @staticmethod
    def _read(response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > BODY_LIMIT:
            raise ResponderError(f"webhook responder: the agent's answer is larger than {BODY_LIMIT // 1024} KiB")
        raw = read_capped(response, BODY_LIMIT, deadline)
        if raw is None:
            raise ResponderError(f"webhook responder: the agent's answer is larger than {BODY_LIMIT // 1024} KiB")
        return raw

    @staticmethod
    def _answer(response: httpx.Response, raw: bytes) -> Iterator[str | Hangup]:
        if response.status_code == 204 or not raw.strip():
            return  # the agent chose to stay silent this turn
        kind = media_type(response)
        if kind == "text/plain":
            text = raw.decode(response.charset_encoding or "utf-8", "replace").strip()
            if text:
                yield text
            return
        if not is_json(response):
            raise ResponderError(f"webhook responder: the agent answered with {kind or 'no Content-Type'}, not JSON")
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise ResponderError(f"webhook responder: the agent's JSON answer does not parse: {exc}") from None
        if not isinstance(payload, dict):
            raise ResponderError("webhook responder: the agent's answer must be a JSON object with \"spoken\"")
        spoken = payload.get("spoken")
        if not isinstance(spoken, str):
            got = "missing" if "spoken" not in payload else f"a {type(spoken).__name__}"
            raise ResponderError(f"webhook responder: the agent's answer needs \"spoken\" as a string (got {got})")
        hangup = payload.get("hangup")
        if hangup is not None and not isinstance(hangup, bool):
            raise ResponderError(
                f"webhook responder: \"hangup\" must be true or false (got a {type(hangup).__name__})")
        if spoken.strip():
            yield spoken
        if hangup:
            yield Hangup()
