"""Raw-socket HTTP clients for tests of a server's own limits: heads and bodies sent byte for byte, answers read as they come."""
from __future__ import annotations

import os
import resource
import select
import socket
import time
from pathlib import Path

import pytest


def connect(port: int, *, timeout: float = 10.0, source: str | None = None) -> socket.socket:
    """A connection to 127.0.0.1:`port`, from the loopback address `source` if given."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket, *, timeout: float = 10.0) -> tuple[int, bytes, bool]:
    """(status, body, closed): one whole answer, and whether the server closed the connection after it.

    `closed` is read only when the answer asked for it (Connection: close), so a kept-alive
    connection is not waited on.
    """
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed without a whole answer: {data!r}")
        data += chunk
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(fields.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    closed = False
    if fields.get("connection", "").lower() == "close":
        closed = peer_closed(sock, timeout=timeout)
    return status, body[:length], closed


def peer_closed(sock: socket.socket, *, timeout: float = 10.0) -> bool:
    """Whether the server closes the connection (end of stream or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answered_yet(sock: socket.socket) -> bool:
    """Whether anything (an answer, or the close) is there to read now, without waiting."""
    return bool(select.select([sock], [], [], 0)[0])


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; skip the test if `needed` fds will not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed <= hard or (hard == resource.RLIM_INFINITY and soft < needed):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        pytest.skip(f"needs {needed} file descriptors; the hard limit is {hard}")


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid: int | str = "self") -> set[str]:
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def server_side_sockets(port: int, pid: int | str = "self", host: str = "127.0.0.1") -> int:
    """Accepted connections on `host`:`port` that process `pid` holds open (the listening socket excluded).

    The address counts as well as the port: a client socket of this process, bound to another
    loopback address, may be given the server's port number as its own.
    """
    held = socket_inodes(pid)
    local = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"  # /proc/net/tcp's form
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        listening = fields[3] == "0A"
        if fields[1] == local and not listening and fields[9] in held:
            count += 1
    return count
