"""Fake OpenAI-compatible Chat Completions API on 127.0.0.1: real SSE streaming, request checks, failure knobs."""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import urlsplit

from tests.fakes.base import LoopbackHttpFake

__all__ = ["ChatRequest", "FakeChatCompletions", "openai_error"]

ROLES = {"system", "user", "assistant"}
# Request fields the real API accepts (the fake refuses others, as the API does).
KNOWN_FIELDS = {
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "n", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "user", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning_effort", "metadata", "store", "service_tier", "modalities", "prediction", "audio",
}
PATH = "/v1/chat/completions"

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class ChatRequest:
    """One request the client sent, and how the fake's answer ended."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any
    client_port: int = 0  # the same port on two requests: the client reused its connection
    status: int = 0
    # done | error | dropped | stalled | client-closed | stopped (the fake shut down first)
    outcome: str = ""
    chunk_times: list[float] = field(default_factory=list)  # time.monotonic() as each content delta left
    finished: threading.Event = field(default_factory=threading.Event)


class _ValidationError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def openai_error(message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _mask(key: str) -> str:
    # the real API shows a little of a wrong key, never all of it
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


class FakeChatCompletions(LoopbackHttpFake):
    """`POST /v1/chat/completions`, answered the way OpenAI does: `chat.completion.chunk` SSE events,
    a first delta with the role, content deltas of `chunk_chars`, a final finish_reason "stop" chunk
    (plus a usage chunk when stream_options.include_usage), then `data: [DONE]`.

    Knobs (attributes; change them between requests):
      reply                 the answer text, or callable(request_json) -> str
      chunk_chars           characters per content delta
      delay_between_chunks  seconds between content deltas
      status, error_body    answer this HTTP status with OpenAI's error JSON (or this dict / raw bytes)
      hang                  True: read the request and never answer; an int N: stall after N content deltas
      trickle               seconds between bytes of an endless keep-alive comment sent after the headers
      garbage               how many non-JSON `data:` lines to send before the first content delta
      sse_noise             also send comments and event:/id:/retry: fields, as proxies and some servers do
      reasoning             text sent first as `reasoning_field` deltas (reasoning models)
      reasoning_field       "reasoning_content" (DeepSeek, vLLM) or "reasoning" (OpenRouter, Ollama)
      non_streaming         answer a plain JSON chat.completion even when stream is true
      split_events          send every event in two writes, cut inside a UTF-8 character or mid-line
      drop_after_chunks     close the connection after N content deltas, without [DONE]
      error_after_chunks    after N content deltas send a `data: {"error": ...}` event and end
    """

    def __init__(self, *, api_key: str | None = None, reply: Reply = "Hello! How can I help you today?",
                 chunk_chars: int = 4, delay_between_chunks: float = 0.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.reply: Reply = reply
        self.chunk_chars = chunk_chars
        self.delay_between_chunks = delay_between_chunks
        self.status: int | None = None
        self.error_body: Any = None
        self.hang: bool | int | None = None
        self.trickle: float | None = None
        self.garbage = 0
        self.sse_noise = False
        self.reasoning: str | None = None
        self.reasoning_field = "reasoning_content"
        self.non_streaming = False
        self.split_events = False
        self.drop_after_chunks: int | None = None
        self.error_after_chunks: int | None = None
        self.error_message = "The server had an error while processing your request. Sorry about that!"
        self.requests: list[ChatRequest] = []
        self.errors: list[BaseException] = []  # crashes in the fake itself
        self.lock = threading.Lock()

    thread_name = "fake-llm"

    def handler_class(self) -> type:
        return _Handler

    @property
    def url(self) -> str:
        """The base URL a client is configured with (it appends /chat/completions)."""
        return self.origin + "/v1"

    @property
    def last(self) -> ChatRequest:
        with self.lock:
            return self.requests[-1]

    # ---- what the fake answers

    def reply_for(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    def pieces(self, text: str) -> list[str]:
        size = max(1, self.chunk_chars)
        return [text[i:i + size] for i in range(0, len(text), size)]

    def _check(self, record: ChatRequest) -> tuple[int, dict[str, Any]] | None:
        """The error answer for a request the real API would refuse, else None."""
        if self.api_key is not None:
            header = record.headers.get("authorization", "")
            if not header.startswith("Bearer "):
                return 401, openai_error(
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            if header[7:] != self.api_key:
                return 401, openai_error(
                    f"Incorrect API key provided: {_mask(header[7:])}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        if self.status is not None:
            return self.status, self.error_body if self.error_body is not None else openai_error(
                self.error_message if self.status >= 500 else f"Request failed with status {self.status}",
                "server_error" if self.status >= 500 else "invalid_request_error")
        try:
            _validate(record)
        except _ValidationError as exc:
            return 400, openai_error(str(exc), param=exc.param)
        return None

    def _record(self, path: str, headers: dict[str, str], body: bytes, client_port: int = 0) -> ChatRequest:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = ChatRequest(path=path, headers={k.lower(): v for k, v in headers.items()}, body=body, json=parsed,
                             client_port=client_port)
        with self.lock:
            self.requests.append(record)
        return record


def _validate(record: ChatRequest) -> None:
    if not record.headers.get("content-type", "").startswith("application/json"):
        raise _ValidationError("Content-Type must be application/json")
    body = record.json
    if not isinstance(body, dict):
        raise _ValidationError("We could not parse the JSON body of your request.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise _ValidationError(f"Unrecognized request argument supplied: {', '.join(unknown)}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _ValidationError("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ValidationError("'messages' must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _ValidationError(f"Invalid value for 'messages[{index}].role'", f"messages[{index}].role")
        if not isinstance(message.get("content"), str):
            raise _ValidationError(f"Invalid type for 'messages[{index}].content': expected a string",
                                   f"messages[{index}].content")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _ValidationError("Invalid type for 'stream': expected a boolean", "stream")
    temperature = body.get("temperature", 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise _ValidationError(f"Invalid 'temperature': {temperature!r} (between 0 and 2)", "temperature")
    max_tokens = body.get("max_tokens", 1)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _ValidationError(f"Invalid 'max_tokens': {max_tokens!r} (at least 1)", "max_tokens")


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer encoding, as the real API streams
    fake: FakeChatCompletions  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log is FakeChatCompletions.requests

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up on a kept-alive connection (it gave up on an answer): nothing to serve

    def do_GET(self) -> None:
        self._read()
        self._send_json(404, openai_error(f"Invalid URL (GET {urlsplit(self.path).path})"))

    def do_POST(self) -> None:
        record = self._read()
        try:
            self._answer(record)
        except (BrokenPipeError, ConnectionResetError, _ClientGone):
            record.outcome = "client-closed"
            self.close_connection = True
        except _Stopped:
            record.outcome = "stopped"
            self.close_connection = True
        except Exception as exc:  # a fake bug must surface, not hang the client
            self.fake.errors.append(exc)
            record.outcome = "error"
            self.close_connection = True
        finally:
            record.finished.set()

    def _read(self) -> ChatRequest:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        return self.fake._record(urlsplit(self.path).path, dict(self.headers.items()), body, self.client_address[1])

    def _answer(self, record: ChatRequest) -> None:
        fake = self.fake
        if record.path != PATH:
            record.status, record.outcome = 404, "error"
            self._send_json(404, openai_error(f"Invalid URL (POST {record.path})"))
            return
        refusal = fake._check(record)
        if refusal is not None:
            record.status, record.outcome = refusal[0], "error"
            self._send_json(*refusal)
            return
        if fake.hang is True:
            record.outcome = "stalled"
            self._idle(None)
            return
        body = record.json
        text = fake.reply_for(body)
        record.status = 200
        if fake.non_streaming or not body.get("stream"):
            self._send_json(200, _completion(body["model"], text, fake.reasoning, fake.reasoning_field))
            record.outcome = "done"
            return
        self._stream(record, body, text)

    def _stream(self, record: ChatRequest, body: dict[str, Any], text: str) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if fake.trickle is not None:
            record.outcome = "stalled"
            while True:
                for byte in b": keep-alive\n\n":
                    self._write(bytes([byte]))
                    self._idle(fake.trickle)
        cid, created, model = f"chatcmpl-fake{len(fake.requests)}", int(time.time()), body["model"]

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            self._event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "system_fingerprint": "fp_fake", "choices": [
                             {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        if fake.sse_noise:
            self._write(b": OPENROUTER PROCESSING\n\nretry: 3000\n\n")
        event({"role": "assistant", "content": ""})
        for piece in fake.pieces(fake.reasoning or ""):
            event({fake.reasoning_field: piece})
        for _ in range(fake.garbage):
            self._write(b"data: {not json at all\n\n")
        pieces = fake.pieces(text)
        stall_at = fake.hang if isinstance(fake.hang, int) and not isinstance(fake.hang, bool) else None
        for index, piece in enumerate(pieces):
            if index == stall_at:
                record.outcome = "stalled"
                self._idle(None)
                return
            if fake.drop_after_chunks == index:
                record.outcome = "dropped"
                self.close_connection = True  # no terminating chunk: the body is cut short
                return
            if fake.error_after_chunks == index:
                self._event(openai_error(fake.error_message, "server_error"))
                self._end()
                record.outcome = "error"
                return
            if index and fake.delay_between_chunks:
                self._idle(fake.delay_between_chunks)
            if fake.sse_noise:
                self._write(f"event: message\nid: {index}\n".encode())
            event({"content": piece})
            record.chunk_times.append(time.monotonic())
        tail = len(pieces)
        if stall_at is not None and stall_at >= tail:
            record.outcome = "stalled"
            self._idle(None)
            return
        if fake.drop_after_chunks is not None and fake.drop_after_chunks >= tail:
            record.outcome = "dropped"
            self.close_connection = True
            return
        if fake.error_after_chunks is not None and fake.error_after_chunks >= tail:
            self._event(openai_error(fake.error_message, "server_error"))
            self._end()
            record.outcome = "error"
            return
        event({}, "stop")
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            self._event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [], "usage": _usage(body, text)})
        self._write(b"data: [DONE]\n\n")
        self._end()
        record.outcome = "done"

    # ---- wire

    def _event(self, payload: dict[str, Any]) -> None:
        # raw UTF-8 like the real API, so multi-byte characters reach the client unescaped
        data = b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
        if not self.fake.split_events:
            self._write(data)
            return
        # cut inside the first multi-byte character (else mid-line), and pause so the client reads twice
        cut = next((i + 1 for i, byte in enumerate(data) if byte >= 0x80), len(data) // 2)
        self._write(data[:cut])
        self._idle(0.01)
        self._write(data[cut:])

    def _write(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _idle(self, seconds: float | None) -> None:
        """Wait `seconds` (None: until the fake stops), noticing a client that hangs up meanwhile."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            if self.fake._release.is_set():
                raise _Stopped
            left = 0.02 if deadline is None else min(0.02, deadline - time.monotonic())
            if left <= 0:
                return
            if _peer_closed(self.connection, left):
                raise _ClientGone


class _Stopped(Exception):
    pass


def _peer_closed(sock: socket.socket, wait: float) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _completion(model: str, text: str, reasoning: str | None, reasoning_field: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reasoning:
        message[reasoning_field] = reasoning
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 4),
                      "total_tokens": 10 + max(1, len(text) // 4)}}


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(m.get("content", "")) for m in body.get("messages", [])) // 4 + 1
    completion = max(1, len(text) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
