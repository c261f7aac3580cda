"""Shared machinery of the fake carriers: loopback REST server, request log, failure injection, webhook worker."""
from __future__ import annotations

import base64
import json
import queue
import re
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, urlencode, urljoin, urlsplit

import httpx

__all__ = [
    "Delivery",
    "FakeServer",
    "LoopbackHttpFake",
    "Recorded",
    "Reply",
    "add_query",
    "basic_credentials",
    "first",
    "now_utc",
    "parse_document",
    "resolve_url",
    "rfc2822",
    "small_wav",
]


# --------------------------------------------------------------------------- records


@dataclass
class Recorded:
    """One REST request the gateway sent to the fake, and the status it was answered with."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[str]] | None
    json: Any | None
    status: int = 0

    def value(self, name: str, default: Any = None) -> Any:
        """First value of a parameter, looked up in the form, then the JSON object, then the query."""
        if self.form and name in self.form:
            return self.form[name][0]
        if isinstance(self.json, dict) and name in self.json:
            return self.json[name]
        if name in self.query:
            return self.query[name][0]
        return default


@dataclass
class Delivery:
    """One webhook the fake sent to the gateway, with the gateway's answer (status 0: not delivered)."""

    url: str  # the URL the carrier meant to call, which is also the URL it signed
    method: str
    headers: dict[str, str]
    body: bytes
    status: int
    response_text: str
    content_type: str
    sent_to: str = ""  # where the request really went (differs from url when `reroute` applies)

    @property
    def params(self) -> dict[str, str]:
        """Form parameters of the webhook (POST body, or the query string of a GET)."""
        if self.method.upper() == "GET":
            return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return dict(parse_qsl(self.body.decode(), keep_blank_values=True))
        return {}

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Reply:
    """What a route answers: a status and a JSON-able body (None: empty body)."""

    status: int
    body: Any = None
    content_type: str = "application/json"


@dataclass
class _Failure:
    method: str
    path_regex: re.Pattern[str]
    status: int
    body: Any
    remaining: int


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: Future
    report: bool  # nobody waits on the future: record a crash in FakeServer.errors


# --------------------------------------------------------------------------- helpers


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def rfc2822(moment: datetime | None) -> str | None:
    """Twilio's date format, e.g. "Tue, 01 Jan 2026 12:00:00 +0000"."""
    return format_datetime(moment) if moment else None


def small_wav(seconds: float = 1.0, channels: int = 2, rate: int = 8000) -> bytes:
    """A real WAV file (16-bit PCM, a 440 Hz tone on the left, 660 Hz on the right): what a carrier's recording URL serves."""
    import io
    import math
    import struct
    import wave

    frames = bytearray()
    for n in range(int(seconds * rate)):
        for channel in range(channels):
            frequency = 440 if channel == 0 else 660
            frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency * n / rate)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return buffer.getvalue()


def first(values: dict[str, list[str]] | None, name: str, default: str | None = None) -> str | None:
    if values and values.get(name):
        return values[name][0]
    return default


def basic_credentials(record: Recorded) -> tuple[str, str] | None:
    """(user, password) from an HTTP Basic Authorization header, or None."""
    header = record.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except ValueError:
        return None
    return user, password


def add_query(url: str, params: dict[str, str]) -> str:
    """Append params to a URL's query string (for webhooks sent with GET)."""
    if not params:
        return url
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


def resolve_url(document_url: str | None, url: str) -> str:
    """Carriers resolve relative action/redirect URLs against the URL the document came from."""
    return urljoin(document_url, url) if document_url else url


def parse_document(text: str, root_tag: str = "Response") -> ET.Element:
    """Parse a TwiML / Plivo XML answer; ValueError when it is not a <Response> document."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise ValueError(f"document is not XML: {exc}") from None
    if root.tag != root_tag:
        raise ValueError(f"root element is <{root.tag}>, expected <{root_tag}>")
    return root


def _form_of(content_type: str, body: bytes) -> dict[str, list[str]] | None:
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return None
    form: dict[str, list[str]] = {}
    # parse_qsl keeps the order of repeated keys, which matters for StatusCallbackEvent
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, []).append(value)
    return form


def _json_of(content_type: str, body: bytes) -> Any | None:
    if "json" not in content_type or not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# --------------------------------------------------------------------------- HTTP handler


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the owning FakeServer; one instance per request."""

    fake: FakeServer  # set on the per-server subclass

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep pytest output clean; the request log is FakeServer.requests

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake = self.fake
        record = fake._record(self.command, self.path, dict(self.headers.items()), body)
        fake._begin_request()
        try:
            self._send(fake._dispatch(record))
        finally:
            # webhooks caused by this request go out only once the answer is on the wire
            fake._end_request()

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.status == 204 or reply.body is None:
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


# --------------------------------------------------------------------------- server


class FakeServer:
    """A carrier's REST API on 127.0.0.1:<random port> plus a single worker that delivers its webhooks.

    Subclasses fill `self.routes` with (method, path regex, handler) and implement `authorized`,
    `not_found` and `method_not_allowed`. REST handlers run under `self.lock` and never make HTTP
    calls themselves: they `schedule()` the work, which runs on the worker after the answer is sent.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.deliveries: list[Delivery] = []
        self.errors: list[BaseException] = []  # crashes in background work (a fake bug, or a bad test)
        # {"https://gw.example.com": "http://127.0.0.1:8000"}: sign for the public URL, deliver locally
        self.reroute: dict[str, str] = {}
        self.delivery_headers: dict[str, str] = {}  # added to every webhook, e.g. X-Forwarded-Proto
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Reply]]] = []
        self._failures: list[_Failure] = []
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._local = threading.local()
        self._httpd: ThreadingHTTPServer | None = None
        self._worker: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # ---- lifecycle

    def start(self) -> FakeServer:
        if self._httpd is not None:
            return self
        handler = type(f"{type(self).__name__}Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # a short poll interval keeps stop() fast (shutdown waits for the serve loop to notice)
        threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name=f"{type(self).__name__}-http", daemon=True
        ).start()
        self._client = httpx.Client(timeout=10)
        self._worker = threading.Thread(target=self._work, name=f"{type(self).__name__}-worker", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout=15)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- request log and failure injection

    def requests_to(self, method: str, path_regex: str) -> list[Recorded]:
        """Recorded requests with this method whose path matches the regex (re.search)."""
        pattern = re.compile(path_regex)
        with self.lock:
            return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    def fail_next(self, method: str, path_regex: str, status: int, body: Any, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status` and JSON `body`, before any other check."""
        with self.lock:
            self._failures.append(_Failure(method.upper(), re.compile(path_regex), status, body, times))

    def _record(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Recorded:
        parts = urlsplit(raw_path)
        lower = {name.lower(): value for name, value in headers.items()}
        content_type = lower.get("content-type", "")
        record = Recorded(
            method=method.upper(),
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=lower,
            body=body,
            form=_form_of(content_type, body),
            json=_json_of(content_type, body),
        )
        with self.lock:
            self.requests.append(record)
        return record

    def _dispatch(self, record: Recorded) -> Reply:
        with self.lock:
            reply = self._injected_failure(record)
            if reply is None:
                try:
                    reply = self._route(record)
                except Exception as exc:  # a fake bug must surface as a 500, not a hung client
                    self.errors.append(exc)
                    reply = Reply(500, {"error": f"fake carrier crashed: {exc!r}"})
            record.status = reply.status
            return reply

    def _injected_failure(self, record: Recorded) -> Reply | None:
        for failure in self._failures:
            if failure.method == record.method and failure.path_regex.search(record.path):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return Reply(failure.status, failure.body)
        return None

    def _route(self, record: Recorded) -> Reply:
        if not self.authorized(record):
            return self.unauthorized()
        path_matched = False
        for method, pattern, handler in self.routes:
            match = pattern.match(record.path)
            if match is None:
                continue
            path_matched = True
            if method == record.method:
                return handler(record, **match.groupdict())
        return self.method_not_allowed() if path_matched else self.not_found()

    # carrier-specific hooks
    def authorized(self, record: Recorded) -> bool:
        return True

    def unauthorized(self) -> Reply:
        return Reply(401, {"error": "unauthorized"})

    def not_found(self) -> Reply:
        return Reply(404, {"error": "not found"})

    def method_not_allowed(self) -> Reply:
        return Reply(405, {"error": "method not allowed"})

    # ---- background work

    def schedule(self, fn: Callable[[], Any]) -> None:
        """Run fn on the worker: after the current REST answer is sent, or next in line otherwise."""
        job = self._new_job(fn, report=True)
        deferred = getattr(self._local, "deferred", None)
        if deferred is not None:
            deferred.append(job)
        else:
            self._jobs.put(job)

    def submit(self, fn: Callable[[], Any], wait: bool = True, timeout: float = 10) -> Any:
        """Run a test-facing action on the worker; with wait, return its result once all follow-ups are done."""
        if threading.current_thread() is self._worker:
            return fn()  # already on the worker (an action called from a hook): queueing would deadlock
        job = self._new_job(fn, report=not wait)
        self._jobs.put(job)
        if not wait:
            return job.future
        result = job.future.result(timeout)
        self.wait_idle(timeout)
        return result

    def wait_idle(self, timeout: float = 5) -> None:
        """Block until the webhook queue is drained and nothing is in flight."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(f"{type(self).__name__} still busy after {timeout}s ({self._pending} jobs)")

    def _new_job(self, fn: Callable[[], Any], report: bool) -> _Job:
        # counted as pending from the moment it exists, so wait_idle() right after a REST call waits for it
        with self._idle:
            self._pending += 1
        return _Job(fn, Future(), report)

    def _begin_request(self) -> None:
        self._local.deferred = []

    def _end_request(self) -> None:
        for job in self._local.deferred:
            self._jobs.put(job)
        self._local.deferred = None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.future.set_result(job.fn())
            except BaseException as exc:  # never let one job kill the worker
                job.future.set_exception(exc)
                if job.report:
                    self.errors.append(exc)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    # ---- webhook delivery (worker thread only)

    def deliver(self, url: str, method: str, headers: dict[str, str], body: bytes = b"") -> Delivery:
        """Send one webhook and record it; connection errors are recorded with status 0."""
        target = self._rerouted(url)
        sent_headers = {**headers, **self.delivery_headers}
        assert self._client is not None, "fake carrier not started"
        try:
            response = self._client.request(method, target, headers=sent_headers, content=body or None)
            delivery = Delivery(
                url, method, sent_headers, body, response.status_code, response.text,
                response.headers.get("content-type", ""), target,
            )
        except httpx.HTTPError as exc:
            delivery = Delivery(url, method, sent_headers, body, 0, f"{type(exc).__name__}: {exc}", "", target)
        with self.lock:
            self.deliveries.append(delivery)
        return delivery

    def _rerouted(self, url: str) -> str:
        for public, local in self.reroute.items():
            if url.startswith(public):
                return local + url[len(public):]
        return url


class LoopbackHttpFake:
    """An HTTP fake on 127.0.0.1:<random port>, served from a thread; usable as a context manager.

    Subclasses call `super().__init__()` and implement `handler_class()`, a BaseHTTPRequestHandler
    subclass whose requests reach the fake as `self.fake`. `_release` is set when the fake stops,
    so handlers that stall on purpose wake up and finish.
    """

    thread_name = "fake-http"

    def __init__(self) -> None:
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    def handler_class(self) -> type:
        raise NotImplementedError

    def start(self):
        if self._httpd is None:
            self._release.clear()
            handler = type(f"{type(self).__name__}Handler", (self.handler_class(),), {"fake": self})
            self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._httpd.daemon_threads = True
            threading.Thread(target=self._httpd.serve_forever, args=(0.02,), name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """http://127.0.0.1:<port> (raises when the fake is not running)."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"
