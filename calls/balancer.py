"""A small TCP load balancer for a local cluster: round robin per connection over gateway processes, skipping dead ones.

    python -m calls.balancer --listen 127.0.0.1:3334 --backend 127.0.0.1:3335 --backend 127.0.0.1:3336

Each accepted connection is joined to the next backend that accepts a TCP connection; a backend
that refuses (its process is gone) is skipped, and tried again only after a short pause, so a dead
node costs the clients nothing. Bytes pass through untouched in both directions, so HTTP keep-alive,
WebSocket upgrades and media streams work as they would directly; no stickiness is needed, since a
command for a call reaches the stream's process over the channel layer. When no backend accepts,
the client gets a 502 answer naming the balancer.

Imports nothing from Django: it starts in a fraction of a second and holds no database connection.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("calls.balancer")

CONNECT_TIMEOUT_S = 3.0
# A backend that refused is left out of the rotation this long (unless every backend is out).
RETRY_AFTER_S = 1.0
# Above this many bytes queued towards one side, stop reading from the other until it drains.
HIGH_WATER = 256 * 1024
NO_BACKEND = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
              b"Content-Length: 42\r\n\r\nvoice-call balancer: no backend answered.\n")


@dataclass
class Backend:
    host: str
    port: int
    down_until: float = 0.0
    connections: int = 0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """ "HOST:PORT" or "[IPv6]:PORT" → (host, port); a clear error naming `flag` otherwise."""
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{flag}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{flag}: write an IPv6 address in brackets, as [::1]:PORT, got {text!r}")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"{flag}: the port must be a number from 0 to 65535, got {text!r}")
    return host, int(port)


class _Pipe(asyncio.Protocol):
    """One side of a joined connection: what it receives is written to its peer, with back-pressure both ways."""

    def __init__(self, on_connected=None) -> None:
        self.on_connected = on_connected  # called once the transport exists (the client side starts routing)
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []  # received before the peer was joined
        self.eof = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.on_connected is not None:
            self.on_connected(self)

    def join(self, peer: "_Pipe") -> None:
        self.peer = peer
        for chunk in self.pending:
            peer.transport.write(chunk)
        self.pending.clear()
        if self.eof:
            self._pass_eof()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
            if sum(map(len, self.pending)) > HIGH_WATER:
                self.transport.pause_reading()
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None:
            self._pass_eof()
        return True  # stay half-open: the other direction may still carry the answer

    def _pass_eof(self) -> None:
        peer = self.peer.transport
        if peer.is_closing():
            return
        if peer.can_write_eof() and not (self.peer.eof):
            peer.write_eof()
        else:
            peer.close()  # both directions finished
            self.transport.close()

    # Our transport's buffer towards this side is full: stop reading from the peer until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Balancer:
    """Round robin over `backends` per accepted connection; `serve()` until `close()`."""

    backends: list[Backend]
    connect_timeout: float = CONNECT_TIMEOUT_S
    retry_after: float = RETRY_AFTER_S
    _turn: itertools.count = field(default_factory=itertools.count)
    _server: asyncio.AbstractServer | None = None
    _routes: set = field(default_factory=set)  # running connections' tasks (a task nobody holds may be collected)

    def order(self) -> list[Backend]:
        """This connection's candidates: the next backend in turn first; ones that just refused last."""
        start = next(self._turn) % len(self.backends)
        rotation = self.backends[start:] + self.backends[:start]
        now = time.monotonic()
        return [b for b in rotation if b.down_until <= now] + [b for b in rotation if b.down_until > now]

    async def open_backend(self, client: _Pipe) -> tuple[_Pipe, Backend] | None:
        loop = asyncio.get_running_loop()
        for backend in self.order():
            try:
                _, side = await asyncio.wait_for(
                    loop.create_connection(_Pipe, backend.host, backend.port), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                if backend.down_until <= time.monotonic():
                    log.warning("backend %s does not answer (%s): skipped", backend, type(exc).__name__)
                backend.down_until = time.monotonic() + self.retry_after
                if client.transport.is_closing():
                    return None
                continue
            if backend.down_until:
                log.warning("backend %s answers again", backend)
                backend.down_until = 0.0
            return side, backend
        return None

    def accept(self) -> _Pipe:
        return _Pipe(on_connected=lambda client: self._routes.add(asyncio.get_running_loop().create_task(self._route(client))))

    async def _route(self, client: _Pipe) -> None:
        try:
            await self._join(client)
        finally:
            self._routes.discard(asyncio.current_task())

    async def _join(self, client: _Pipe) -> None:
        opened = await self.open_backend(client)
        if opened is None:
            if not client.transport.is_closing():
                log.error("no backend answered; the client gets 502")
                client.transport.write(NO_BACKEND)
                client.transport.close()
            return
        side, backend = opened
        if client.transport.is_closing():  # the client left while we connected
            side.transport.close()
            return
        backend.connections += 1
        try:
            side.join(client)
            client.join(side)
            client.transport.resume_reading()
            await asyncio.gather(client.closed, side.closed)
        finally:
            backend.connections -= 1

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        self._server = await asyncio.get_running_loop().create_server(self.accept, host, port, reuse_address=True,
                                                                       backlog=1024)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m calls.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="Where clients connect (port 0: any free port)")
    parser.add_argument("--backend", action="append", required=True, metavar="HOST:PORT",
                        help="A gateway process; give one --backend per process")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.listen, "--listen")
        backends = [Backend(*parse_address(text, "--backend")) for text in args.backend]
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    run(_serve(Balancer(backends), host, port))


async def _serve(balancer: Balancer, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        bound = await balancer.start(host, port)
    except OSError as exc:
        sys.exit(f"voice-call balancer: cannot listen on {host}:{port}: {exc.strerror or exc}")
    shown = f"[{host}]" if ":" in host else host
    # One line on stdout once listening: whoever started us learns the port (with --listen HOST:0).
    print(f"listening on {shown}:{bound} -> {', '.join(map(str, balancer.backends))}", flush=True)
    await stop.wait()
    await balancer.close()


if __name__ == "__main__":
    main()
