"""Free loopback ports for servers started a moment later: below the kernel's ephemeral range, and claimed so no other process here is handed the same one meanwhile.

Asking the kernel for port 0 and closing the socket is not enough when several processes pick ports at
once (a cluster's gateways, a private redis-server, parallel test workers): the port stays free until
its server binds it, seconds later, and any other picker may be handed it in that time. So every pick
takes a claim, a file created exclusively in a folder every process on the machine shares, which other
pickers skip for CLAIM_TTL_S. Ports come from below the ephemeral range because one from inside it may
meanwhile become the local end of some process's outgoing connection.
"""
from __future__ import annotations

import os
import random
import secrets
import socket
import tempfile
import time
from pathlib import Path

FIRST_PORT = 10_000
CLAIM_TTL_S = 900.0  # a claimed port is bound long before this; afterwards its claim may be taken again
ATTEMPTS = 2_000


def free_port(host: str = "127.0.0.1", *, count: int = 1) -> int:
    """A port on `host` that nothing listens on and no other picker holds, with the `count - 1` after it as well."""
    if count < 1:
        raise ValueError(f"count: at least one port, got {count}")
    last_first = ephemeral_low() - count
    if last_first <= FIRST_PORT:
        raise OSError(f"no room for {count} ports between {FIRST_PORT} and the ephemeral range")
    claims = claims_dir()
    for _ in range(ATTEMPTS):
        first = random.randrange(FIRST_PORT, last_first)
        ports = range(first, first + count)
        taken: list[int] = []
        for port in ports:
            if not claim(claims, port):
                break
            taken.append(port)
        if len(taken) == count and all(bindable(host, port) for port in ports):
            return first
        # Claims on ports that turned out unusable stay: a port in use now is likely in use a moment later.
    raise OSError(f"no {count} free port(s) on {host} after {ATTEMPTS} tries")


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def claims_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"voicecall-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def claim(claims: Path, port: int) -> bool:
    """Take the claim on `port`: True if this process now holds it (a fresh claim, or one taken over when stale)."""
    path = claims / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            pass
        try:
            if time.time() - path.stat().st_mtime < CLAIM_TTL_S:
                return False
            # A stale claim: only one of the pickers that see it stale wins the rename, then creates afresh
            # (two pickers on one stale port within the same microseconds could both win; ports are random).
            aside = path.with_name(f"{port}.stale-{secrets.token_hex(4)}")
            os.rename(path, aside)
            aside.unlink()
        except FileNotFoundError:
            continue  # released or taken over by another picker just now: try to create it again
    return False


def bindable(host: str, port: int) -> bool:
    """A bind succeeds now, without SO_REUSEADDR (so a port with connections lingering in TIME_WAIT is passed over)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
