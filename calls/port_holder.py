"""Which local process holds a TCP port (Linux /proc), to name it when the gateway cannot bind."""
from __future__ import annotations

import os
from pathlib import Path

PROGRAM_WORDS = 3  # e.g. ".venv/bin/python manage.py gateway"
LISTEN = "0A"  # the state column of /proc/net/tcp for a listening socket


def socket_inodes(port: int, *, listening: bool) -> set[str]:
    """The `socket:[inode]` names of the TCP sockets whose local port is `port` (only listening ones if asked)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "ADDR:PORT" in hex; inode 0 is a socket no process holds any more
            if (len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0"
                    and (fields[3] == LISTEN or not listening)):
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def pid_holding(inodes: set[str]) -> int | None:
    """The first process with one of these sockets open, when this user may see it."""
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


def listener_of(port: int) -> str | None:
    """"pid N (command)" of the local process listening on TCP `port`, when this user may see it (Linux)."""
    pid = pid_holding(socket_inodes(port, listening=True))
    if pid is None:
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    # The program and what it runs, not its arguments: those may carry a token or a password.
    command = " ".join(arg for arg in argv[:PROGRAM_WORDS] if arg)[:80]
    return f"pid {pid} ({command})" if command else f"pid {pid}"
