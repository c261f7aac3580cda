"""The slice of Twilio's REST API a gateway uses on inbound streamed calls: hang up and status."""
from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

log = logging.getLogger(__name__)

CALL_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")


class TwilioRestStub:
    """A loopback HTTP server; `on_hangup(call_sid)` runs (on its thread) when the gateway hangs up."""

    def __init__(self, on_hangup: Callable[[str], None], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.on_hangup = on_hangup
        self.status: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # the simulator prints its own report
                pass

            def do_GET(self) -> None:
                stub._handle(self, "GET", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
                stub._handle(self, "POST", form)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="sim-twilio-rest", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TwilioRestStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str, form: dict[str, list[str]]) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((method, path, form))
        match = CALL_PATH.match(path)
        if not match:
            return self._reply(handler, 404, {"code": 20404, "message": "The requested resource was not found", "status": 404})
        sid = match["sid"]
        if sid not in self.status:
            return self._reply(handler, 404, {"code": 20404, "message": f"Call {sid} not found", "status": 404})
        if method == "POST" and form.get("Status", [""])[0] == "completed":
            if self.status[sid] != "completed":
                self.status[sid] = "completed"
                self.on_hangup(sid)
        return self._reply(handler, 200, {"sid": sid, "status": self.status[sid]})

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
