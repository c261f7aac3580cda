"""The llm responder: streams the reply from any OpenAI-compatible Chat Completions endpoint (SSE)."""
from __future__ import annotations

import codecs
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from core.config.models import ResolvedModel
from core.redact import redact

from ..tls import http_tls
from .base import Hangup, Responder, ResponderError, Turn

__all__ = ["DeadlineGuard", "LlmResponder", "clip", "error_message"]

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 200  # characters of a server's error message worth showing in a log line
ERROR_BODY_LIMIT = 16 * 1024  # an error body is a small JSON document; never buffer an unbounded one
JSON_BODY_LIMIT = 4 * 1024 * 1024  # a whole non-streamed completion; a spoken reply is far smaller
LINE_LIMIT = 1024 * 1024  # one SSE line; a server that never sends a newline must not grow memory forever
DRAIN_S = 0.25  # how long a server may take to end the body after [DONE]
NO_MODEL = "llm responder: no model configured (set responseModel or agents.<id>.responder.model)"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class DeadlineGuard:
    """Shuts a response's socket down at the deadline.

    httpx fixes the read timeout when the body starts, so a server that sends a little and then
    stalls would be waited on for a whole timeout after the deadline. Shutting the socket down
    wakes the blocked read at once; `fired` tells the reader the failure was the deadline.
    """

    def __init__(self, response: httpx.Response, deadline: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._done = False
        self._generation = 0
        self._response = response
        self._sock = _socket_of(response)
        self._timer: threading.Timer | None = None
        self.rearm(deadline)

    def rearm(self, deadline: float) -> None:
        """Move the shutdown to `deadline` (only ever useful to bring it closer)."""
        with self._lock:
            if self._sock is None or self._done or self.fired:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._generation += 1
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire, (self._generation,))
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, generation: int) -> None:
        with self._lock:
            if self._done or generation != self._generation:
                return  # cancelled or re-armed while this timer was already on its way
            if self._response.is_closed:
                return  # a fully read body hands the connection back to the pool: it may serve another turn now
            self.fired = True
            try:
                # the plain socket method: SSLSocket.shutdown would also drop the TLS object under the reader
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        # under the lock, so a pooled connection is never shut down after the response was handed back
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> DeadlineGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # transports without a real socket (tests' mock transports, proxies)
        return None
    return sock if isinstance(sock, socket.socket) else None


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Upstream text as one short line; redacted before it is cut, so no credential is left half masked."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_message(raw: bytes) -> str:
    """The human message of an error body: OpenAI's {"error": {"message"}}, close variants, or the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return clip(text)
    return clip(_message_of(payload) or text)


def _message_of(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, list):  # some gateways wrap the error object in a list
        return _message_of(payload[0]) if payload else ""
    if isinstance(payload, dict):
        for key in ("error", "message", "detail"):
            message = _message_of(payload.get(key))
            if message:
                return message
    return ""


def host_of(url: str) -> str:
    """host[:port] of a URL, never its userinfo, path or query."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "an invalid URL"
    if not parsed.host:
        return "an invalid URL"
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json(response: httpx.Response) -> bool:
    kind = media_type(response)
    return kind == "application/json" or kind.endswith("+json")


def read_capped(response: httpx.Response, limit: int, deadline: float) -> bytes | None:
    """The body, or None when it is longer than `limit`; stops at the deadline (TimeoutError)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > limit:
            return None
        if time.monotonic() >= deadline:
            raise TimeoutError
    return bytes(data)


class LlmResponder(Responder):
    """POST the conversation to `{base_url}/chat/completions` with stream: true and yield the deltas."""

    type = "llm"
    follows_contract = True

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        # one pool per responder: turns of the same agent reuse warm connections (httpx.Client is thread-safe)
        self._client = httpx.Client(follow_redirects=False, verify=http_tls())

    def close(self) -> None:
        self._client.close()

    def request_body(self, turn: Turn, model: ResolvedModel) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if turn.system_prompt:
            messages.append({"role": "system", "content": turn.system_prompt})
        # some servers refuse a message with empty content, and an empty turn carries nothing
        messages += [{"role": item.role, "content": item.text} for item in turn.history if item.text]
        messages.append({"role": "user", "content": turn.user_message or turn.transcript})
        body: dict[str, Any] = {"model": model.model, "messages": messages, "stream": True}
        temperature = getattr(self.settings, "temperature", None)
        max_tokens = getattr(self.settings, "max_tokens", None)
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    def respond(self, turn: Turn) -> Iterator[str | Hangup]:
        model = turn.model
        if model is None:
            raise ResponderError(NO_MODEL)
        budget = turn.remaining()
        timeout_error = ResponderError(f"llm responder: no complete reply within {round(budget * 1000)} ms")
        if budget <= 0:
            raise timeout_error
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if model.api_key:
            headers["Authorization"] = f"Bearer {model.api_key}"
        payload = json.dumps(self.request_body(turn, model), ensure_ascii=False).encode("utf-8")
        url = f"{model.base_url.rstrip('/')}/chat/completions"
        try:
            with self._client.stream("POST", url, content=payload, headers=headers,
                                     timeout=httpx.Timeout(budget)) as response:
                with DeadlineGuard(response, turn.deadline) as guard:
                    try:
                        if not response.is_success:
                            raise self._http_error(response, model, turn.deadline)
                        if is_json(response):
                            yield from self._from_json(response, model, turn.deadline)
                        else:
                            yield from self._from_stream(response, model, turn.deadline, guard)
                    except (httpx.HTTPError, TimeoutError) as exc:
                        if guard.fired or isinstance(exc, TimeoutError):
                            raise timeout_error from None
                        raise
        except ResponderError as exc:
            if exc is timeout_error:
                raise
            raise ResponderError(str(exc)) from None
        except httpx.TimeoutException:
            raise timeout_error from None
        except httpx.ConnectError as exc:
            raise ResponderError(f"llm responder: cannot reach {host_of(url)}: {exc}") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise ResponderError(f"llm responder: the base URL of {model.name} is not a usable http(s) URL") from None
        except httpx.HTTPError as exc:
            message = f"llm responder: request to {host_of(url)} failed: {type(exc).__name__}: {exc}"
            raise ResponderError(message) from None

    def _http_error(self, response: httpx.Response, model: ResolvedModel, deadline: float) -> ResponderError:
        try:
            raw = read_capped(response, ERROR_BODY_LIMIT, deadline) or b""
        except (httpx.HTTPError, TimeoutError):
            raw = b""  # the status is the news; a body that cannot be read adds nothing
        detail = error_message(raw) or response.reason_phrase
        return ResponderError(f"llm responder: {model.name} answered HTTP {response.status_code}: {detail}")

    def _from_json(self, response: httpx.Response, model: ResolvedModel, deadline: float) -> Iterator[str]:
        # servers that ignore "stream" (or proxies that buffer) answer with one plain completion
        raw = read_capped(response, JSON_BODY_LIMIT, deadline)
        if raw is None:
            raise ResponderError(f"llm responder: {model.name} answered with more than {JSON_BODY_LIMIT} bytes")
        try:
            payload = json.loads(raw)
        except ValueError:
            raise ResponderError(f"llm responder: {model.name} answered with a body that is not JSON") from None
        if isinstance(payload, dict) and payload.get("error"):
            raise ResponderError(f"llm responder: {model.name} reported an error: {clip(_message_of(payload))}")
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str) or not content:
            raise ResponderError(f"llm responder: {model.name} answered without choices[0].message.content")
        yield content

    def _from_stream(self, response: httpx.Response, model: ResolvedModel, deadline: float,
                     guard: DeadlineGuard) -> Iterator[str]:
        pieces = skipped = 0
        cut: Exception | None = None
        lines = _lines(response, deadline)
        try:
            for line in lines:
                if not line or line.startswith(":"):
                    continue  # blank lines end events; ":" lines are keep-alive comments
                name, _, value = line.partition(":")
                if name != "data":
                    continue  # event:, id:, retry: carry nothing a Chat Completions client needs
                value = value[1:] if value.startswith(" ") else value
                if value.strip() == "[DONE]":
                    _drain(lines, guard, deadline)
                    return
                try:
                    event = json.loads(value)
                except ValueError:
                    skipped += 1
                    continue
                if not isinstance(event, dict):
                    skipped += 1
                    continue
                if event.get("error"):
                    raise ResponderError(f"llm responder: {model.name} reported an error mid-stream: "
                                         f"{clip(_message_of(event))}")
                piece = _delta_content(event)
                if piece:
                    pieces += 1
                    yield piece
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if guard.fired:
                raise
            cut = exc
        finally:
            if skipped:
                log.info("llm responder: %s sent %d data line(s) that were not JSON; skipped", model.name, skipped)
        if guard.fired:
            raise TimeoutError  # the deadline shut the socket; a close-delimited body just looks finished
        # the connection ended without [DONE]: the reply may be cut short, but what came is still worth saying
        if pieces:
            log.info("llm responder: %s ended the stream without [DONE] after %d piece(s)", model.name, pieces)
            return
        reason = f": {type(cut).__name__}: {cut}" if cut else ""
        raise ResponderError(f"llm responder: {model.name} ended the stream without any reply{reason}")


def _drain(lines: Iterator[str], guard: DeadlineGuard, deadline: float) -> None:
    """Read what follows [DONE] (the body's last chunk), so the connection can go back to the pool.

    A server that keeps the stream open after [DONE] gets a moment, then its socket is shut down:
    the reply is complete either way, only the connection is not reused.
    """
    guard.rearm(min(deadline, time.monotonic() + DRAIN_S))
    try:
        for _ in lines:
            pass
    except (httpx.HTTPError, TimeoutError, ResponderError):
        pass


def _delta_content(event: dict[str, Any]) -> str | None:
    # only delta.content is spoken: reasoning_content / reasoning deltas are the model's private thoughts
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # e.g. the usage chunk, whose choices are empty
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) and content else None


def _lines(response: httpx.Response, deadline: float) -> Iterator[str]:
    """SSE lines as they arrive, checking the deadline after every network read.

    Reads are per chunk rather than per line so that a server that trickles bytes without ever
    finishing a line still meets the deadline instead of holding the turn forever.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    for chunk in response.iter_bytes():
        pending += decoder.decode(chunk)
        *lines, pending = _LINE_BREAK.split(pending)
        yield from lines
        if len(pending) > LINE_LIMIT:
            raise ResponderError(f"llm responder: an SSE line longer than {LINE_LIMIT} bytes")
        if time.monotonic() >= deadline:
            raise TimeoutError
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending
