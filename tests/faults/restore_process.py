"""Real gateway processes for the restore and crash fault tests: a private database (SQLite file or PostgreSQL), start, kill -9, restart.

The gateway runs as `manage.py gateway` in its own process, in the embedded mode (its own job
threads and sweeper), on a fixed port so a restarted process is reached at the same webhook URL.
PostgreSQL: a private database created for the test and dropped afterwards (the fault suite's
`private_postgres`); the tests that need it skip when no server answers.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from calls.free_ports import free_port
from tests.faults.gateway import private_postgres
from tests.paths import ROOT
from tests.waiting import wait_until

__all__ = ["Database", "GatewayProcess", "free_port"]

# What the test process's own settings put in the environment (inline jobs, no sweeper...): a real
# gateway runs with its defaults instead.
TEST_ONLY_ENV = ("DATABASE_URL", "REDIS_URL", "VOICECALL_BACKGROUND", "VOICECALL_EMBEDDED_SCHEDULER",
                 "VOICECALL_AUTOSTART_SERVICES", "VOICECALL_CONFIG", "VOICECALL_GATEWAY_URL", "VOICECALL_DATA_DIR",
                 "DJANGO_SETTINGS_MODULE")


class Database:
    """The gateway's database for one test: its DATABASE_URL (None: SQLite in the data folder) and SQL reads.

    PostgreSQL: a private database of the test's own (tests/faults/gateway.py, private_postgres).
    """

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.url: str | None = None
        self._private: ExitStack | None = None

    def __enter__(self) -> Database:
        if self.kind == "postgresql":
            self._private = ExitStack()
            self.url = self._private.enter_context(private_postgres())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._private is not None:
            self._private.close()

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the gateway's tables (`%s` placeholders on both databases)."""
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(self.url, connect_timeout=3) as conn:
                return conn.execute(sql, params).fetchall()
        with sqlite3.connect(self.data_dir / "voicecall.sqlite3", timeout=10) as conn:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()


class GatewayProcess:
    """`manage.py gateway` with `config` on `database`; start, kill -9 and start again on the same port."""

    def __init__(self, data_dir: Path, database: Database, config: dict[str, Any], *, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.database = database
        self.port = port or free_port()
        self.config = {"serve": {"port": self.port}, **config}
        self.process: subprocess.Popen | None = None
        self.runs = 0
        (data_dir / "voicecall.json").write_text(json.dumps(self.config))
        self.env = {name: value for name, value in os.environ.items() if name not in TEST_ONLY_ENV}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_DATA_DIR": str(data_dir),
            "VOICECALL_CONFIG": str(data_dir / "voicecall.json"), "PYTHONUNBUFFERED": "1", **(env or {}),
        })
        if database.url:
            self.env["DATABASE_URL"] = database.url

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"gateway-{self.runs}.log"

    def manage(self, *args: str) -> str:
        """A management command against the same database (migrate, seeding with shell -c)."""
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:
            raise AssertionError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def migrate(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")

    def start(self, *, timeout: float = 30.0) -> float:
        """Start the process and wait for /healthz; returns the seconds from launch to the first 200."""
        self.runs += 1
        log = open(self.log_path, "w")
        launched = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "manage.py", "gateway"], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, f"the gateway to answer /healthz (log: {self.log_path})", timeout=timeout,
                   interval=0.05)
        return time.monotonic() - launched

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError("the gateway exited:\n" + self.log())
        try:
            return httpx.get(f"{self.base}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def readyz(self) -> dict[str, Any]:
        return httpx.get(f"{self.base}/readyz", timeout=2).json()

    def restore_state(self) -> str:
        return self.readyz()["restore"]["state"]

    def kill(self) -> None:
        """kill -9: no shutdown code runs, in-memory jobs are lost."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.data_dir.glob("gateway-*.log")))
