"""A benchmark's gateway process: a free port to give it, and waiting until it serves there."""
from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(process: subprocess.Popen, port: int, *, timeout: float = 60.0, log: str = "",
                 healthz: bool = False) -> subprocess.Popen:
    """Return `process` once its port accepts connections (with `healthz`, once /healthz answers 200).

    A process that exits first, or does not serve within `timeout`, is an error naming `log`.
    """
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited while starting{where}")
        try:
            if healthz:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return process
            else:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return process
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the gateway did not start within {timeout:g} s{where}")
