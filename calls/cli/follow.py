"""`voicecall tail`: follow call records in the database, or a log file byte by byte."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..models import Call
from ..selectors import call_record, calls_last_update, calls_recently_updated, calls_updated_since

Write = Callable[[str], None]
Stop = Callable[[], bool]


def follow_calls(write: Write, *, since: int, poll_ms: int, stop: Stop) -> None:
    """Print the last `since` call records, then each record again whenever it changes."""
    for call in calls_recently_updated(limit=since):
        write(_line(call))
    # Start from the newest record even when none was printed (--since 0): only changes follow.
    mark, seen = calls_last_update()
    while not stop():
        time.sleep(poll_ms / 1000)
        for call in calls_updated_since(mark=mark):
            if (call.pk, call.updated_at) in seen:
                continue
            seen.add((call.pk, call.updated_at))
            mark = call.updated_at
            write(_line(call))
        if mark is not None:
            seen = {entry for entry in seen if entry[1] >= mark}


def _line(call: Call) -> str:
    return json.dumps(call_record(call), ensure_ascii=False)


def follow_file(path: Path, write: Write, *, since: int, poll_ms: int, stop: Stop) -> None:
    """Print the last `since` lines, then complete new lines as they are appended.

    Partial lines wait for their newline (so a UTF-8 character split across writes is never
    cut), and a file that shrinks or is replaced (rotation) is read again from the start.
    """
    with path.open("rb") as handle:
        data = handle.read()
        inode = os.fstat(handle.fileno()).st_ino
    complete, _, partial = data.rpartition(b"\n")
    lines = [line for line in complete.split(b"\n") if line.strip()] if complete else []
    for line in lines[len(lines) - since:] if since else []:
        write(line.decode("utf-8", errors="replace"))
    offset = len(data) - len(partial)
    pending = b""
    while not stop():
        time.sleep(poll_ms / 1000)
        try:
            stat = path.stat()
        except FileNotFoundError:
            inode, offset, pending = None, 0, b""  # whatever appears next is a new file
            continue
        if stat.st_ino != inode or stat.st_size < offset:
            inode, offset, pending = stat.st_ino, 0, b""
        if stat.st_size == offset:
            continue
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read(stat.st_size - offset)
        offset += len(chunk)
        pending += chunk
        *ready, pending = pending.split(b"\n")
        for line in ready:
            if line.strip():
                write(line.decode("utf-8", errors="replace"))
