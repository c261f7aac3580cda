"""Heap snapshots on demand for hunting leaks: with VOICECALL_TRACEMALLOC=<dir>, SIGUSR1 writes one there."""
from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

FRAMES = 12  # enough to see which call path allocated, cheap enough to serve calls while tracing


def install() -> bool:
    """Start tracing if VOICECALL_TRACEMALLOC names a directory; returns whether it did."""
    target = os.environ.get("VOICECALL_TRACEMALLOC")
    if not target:
        return False
    tracemalloc.start(FRAMES)
    # The handler runs on the main thread (the event loop's): the snapshot is taken on another.
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=dump, args=(Path(target),), daemon=True).start())
    return True


def dump(directory: Path) -> Path:
    """Write `<time>.snapshot` (tracemalloc) and `<time>.types.json` (live objects by type) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    gc.collect()
    stem = directory / f"{time.time_ns()}"
    counts = Counter(f"{type(obj).__module__}.{type(obj).__qualname__}" for obj in gc.get_objects())
    Path(f"{stem}.types.json").write_text(json.dumps(counts))
    partial = Path(f"{stem}.partial")
    tracemalloc.take_snapshot().dump(str(partial))
    final = Path(f"{stem}.snapshot")
    partial.rename(final)  # readers only ever see a whole snapshot
    return final
