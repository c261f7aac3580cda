"""A private `redis-server` on a free loopback port for tests with real processes: started, stopped, restarted on the same port.

Never the machine's own Redis service: a test that stops or restarts Redis, or runs Celery queues
shared by several processes, does it on a server of its own. Skips the test when `redis-server`
is not installed.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from calls.free_ports import free_port
from tests.waiting import wait_until


class PrivateRedis:
    """`redis-server --port <free port>` with no persistence, in its own folder; a context manager."""

    def __init__(self, directory: Path | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.dir = Path(directory or tempfile.mkdtemp(prefix="voicecall-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "PrivateRedis":
        """Start the server (on the same port as before, after a stop) and return once it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, f"redis-server on port {self.port} to answer", timeout=timeout, interval=0.05)
        return self

    def answers(self) -> bool:
        import redis

        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL, as a crash): every connection to it breaks at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and port but answers nothing (a stalled or unreachable host)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> "PrivateRedis":
        self.stop()
        return self.start()

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
