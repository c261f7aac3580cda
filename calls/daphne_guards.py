"""Daphne's HTTP connections held to the gateway's limits in Twisted, before a body is buffered (docs/operations.md, HTTP limits).

Daphne (twisted.web) reads a request's whole body before the ASGI application sees the request,
so the application's own guards come too late under it. Here the channel decides as the request
arrives: a connection past `serve.maxConnectionsPerIp` is closed as soon as it is accepted; a
request head must be whole within the head timeout of the connection's opening (or of its previous
answer), else the connection is closed (408 if a request had begun); at the end of the head, a
webhook POST without the carrier's signature headers gets 401, one over `serve.maxInFlightPerIp`
gets 429, and a declared body over the path's cap 413; a body must then arrive within its timeout
(408) and stay under the cap as it comes (413, also for chunked bodies). Each refusal answers at
once, stops reading and closes the write side; the socket goes `LINGER_SECONDS` later.
"""
from __future__ import annotations

import logging
from urllib.parse import unquote

from twisted.web import http


from . import http_limits
from .metrics import recorders as metrics

log = logging.getLogger(__name__)

connections = http_limits.PerIpCount()  # open HTTP connections per client address
# The refusal reason (calls/metrics/recorders.py) of each answer the checks at the end of a head give.
HEAD_REFUSALS = {401: "webhook_signature", 429: "webhook_in_flight", 413: "body_too_large"}
webhooks_in_flight = http_limits.PerIpCount()  # webhook requests from the end of their head to their answer


def install() -> None:
    """Serve Daphne's HTTP with the guarded channel and request (once; `manage.py gateway` and the tests' live gateway)."""
    import daphne.server

    if getattr(daphne.server, "_guards_installed", False):
        return
    daphne.server.HTTPFactory = _guarded_factory_class()
    daphne.server._guards_installed = True


class GuardedChannel(http.HTTPChannel):
    """One HTTP/1.1 connection with the gateway's deadlines and caps (see the module's docstring)."""

    host: str | None = None  # set by the factory once counted in `connections`
    _deadline = None  # the pending head or body deadline
    _linger = None
    _refused = False
    _body_cap = 0
    _body_seen = 0
    _webhook_host: str | None = None

    # --- the connection's count per address -------------------------------------------------------

    def release(self) -> None:
        """Uncount this connection (closed, or handed over to a WebSocket, which has caps of its own)."""
        if self.host is not None:
            connections.give_back(self.host)
            self.host = None

    def release_webhook(self) -> None:
        if self._webhook_host is not None:
            webhooks_in_flight.give_back(self._webhook_host)
            self._webhook_host = None

    # --- deadlines --------------------------------------------------------------------------------

    def _arm(self, seconds: float, expired) -> None:
        self._disarm()
        self._deadline = self.callLater(seconds, expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def connectionMade(self):
        super().connectionMade()
        self._arm(http_limits.head_timeout(), self._head_expired)

    def _head_expired(self) -> None:
        self._deadline = None
        if self.requests:  # a request line came: tell the client why
            self._refuse(408, "request head not complete in time", "head_timeout")
        else:
            self.transport.loseConnection()  # idle: nothing to answer

    def _body_expired(self) -> None:
        self._deadline = None
        self._refuse(408, "request body not complete in time", "body_timeout")

    def requestDone(self, request):
        # Before the base class replays pipelined bytes (which may hold a whole next head).
        if self.persistent:
            self._arm(http_limits.head_timeout(), self._head_expired)
        super().requestDone(request)

    # --- the checks at the end of the head, and on the body as it comes ----------------------------

    def allHeadersReceived(self):
        self._disarm()
        request = self.requests[-1]
        path = unquote(self._path.split(b"?", 1)[0].decode("latin-1"))
        status = self._check_head(request, path)
        if status:
            self._refuse(status, "refused at the end of the request head", HEAD_REFUSALS[status])
            return
        super().allHeadersReceived()
        if self.length != 0:  # a body follows (None: chunked)
            limits = http_limits.body_limits(path)
            self._body_cap, self._body_seen = limits.max_bytes, 0
            self._arm(limits.timeout, self._body_expired)

    def _check_head(self, request, path: str) -> int | None:
        limits = http_limits.body_limits(path)
        if http_limits.is_webhook_path(path) and self._command == b"POST":
            status = self._check_webhook(request)
            if status:
                return status
        if self.length is not None and self.length > limits.max_bytes:
            return 413
        return None

    def _check_webhook(self, request) -> int | None:
        from .runtime import webhook_gate

        gate = webhook_gate()
        if gate is None:
            return None  # the application answers 503 with the reason
        config, carrier = gate
        headers = {name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        if not config.skip_signature_verification and not carrier.has_signature_headers(headers):
            return 401
        host = getattr(self.transport.getPeer(), "host", None) or "unknown"
        if not webhooks_in_flight.take(host, config.serve.max_in_flight_per_ip):
            return 429
        self._webhook_host = host
        return None

    def content_arrived(self, size: int) -> bool:
        """Count `size` more body bytes; False (and 413) once the body passes its cap."""
        if self._refused:
            return False
        self._body_seen += size
        if self._body_seen > self._body_cap:
            self._refuse(413, "request body over its cap", "body_too_large")
            return False
        return True

    def allContentReceived(self):
        if self._refused:
            return
        self._disarm()
        super().allContentReceived()

    # --- a refused connection ---------------------------------------------------------------------

    def _refuse(self, status: int, why: str, reason: str) -> None:
        """Answer `status` now, stop reading requests, and close (see the module's docstring); counted under `reason`."""
        metrics.refused(reason)
        self._refused = True
        self._disarm()
        self.release_webhook()
        peer = self.transport.getPeer()
        log.info("HTTP %s to %s: %s", status, getattr(peer, "host", peer), why)
        self.transport.write(http_limits.refusal_bytes(status))
        self.transport.loseWriteConnection()
        self.transport.pauseProducing()  # read no more of it: the client is held back by its own buffers
        self._linger = self.callLater(http_limits.LINGER_SECONDS, self.transport.abortConnection)

    def dataReceived(self, data):
        if not self._refused:
            super().dataReceived(data)

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def connectionLost(self, reason):
        self._disarm()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.release()
        self.release_webhook()
        super().connectionLost(reason)


def _guarded_factory_class():
    from daphne.http_protocol import HTTPFactory, WebRequest

    class GuardedRequest(WebRequest):
        """Daphne's request, whose body bytes are counted against the cap as they come."""

        def handleContentChunk(self, data):
            if self.channel is not None and self.channel.content_arrived(len(data)):
                super().handleContentChunk(data)

        def process(self):
            upgrade = self.requestHeaders.getRawHeaders(b"Upgrade") or [b""]
            if upgrade[0].lower() == b"websocket":
                self.channel.release()  # a stream from now on, counted by its own caps
            return super().process()

        def finish(self):
            if self.channel is not None:
                self.channel.release_webhook()
            super().finish()

    class GuardedFactory(HTTPFactory):
        """Daphne's HTTP factory with the guarded channel, refusing a client address's connections past its cap."""

        def protocol(self):
            return http._GenericHTTPChannelProtocol(GuardedChannel())

        def buildProtocol(self, addr):
            host = getattr(addr, "host", None)
            if host is not None and not connections.take(host, http_limits.max_connections_per_ip()):
                http_limits.note_connection_refused(log, host)
                metrics.refused("connections_per_ip")
                return None  # Twisted closes the accepted socket at once
            try:
                protocol = super().buildProtocol(addr)
            except Exception:
                connections.give_back(host)
                raise
            protocol.requestFactory = GuardedRequest
            protocol._channel.host = host
            return protocol

    return GuardedFactory
