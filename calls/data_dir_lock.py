"""One gateway per data directory with an embedded (SQLite) database: DATA_DIR/gateway.lock, naming its holder.

The lock is an flock on the open file: the OS drops it when the holding process ends, however it
ends, so a file left by a killed gateway never blocks the next one. Gateways on a server database
(PostgreSQL) share a data directory on purpose (`voicecall cluster`) and take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from django.conf import settings

LOCK_FILE = "gateway.lock"

_held: IO[str] | None = None  # open for the process's life: closing it would drop the lock


class DataDirTaken(Exception):
    """Another live gateway holds the data directory (the message names it and how to run a second one), or its
    lock file cannot be written."""


def needs_lock() -> bool:
    """Whether this gateway's database is an SQLite file, which one gateway alone may serve."""
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"


def hold(data_dir: Path, *, url: str, config_path: str | None) -> None:
    """Take the data directory's lock for this process and write who holds it; raises DataDirTaken."""
    global _held
    path = Path(data_dir) / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (kept open while the lock is held)
    except OSError as exc:
        raise DataDirTaken(f"Cannot open the lock file {path} in the data directory: {exc.strerror or exc}. The gateway "
                           "needs to write in its data directory: fix its permissions, or set VOICECALL_DATA_DIR to a "
                           "directory this user can write.") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = _parse(handle.read())
        handle.close()
        raise DataDirTaken(refusal(Path(data_dir), holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "url": url, "config": config_path or "",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }) + "\n")
    handle.flush()
    _held = handle


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    """ "pid 1234 on host, http://127.0.0.1:3334, config /x.json5, started 2026-12-05 10:30 UTC" from what is known."""
    parts = []
    if holder.get("pid"):
        parts.append(f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else ""))
    if holder.get("url"):
        parts.append(str(holder["url"]))
    if holder.get("config"):
        parts.append(f"config {holder['config']}")
    try:
        started = datetime.fromisoformat(str(holder.get("started")))
        parts.append(f"started {started.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
    except ValueError:
        pass
    return ", ".join(parts)


def refusal(data_dir: Path, holder: dict) -> str:
    who = describe(holder)
    return (f"Another gateway ({who or 'its details are not written yet'}) already uses the data directory {data_dir} "
            f"and its database. Stop it, or give this one its own data directory: "
            f"VOICECALL_DATA_DIR=/path/to/other python manage.py gateway (with its own --port).")
