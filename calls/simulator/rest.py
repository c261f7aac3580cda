"""The slice of a carrier's REST API a gateway uses on streamed calls: dial, answer, hang up, status.

One loopback HTTP server; the simulated carrier (calls/simulator/twilio.py, telnyx.py, plivo.py)
answers each request. Point the gateway's `<carrier>.baseUrl` at it. What the gateway asks of a
call reaches the simulation through three callbacks, run on the server's thread: `on_hangup(sid)`,
`on_command(sid, action, body)` (e.g. Telnyx's answer) and `on_dial(dial)` (an outbound call).
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from .carrier import CarrierSide, Dial

log = logging.getLogger(__name__)


def carrier_side(carrier: str | CarrierSide, gateway=None) -> CarrierSide:
    """The simulated carrier by name (twilio, telnyx, plivo), or the one given."""
    if isinstance(carrier, CarrierSide):
        return carrier
    from .plivo import PlivoSide
    from .telnyx import TelnyxSide
    from .twilio import TwilioSide

    sides = {"twilio": TwilioSide, "telnyx": TelnyxSide, "plivo": PlivoSide}
    if carrier not in sides:
        raise ValueError(f"the simulator plays {', '.join(sides)}, not {carrier!r}")
    return sides[carrier](gateway)


class RestStub:
    """A loopback HTTP server answering the gateway's REST requests as `carrier` would."""

    def __init__(self, carrier: str | CarrierSide = "twilio", *, on_hangup: Callable[[str], None] = lambda sid: None,
                 on_command: Callable[[str, str, dict], None] | None = None,
                 on_dial: Callable[[Dial], None] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.side = carrier_side(carrier)
        self.on_hangup = on_hangup
        self.on_command = on_command or (lambda sid, action, body: None)
        self.on_dial = on_dial
        self.status: dict[str, str] = {}  # call sid → in-progress | completed (unknown calls are 404s)
        self.aliases: dict[str, str] = {}  # another id the gateway may name a call by (Plivo's request UUID) → sid
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # the simulator prints its own report
                pass

            def do_GET(self) -> None:
                stub._handle(self, "GET")

            def do_POST(self) -> None:
                stub._handle(self, "POST")

            def do_DELETE(self) -> None:
                stub._handle(self, "DELETE")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"sim-{self.side.name}-rest", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RestStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what the carrier's answers do (on the server's thread) ---------------------------------

    def live(self, sid: str) -> bool:
        return self.status.get(sid) == "in-progress"

    def hang_up(self, sid: str) -> None:
        """The gateway hung the call up: once, whatever it asks twice."""
        with self.lock:
            if self.status.get(sid) != "in-progress":
                return
            self.status[sid] = "completed"
        self.on_hangup(sid)

    def command(self, sid: str, action: str, body: dict[str, Any]) -> None:
        self.on_command(sid, action, body)

    def dialled(self, dial: Dial) -> bool:
        """An outbound call: False when nobody here places calls (the dial is refused)."""
        if self.on_dial is None:
            return False
        self.status[dial.sid] = "in-progress"
        if dial.request_id:
            self.aliases[dial.request_id] = dial.sid
        self.on_dial(dial)
        return True

    # --- HTTP ---------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode("utf-8", "replace") if length else ""
        if "json" in (handler.headers.get("Content-Type") or ""):
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
        else:
            body = parse_qs(raw, keep_blank_values=True)
        self.requests.append((method, path, body))
        try:
            answer = self.side.rest(self, method, path, body if isinstance(body, dict) else {})
        except Exception as exc:  # a simulator bug answers 500 rather than hanging the gateway's request
            log.exception("simulated %s REST %s %s failed", self.side.name, method, path)
            return self._reply(handler, 500, {"error": str(exc)})
        return self._reply(handler, answer.status, answer.body)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        handler.send_response(status)
        if data:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if data:
            handler.wfile.write(data)


class TwilioRestStub(RestStub):
    """The Twilio REST stub (kept by this name for the tests and benchmarks that start one)."""

    def __init__(self, on_hangup: Callable[[str], None] = lambda sid: None, *, host: str = "127.0.0.1", port: int = 0,
                 **kwargs) -> None:
        super().__init__("twilio", on_hangup=on_hangup, host=host, port=port, **kwargs)
