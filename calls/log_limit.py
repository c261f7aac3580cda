"""Rate-limited warnings: one line per failing thing per window, with a count of the repeats it stood for."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Hashable

# Keys are few in practice (one per kind of failure); the cap bounds memory if a caller builds them
# from unbounded values. The least recently seen key goes first.
MAX_KEYS = 1024


@dataclass
class _Window:
    logged_at: float  # monotonic time of the last line written for the key
    logged_wall: float  # the same moment on the wall clock, for the "since" of the next line
    repeats: int = 0  # occurrences counted, not written, since then


_lock = threading.Lock()
_windows: OrderedDict[Hashable, _Window] = OrderedDict()


def warn_limited(logger: logging.Logger, key: Hashable, msg: str, *args: object, every: float = 60.0,
                 level: int = logging.WARNING) -> bool:
    """Log `msg % args` unless `key` was logged less than `every` seconds ago; True when written.

    Repeats within the window are counted; the next line after it ends says
    "(N more like this since <time of the previous line>)".
    """
    moment, wall = time.monotonic(), time.time()
    with _lock:
        window = _windows.get(key)
        if window is not None:
            _windows.move_to_end(key)
            if moment - window.logged_at < every:
                window.repeats += 1
                return False
        repeats, since = (window.repeats, window.logged_wall) if window is not None else (0, wall)
        _windows[key] = _Window(logged_at=moment, logged_wall=wall)
        while len(_windows) > MAX_KEYS:
            _windows.popitem(last=False)
    if repeats:
        if not args:  # the message was not a format string: its % signs are literal
            msg = msg.replace("%", "%%")
        msg += " (%d more like this since %s)"
        args = (*args, repeats, datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    logger.log(level, msg, *args, stacklevel=2)
    return True


def reset() -> None:
    """Forget every key (tests)."""
    with _lock:
        _windows.clear()
