"""Catches event-loop callbacks that block the loop: CPU-heavy work, or a long wait without yielding.

`LoopWatch.watch(loop)` times every callback (`asyncio.Handle._run`: task steps, timers, I/O
readiness) that `loop` runs, on the thread that runs it. A callback is reported when

- its thread CPU time exceeds `cpu_limit` (10 ms): real work on the loop (building a TLS context,
  a first import, a synchronous audio loop). Thread CPU time does not grow while the thread is
  preempted or waits for the GIL, so a busy machine does not make a callback look heavy. Time the
  same thread spends in the cyclic garbage collector is subtracted (from the CPU and the wall time
  alike), since a collection runs in whichever thread happens to allocate and is not the callback's
  work: a full collection late in a long test run can take a second by itself. So is the wall
  time spent starting a thread (`Thread.start` waits until the new thread has run its first
  lines): asgiref starts an executor thread for every request's first `sync_to_async`, and how
  long the handshake takes is how long the OS takes to schedule a new thread, which on a busy
  machine can be half a second;
- or its wall time exceeds `wall_limit` (500 ms) while it used less than half of that in CPU: a
  blocking sleep, socket or database call. A blocking call lets the other threads of the process
  run; when instead the whole process was starved (the machine too busy to run it, or a thread
  preempted while it held the GIL), the watch's own sampler thread was held up as well, and the
  time it lost is not counted against the callback. Nor is time the callback's own thread spent
  waiting for the GIL while other threads of the process ran (a test's browser driver, say): a
  thread waiting for the GIL wakes once every switch interval (5 ms) to ask for it, so its
  voluntary context switches times that interval bound the wait. A blocking call sleeps once.

Reports name the callback (`repr`, and for a task step the coroutine and where it is suspended
now), the stack it was busy in (a sampler thread looks at callbacks still running after the CPU
limit's worth of wall time) and, when the loop runs in debug mode, where it was scheduled.
"""
from __future__ import annotations

import asyncio
import gc
import resource
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

CPU_LIMIT = 0.010
WALL_LIMIT = 0.500

_original_run = asyncio.Handle._run
_watches: dict[asyncio.AbstractEventLoop, LoopWatch] = {}
_gc_seconds: dict[int, tuple[float, float]] = {}  # thread id -> (CPU, wall) seconds spent collecting, cumulative
_gc_started: dict[int, tuple[float, float]] = {}
_thread_start_seconds: dict[int, float] = {}  # thread id -> wall seconds spent in Thread.start, cumulative
_original_thread_start = threading.Thread.start
_running: dict[int, tuple[float, asyncio.Handle]] = {}  # thread id -> (wall start, callback) being timed
_busy_in: dict[int, tuple[asyncio.Handle, str]] = {}  # thread id -> (callback, stack sampled while it ran long)
_installed = threading.Lock()
_patched = False
SAMPLE_EVERY = 0.005
STARVED_GAP = 0.05
_sampler_wakes: deque[float] = deque(maxlen=4000)  # when the sampler thread last ran: 20 s of them


def starved_seconds(start: float, end: float) -> float:
    """How long, between two perf_counter readings, the sampler thread was kept from running.

    It wakes every SAMPLE_EVERY; what a gap exceeds STARVED_GAP by is time the process was not run
    (shorter gaps are the ordinary scheduling of a loaded machine, and a blocked callback may not hide
    behind them).
    """
    wakes = [t for t in list(_sampler_wakes) if t > start]
    starved, previous = 0.0, start
    for wake in wakes:
        starved += max(0.0, min(wake, end) - previous - STARVED_GAP)
        previous = wake
        if wake >= end:
            break
    else:
        starved += max(0.0, end - previous - STARVED_GAP)  # still held up when the callback ended
    return starved


@dataclass(frozen=True)
class SlowCallback:
    description: str
    cpu: float
    wall: float
    scheduled_at: str = ""
    busy_in: str = ""
    kind: str = "CPU-heavy"  # or "blocking"

    def __str__(self) -> str:
        text = f"{self.kind} callback on the event loop: {self.description} took {self.cpu * 1000:.1f} ms CPU, {self.wall * 1000:.1f} ms wall"
        if self.busy_in:
            text += f"\n  busy in:\n{self.busy_in}"
        return text + (f"\n  scheduled at:\n{self.scheduled_at}" if self.scheduled_at else "")


@dataclass
class LoopWatch:
    """Records the callbacks of the watched loops that exceed the limits (see the module docstring)."""

    cpu_limit: float = CPU_LIMIT
    wall_limit: float = WALL_LIMIT
    slow: list[SlowCallback] = field(default_factory=list)

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        _install()
        _watches[loop] = self

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if _watches.get(loop) is self:
            del _watches[loop]

    def take(self) -> list[SlowCallback]:
        """The slow callbacks recorded so far; the record starts empty again."""
        taken, self.slow = self.slow, []
        return taken

    def check(self) -> None:
        """Fail (AssertionError) naming every slow callback recorded since the last check."""
        slow = self.take()
        if slow:
            raise AssertionError(f"{len(slow)} callback(s) blocked the event loop:\n" + "\n".join(map(str, slow)))

    def _judge(self, handle: asyncio.Handle, cpu: float, wall: float, busy_in: str, started: float, sleeps: int) -> None:
        if cpu > self.cpu_limit:
            self.slow.append(SlowCallback(describe(handle), cpu, wall, _scheduled_at(handle), busy_in))
        elif wall > self.wall_limit and cpu < wall / 2:
            gil_wait = sleeps * sys.getswitchinterval()
            blocked = wall - max(starved_seconds(started, started + wall), gil_wait)
            if blocked > self.wall_limit:
                self.slow.append(SlowCallback(describe(handle), cpu, wall, _scheduled_at(handle), busy_in, "blocking"))


def _timed_run(handle: asyncio.Handle) -> None:
    watch = _watches.get(handle._loop)
    if watch is None:
        return _original_run(handle)
    thread = threading.get_ident()
    gc_cpu_before, gc_wall_before = _gc_seconds.get(thread, (0.0, 0.0))
    starting_before = _thread_start_seconds.get(thread, 0.0)
    sleeps = _voluntary_switches()
    cpu, wall = time.thread_time(), time.perf_counter()
    started = wall
    _running[thread] = (wall, handle)
    try:
        return _original_run(handle)
    finally:
        gc_cpu, gc_wall = _gc_seconds.get(thread, (0.0, 0.0))
        starting = _thread_start_seconds.get(thread, 0.0) - starting_before
        wall = time.perf_counter() - wall - (gc_wall - gc_wall_before) - starting
        cpu = time.thread_time() - cpu - (gc_cpu - gc_cpu_before)
        _running.pop(thread, None)
        sampled, busy_in = _busy_in.pop(thread, (None, ""))
        sleeps = _voluntary_switches() - sleeps if wall > watch.wall_limit else 0
        watch._judge(handle, cpu, wall, busy_in if sampled is handle else "", started, sleeps)


def _timed_thread_start(self: threading.Thread) -> None:
    thread, started = threading.get_ident(), time.perf_counter()
    try:
        _original_thread_start(self)
    finally:
        _thread_start_seconds[thread] = _thread_start_seconds.get(thread, 0.0) + time.perf_counter() - started


def _voluntary_switches() -> int:
    """How many times the calling thread has gone to sleep (a blocking call, or a wait for the GIL)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def _sample() -> None:
    """Keep, for each callback running longer than the CPU limit, the innermost stack seen last."""
    while True:
        time.sleep(SAMPLE_EVERY)
        now = time.perf_counter()
        _sampler_wakes.append(now)
        long_running = [(thread, handle) for thread, (since, handle) in list(_running.items()) if now - since > CPU_LIMIT]
        if not long_running:
            continue
        frames = sys._current_frames()
        for thread, handle in long_running:
            frame = frames.get(thread)
            if frame is not None:
                _busy_in[thread] = (handle, _stack(frame))


def _stack(frame) -> str:
    """The innermost frames from the callback down, without the import machinery's own."""
    lines = [line for line in traceback.format_stack(frame) if "<frozen importlib" not in line]
    for index, line in enumerate(lines):
        if "in _timed_run" in line:
            lines = lines[index + 2:]  # from the callback itself (past asyncio's Handle._run)
            break
    return "".join(lines[-20:])


def _gc_phase(phase: str, info: dict) -> None:
    thread = threading.get_ident()
    if phase == "start":
        _gc_started[thread] = (time.thread_time(), time.perf_counter())
    elif thread in _gc_started:
        cpu_start, wall_start = _gc_started.pop(thread)
        cpu, wall = _gc_seconds.get(thread, (0.0, 0.0))
        _gc_seconds[thread] = (cpu + time.thread_time() - cpu_start, wall + time.perf_counter() - wall_start)


def _install() -> None:
    global _patched
    with _installed:
        if not _patched:
            asyncio.Handle._run = _timed_run  # TimerHandle inherits it
            gc.callbacks.append(_gc_phase)
            threading.Thread.start = _timed_thread_start
            threading.Thread(target=_sample, name="loop-watch-sampler", daemon=True).start()
            _patched = True


def describe(handle: asyncio.Handle) -> str:
    """The callback, and for a task step its coroutine and the line it is suspended at now."""
    text = repr(handle)
    task = getattr(handle._callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        text += f" task={task.get_name()} coroutine={getattr(coro, '__qualname__', coro)}"
        frames = []
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            frames.append(f"{coro.cr_code.co_filename}:{coro.cr_frame.f_lineno} {coro.cr_code.co_name}")
            coro = coro.cr_await
        if frames:
            text += " suspended at " + " -> ".join(frames)
    return text


def _scheduled_at(handle: asyncio.Handle) -> str:
    source = handle._source_traceback  # only filled in debug mode
    return "".join(traceback.format_list(source[-8:])) if source else ""
