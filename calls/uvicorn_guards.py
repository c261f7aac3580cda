"""uvicorn's HTTP connections held to the gateway's limits (docs/operations.md, HTTP limits).

uvicorn streams a body to the application as it arrives, so the ASGI layer enforces body sizes
and body timeouts itself (calls/webhooks.py, calls/http_limits.BodyGuard). What only the
connection can do is here: a connection past `serve.maxConnectionsPerIp` is closed as soon as it
is made; a request head must be whole within the head timeout of the connection's opening or of
its previous answer (uvicorn's own keep-alive timer is cancelled by any byte, and a new connection
has none), else the connection is closed (408 if a request had begun); a head over
`MAX_HEAD_BYTES` gets 400 (httptools has no cap of its own).
"""
from __future__ import annotations

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import http_limits
from .metrics import recorders as metrics

log = logging.getLogger(__name__)

connections = http_limits.PerIpCount()  # open HTTP connections per client address


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parse error, which uvicorn answers 400."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the gateway's head deadline, head cap and per-address connection cap."""

    _host: str | None = None
    _deadline = None
    _head_bytes = 0
    _begun = False  # a request line has started and its head is not complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        if host is not None and not connections.take(host, http_limits.max_connections_per_ip()):
            http_limits.note_connection_refused(log, host)
            metrics.refused("connections_per_ip")
            transport.abort()
            return
        self._host = host
        self._arm()

    def _release(self) -> None:
        if self._host is not None:
            connections.give_back(self._host)
            self._host = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(http_limits.head_timeout(), self._head_expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._begun:
            log.info("HTTP 408 to %s: request head not complete in time", self._host)
            metrics.refused("head_timeout")
            self.transport.write(http_limits.refusal_bytes(408))
        self.transport.close()

    # Parser callbacks: the head's size, and where it begins and ends.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun, self._head_bytes = True, 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > http_limits.MAX_HEAD_BYTES:
            if self._head_bytes - size <= http_limits.MAX_HEAD_BYTES:  # counted as the cap is first passed
                metrics.refused("head_too_large")
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._disarm()
        self._begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm()  # waiting for the next request (keep-alive)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self._release()  # a stream from now on, counted by its own caps
        super().handle_websocket_upgrade()

    def connection_lost(self, exc) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)
