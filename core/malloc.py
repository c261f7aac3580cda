"""glibc malloc tuned for a long-running threaded server, so freed memory goes back instead of piling up per call.

Left alone, glibc gives each thread that contends for the allocator an arena of its own (up to
8 per core) and keeps what is freed there; and after a large buffer (a sentence of synthesized
audio) is freed it raises the mmap threshold, so later large buffers come from the heap and
fragment it. A gateway's many pool threads then grow its RSS call after call (bench/memory.py).
Two arenas and a fixed mmap threshold keep it flat. The environment's MALLOC_ARENA_MAX /
MALLOC_MMAP_THRESHOLD_ win if set; elsewhere than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, now fixed


def tune() -> bool:
    """Apply the settings above; True if glibc accepted them. Call early, before pools start threads."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    ok = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok &= mallopt(M_ARENA_MAX, ARENAS) == 1
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok &= mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not ok:
        log.info("malloc settings not applied")
    return bool(ok)
