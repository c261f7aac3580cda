"""A simulated Twilio for a cluster: the caller's webhooks go to one node, its media stream to another.

`ClusterTwilio` is the fake Twilio REST API that every node (and Celery worker) of a cluster talks
to. It also knows the inbound calls the simulated callers place (`caller_placed`), so a hang-up or
a TwiML update the gateway sends for one of them is applied to it, and it notes which process sent
each REST request (`sender_pid`), so a test can tell a dial placed by a Celery worker from one
placed by the gateway that took the RPC.

`SplitCaller` is a RealtimeCaller registered with a ClusterTwilio. Given a simulator Gateway whose
`stream_base_url` names another node than its `base_url`, its webhooks go to one node and its media
stream to the other: the stream URL in the TwiML names the public URL, and the test points the
socket at a node of its choice, as a load balancer may.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from calls.port_holder import pid_holding, socket_inodes
from tests.calls.realtime_caller import RealtimeCaller
from tests.fakes.base import Recorded
from tests.fakes.twilio import FakeTwilio, FakeTwilioCall


class ClusterTwilio(FakeTwilio):
    """FakeTwilio that knows simulated inbound calls and the process behind each REST request."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.senders: dict[int, int | None] = {}  # id(Recorded) → pid of the process that sent it
        self._peer = threading.local()
        self._on_end: dict[str, Callable[[], None]] = {}

    def start(self) -> "ClusterTwilio":
        super().start()
        handler = self._httpd.RequestHandlerClass
        local = self._peer

        class NotingPeer(handler):
            def _serve(self) -> None:
                local.port = self.client_address[1]
                super()._serve()

        self._httpd.RequestHandlerClass = NotingPeer
        return self

    def _record(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Recorded:
        record = super()._record(method, raw_path, headers, body)
        port = getattr(self._peer, "port", None)
        # Looked up while the request's connection is open: the client's socket still names its process.
        self.senders[id(record)] = pid_of_local_port(port) if port else None
        return record

    def sender_pid(self, record: Recorded) -> int | None:
        return self.senders.get(id(record))

    def caller_placed(self, sid: str, *, from_: str, to: str, on_end: Callable[[], None]) -> FakeTwilioCall:
        """A simulated caller's inbound call, answered and streaming; `on_end` runs when it is ended through REST."""
        with self.lock:
            call = FakeTwilioCall(sid=sid, to=to, from_=from_, direction="inbound", status="in-progress")
            call.blocked_on = "stream"
            self.calls[sid] = call
            self._on_end[sid] = on_end
        return call

    def _end_call(self, call: FakeTwilioCall, status: str) -> None:
        ended_before = call.ended
        super()._end_call(call, status)
        hook = self._on_end.get(call.sid)
        if hook is not None and not ended_before:
            hook()

    def dials(self) -> list[Recorded]:
        """The create-call requests (outbound dials) received so far."""
        return self.requests_to("POST", r"/Calls\.json$")

    def updates(self, sid: str) -> list[Recorded]:
        return self.requests_to("POST", rf"/Calls/{sid}\.json$")


class SplitCaller(RealtimeCaller):
    """A RealtimeCaller registered with a ClusterTwilio, so the gateway's REST hang-up reaches it."""

    def __init__(self, gateway, lines, *, twilio: ClusterTwilio, **kwargs) -> None:
        super().__init__(gateway, lines, **kwargs)
        loop = asyncio.get_running_loop()
        twilio.caller_placed(self.sid, from_=self.caller, to=self.callee,
                             on_end=lambda: loop.call_soon_threadsafe(self.gateway_hung_up))


def pid_of_local_port(port: int) -> int | None:
    """The process holding the loopback TCP socket whose local port is `port` (/proc/net/tcp), if any."""
    return pid_holding(socket_inodes(port, listening=False))


def ancestors(pid: int) -> list[int]:
    """`pid` and its parents, up to init."""
    chain = [pid]
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain
