"""`voicecall tail`: follow call records in the database, or a log file byte by byte."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..clock import to_ms
from ..models import Call
from ..selectors import call_record, calls_last_update, calls_recently_updated, calls_updated_since
from .human import tail_line

Write = Callable[[str], None]
Stop = Callable[[], bool]


def json_line(call: Call) -> str:
    """The call's full record as one JSON line (what `status --json` prints for it)."""
    return json.dumps(call_record(call), ensure_ascii=False)


def human_line(call: Call) -> str:
    return tail_line(call_record(call), to_ms(call.updated_at), int(time.time() * 1000))


def follow_calls(write: Write, *, last: int | None, poll_ms: int, stop: Stop,
                 changed_since: datetime | None = None, render: Callable[[Call], str] = json_line) -> None:
    """Print the calls changed since `changed_since` (the last `last` of them), then each call whenever it changes.

    Without `changed_since`: the last `last` changed calls. Each call is printed with `render`.
    """
    if changed_since is not None:
        backlog = calls_updated_since(mark=changed_since)
        backlog = backlog[len(backlog) - last:] if last is not None and last < len(backlog) else backlog
    else:
        backlog = calls_recently_updated(limit=last or 0)
    for call in backlog:
        write(render(call))
    # Start from the newest record even when none was printed (--last 0): only changes follow.
    mark, seen = calls_last_update()
    while not stop():
        time.sleep(poll_ms / 1000)
        for call in calls_updated_since(mark=mark):
            if (call.pk, call.updated_at) in seen:
                continue
            seen.add((call.pk, call.updated_at))
            mark = call.updated_at
            write(render(call))
        if mark is not None:
            seen = {entry for entry in seen if entry[1] >= mark}


def human_file_line(line: str) -> str:
    """A calls.jsonl line as `tail` shows a record; a line that is not a call record as it is."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if isinstance(record, dict) and isinstance(record.get("call"), dict):
        record = record["call"]
    if not (isinstance(record, dict) and isinstance(record.get("callId"), str)):
        return line
    return tail_line(record, None, None)  # a line read back is as of when it was written: no counting to now


def follow_file(path: Path, write: Write, *, last: int, poll_ms: int, stop: Stop,
                render: Callable[[str], str] = lambda line: line) -> None:
    """Print the last `last` lines, then complete new lines as they are appended (each through `render`).

    Partial lines wait for their newline (so a UTF-8 character split across writes is never
    cut), and a file that shrinks or is replaced (rotation) is read again from the start.
    """
    with path.open("rb") as handle:
        data = handle.read()
        inode = os.fstat(handle.fileno()).st_ino
    complete, _, partial = data.rpartition(b"\n")
    lines = [line for line in complete.split(b"\n") if line.strip()] if complete else []
    for line in lines[len(lines) - last:] if last else []:
        write(render(line.decode("utf-8", errors="replace")))
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
                write(render(line.decode("utf-8", errors="replace")))
