"""A real gateway process for fault tests: started on a free loopback port against a given database, killed with SIGKILL, restarted.

The database is a migrated SQLite file in the test's directory, or a private PostgreSQL database
on 127.0.0.1:5432 (user postgres) created for the test and dropped after it (`private_postgres`,
which skips the test when no such server answers). The test reads the gateway's rows with `rows`.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from bench.gateway_process import wait_serving
from calls.free_ports import free_port
from tests.paths import ROOT

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_PREFIX = "voicecall_fault_"


class GatewayProcess:
    """`manage.py gateway` with `config` (its serve.port and publicUrl are filled in) on `database_url`, or SQLite in `data_dir`."""

    def __init__(self, data_dir: Path, config: dict, *, database_url: str | None = None, server: str = "daphne",
                 env: dict[str, str] | None = None) -> None:
        self.dir = Path(data_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url or f"sqlite:///{self.dir / 'gateway.sqlite3'}"
        self.server = server
        self.config = {"publicUrl": self.base, **config, "serve": {**config.get("serve", {}), "port": self.port}}
        (self.dir / "voicecall.json").write_text(json.dumps(self.config))
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("REDIS_URL", "VOICECALL_BACKGROUND", "VOICECALL_EMBEDDED_SCHEDULER",
                                   "VOICECALL_AUTOSTART_SERVICES", "VOICECALL_MODE")}
        self.env.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(self.dir),
                        VOICECALL_CONFIG=str(self.dir / "voicecall.json"), DATABASE_URL=self.database_url,
                        PYTHONUNBUFFERED="1", VOICECALL_LOG_LEVEL="INFO", **(env or {}))
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._migrated = False

    @property
    def log_path(self) -> Path:
        return self.dir / "gateway.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90.0) -> "GatewayProcess":
        """Start the process (migrating the database the first time) and return once /healthz answers 200."""
        if not self._migrated:
            if self.database_url == f"sqlite:///{self.dir / 'gateway.sqlite3'}":
                shutil.copyfile(migrated_sqlite(), self.dir / "gateway.sqlite3")
            else:
                migrate(self.env)
            self._migrated = True
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"\n--- start {self.starts} ---\n")
            log.flush()
            self.process = subprocess.Popen([sys.executable, "manage.py", "gateway", "--server", self.server],
                                            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(self.process, self.port, timeout=timeout, log=str(self.log_path), healthz=True)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{self.log()[-4000:]}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the OOM killer takes the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> "GatewayProcess":
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def post(self, body: dict | bytes, *, timeout: float = 5.0, path: str = "/voice/webhook") -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.base + path, content=content, timeout=timeout,
                          headers={"Content-Type": "application/json"})

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read query on the gateway's database (`%s` placeholders on both engines)."""
        if self.database_url.startswith("sqlite:///"):
            path = self.database_url.removeprefix("sqlite:///")
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20)) as db:
                return db.execute(sql.replace("%s", "?"), params).fetchall()
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as db:
            return db.execute(sql, params).fetchall()

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def migrate(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True,
                   timeout=120)


def migrated_sqlite() -> Path:
    """A migrated, empty SQLite database to copy: made once per set of migrations (a migrate costs seconds on a busy machine)."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("*/migrations/*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    cache = Path(tempfile.gettempdir()) / "voicecall-fault-db"
    cache.mkdir(exist_ok=True)
    template = cache / f"{digest.hexdigest()[:16]}.sqlite3"
    if not template.exists():
        work = Path(tempfile.mkdtemp(dir=cache))
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_DATA_DIR": str(work),
               "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}", "VOICECALL_CONFIG": ""}
        env.pop("REDIS_URL", None)
        migrate(env)
        with closing(sqlite3.connect(work / "db.sqlite3")) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the one file that is copied
        os.replace(work / "db.sqlite3", template)  # atomic: a concurrent worker copies a whole file or makes its own
        shutil.rmtree(work, ignore_errors=True)
    return template


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)


def postgres_available() -> bool:
    try:
        with _pg_admin():
            return True
    except Exception:
        return False


@contextmanager
def private_postgres():
    """A new, empty PostgreSQL database of this test's own; yields its URL and drops it after. Skips without a server."""
    try:
        admin = _pg_admin()
    except Exception as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 as user postgres ({type(exc).__name__})")
    name = PG_PREFIX + secrets.token_hex(6)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_backends(database_url: str) -> int:
    """Cut every connection to the private test database `database_url` names (pg_terminate_backend); how many were cut.

    Only a database this module created: no other database's sessions are touched.
    """
    name = database_url.rsplit("/", 1)[1]
    if not name.startswith(PG_PREFIX):
        raise ValueError(f"not a private fault-test database: {name}")
    with _pg_admin() as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                             "AND pid <> pg_backend_pid()", (name,)).fetchall()
    return sum(1 for (cut,) in rows if cut)
