"""The event-loop watch (tests/loop_watch.py): it fails on blocking callbacks and passes on normal ones."""
from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import deque

import pytest

from tests import loop_watch
from tests.loop_watch import LoopWatch


def burn_cpu(seconds: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


def run_on_new_loop(watch: LoopWatch | None, coro_factory) -> None:
    loop = asyncio.new_event_loop()
    if watch is not None:
        watch.watch(loop)
    try:
        loop.run_until_complete(coro_factory())
    finally:
        if watch is not None:
            watch.unwatch(loop)
        loop.close()


async def a_callback_that(work) -> None:
    done = asyncio.get_running_loop().create_future()

    def callback():
        work()
        done.set_result(None)

    asyncio.get_running_loop().call_soon(callback)
    await done


def test_a_callback_burning_30_ms_of_cpu_fails_the_check():
    watch = LoopWatch()
    run_on_new_loop(watch, lambda: a_callback_that(lambda: burn_cpu(0.03)))
    with pytest.raises(AssertionError, match=r"CPU-heavy callback on the event loop: <Handle .*callback"):
        watch.check()


def test_a_callback_sleeping_1_s_fails_the_check_as_blocking():
    watch = LoopWatch()
    run_on_new_loop(watch, lambda: a_callback_that(lambda: time.sleep(1)))
    [slow] = watch.take()
    assert "callback" in slow.description and slow.wall >= 1 and slow.cpu < 0.01
    assert str(slow).startswith("blocking callback")
    assert "time.sleep(1)" in slow.busy_in  # the stack it was caught in


def burn_until_sampled() -> None:
    """Burn 30 ms of CPU, and on until the sampler thread (which a loaded machine may run late) saw it."""
    burn_cpu(0.03)
    thread, deadline = threading.get_ident(), time.monotonic() + 10
    while thread not in loop_watch._busy_in and time.monotonic() < deadline:
        burn_cpu(0.001)


async def busy_coroutine() -> None:
    await asyncio.sleep(0)
    burn_until_sampled()  # in the middle of a task step
    await asyncio.sleep(0)


def test_a_task_step_is_reported_with_its_coroutine():
    watch = LoopWatch()
    run_on_new_loop(watch, busy_coroutine)
    [slow] = watch.take()
    assert "coroutine=busy_coroutine" in slow.description
    assert "in burn_cpu" in slow.busy_in
    assert "test_loop_watch.py" in slow.description  # where it is suspended after the step


async def normal_work() -> None:
    for _ in range(50):
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)  # waiting in the loop, not in a callback
    await a_callback_that(lambda: sum(range(1000)))


def test_normal_callbacks_pass():
    watch = LoopWatch()
    run_on_new_loop(watch, normal_work)
    watch.check()
    assert watch.slow == []


def test_only_watched_loops_are_timed():
    watch = LoopWatch()
    other = LoopWatch()
    loop = asyncio.new_event_loop()
    other.watch(loop)
    try:
        run_on_new_loop(watch, lambda: a_callback_that(lambda: burn_cpu(0.03)))
        loop.run_until_complete(a_callback_that(lambda: None))
    finally:
        other.unwatch(loop)
        loop.close()
    assert len(watch.take()) == 1 and other.take() == []
    run_on_new_loop(None, lambda: a_callback_that(lambda: burn_cpu(0.03)))  # nobody watches: nothing recorded
    assert watch.take() == []


def test_a_loop_in_another_thread_is_watched_from_this_one():
    watch = LoopWatch()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop")
    thread.start()
    watch.watch(loop)
    try:
        asyncio.run_coroutine_threadsafe(a_callback_that(lambda: burn_cpu(0.03)), loop).result(10)
        asyncio.run_coroutine_threadsafe(a_callback_that(lambda: None), loop).result(10)
    finally:
        watch.unwatch(loop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    [slow] = watch.take()
    assert slow.cpu >= 0.03


def test_time_in_the_garbage_collector_is_not_the_callbacks():
    collected: list[float] = []

    def collect() -> None:
        started = time.perf_counter()
        gc.collect()
        collected.append(time.perf_counter() - started)

    gc.disable()  # the garbage waits for the callback's collection
    try:
        for _ in range(300_000):
            node: list = []
            node.append(node)  # a cycle only the collector frees
        del node
        watch = LoopWatch(cpu_limit=0.0)  # records every callback with its CPU time
        run_on_new_loop(watch, lambda: a_callback_that(collect))
    finally:
        gc.enable()
    assert collected[0] > 0.01  # the collection alone would have been over the limit
    recorded = watch.take()
    assert any("callback()" in slow.description for slow in recorded)
    assert max(slow.cpu for slow in recorded) < 0.01
    assert max(slow.wall for slow in recorded) < collected[0]  # nor its wall time: no "blocking" verdict


def test_limits_are_the_documented_ones():
    watch = LoopWatch()
    assert (watch.cpu_limit, watch.wall_limit) == (0.010, 0.500)


def test_check_clears_what_it_reported():
    watch = LoopWatch()
    run_on_new_loop(watch, lambda: a_callback_that(lambda: burn_cpu(0.03)))
    with pytest.raises(AssertionError):
        watch.check()
    watch.check()  # already reported


def sampler_ran(monkeypatch, start: float, gaps: list[float]) -> None:
    """Pretend the watch's sampler thread woke after each of `gaps` (seconds), from `start` on."""
    wakes, at = [], start
    for gap in gaps:
        at += gap
        wakes.append(at)
    # Far in the future of perf_counter, so the real sampler's wakes (all earlier) are ignored.
    monkeypatch.setattr(loop_watch, "_sampler_wakes", deque(wakes, maxlen=4000))


def judge_a_callback(watch: LoopWatch, *, cpu: float, wall: float, started: float, sleeps: int = 1) -> None:
    loop = asyncio.new_event_loop()
    try:
        watch._judge(asyncio.Handle(lambda: None, (), loop), cpu, wall, "", started, sleeps)
    finally:
        loop.close()


def test_a_process_that_was_not_run_is_not_reported_as_blocking(monkeypatch):
    start = time.perf_counter() + 1000
    sampler_ran(monkeypatch, start, [0.005] * 10 + [0.65] + [0.005] * 10)  # held up 650 ms with the callback
    watch = LoopWatch()
    judge_a_callback(watch, cpu=0.0002, wall=0.75, started=start)
    assert watch.take() == []
    assert loop_watch.starved_seconds(start, start + 0.75) == pytest.approx(0.60, abs=0.001)


def test_a_blocking_call_is_reported_while_the_process_runs(monkeypatch):
    start = time.perf_counter() + 1000
    sampler_ran(monkeypatch, start, [0.03] * 26)  # ran all along, if only every 30 ms: only the loop waited
    watch = LoopWatch()
    judge_a_callback(watch, cpu=0.0002, wall=0.75, started=start)
    [slow] = watch.take()
    assert slow.kind == "blocking"


def test_a_sampler_still_held_up_when_the_callback_ends_counts_as_starved(monkeypatch):
    start = time.perf_counter() + 1000
    sampler_ran(monkeypatch, start, [0.005] * 4)  # and then nothing until after the callback
    assert loop_watch.starved_seconds(start, start + 0.7) == pytest.approx(0.7 - 0.02 - 0.05, abs=0.001)


def test_a_wait_for_the_gil_is_not_reported_as_blocking(monkeypatch):
    start = time.perf_counter() + 1000
    sampler_ran(monkeypatch, start, [0.005] * 160)  # the process ran all along: another thread held the GIL
    watch = LoopWatch()
    judge_a_callback(watch, cpu=0.0001, wall=0.8, started=start, sleeps=160)  # woke every 5 ms to ask for it
    assert watch.take() == []


def test_a_blocking_call_is_reported_even_when_it_also_waited_for_the_gil(monkeypatch):
    start = time.perf_counter() + 1000
    sampler_ran(monkeypatch, start, [0.005] * 160)
    watch = LoopWatch()
    judge_a_callback(watch, cpu=0.0001, wall=0.8, started=start, sleeps=11)  # one sleep, then 50 ms for the GIL
    [slow] = watch.take()
    assert slow.kind == "blocking"


def test_a_callback_kept_from_the_gil_by_busy_threads_passes_the_check():
    stop = threading.Event()

    def hold_the_gil():
        while not stop.is_set():
            sum(range(20000))

    hogs = [threading.Thread(target=hold_the_gil, daemon=True) for _ in range(3)]
    for hog in hogs:
        hog.start()
    watch = LoopWatch(wall_limit=0.05)  # a GIL-starved run of sleeps easily adds up to this

    def many_short_gil_waits():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.2:
            time.sleep(0)  # gives up the GIL; getting it back means waiting for a busy thread

    try:
        run_on_new_loop(watch, lambda: a_callback_that(many_short_gil_waits))
    finally:
        stop.set()
        for hog in hogs:
            hog.join()
    assert [slow for slow in watch.take() if slow.kind == "blocking"] == []


class SlowToStartThread(threading.Thread):
    """A thread the OS is slow to run: its start handshake takes 0.7 s, as on a very busy machine."""

    def _bootstrap_inner(self) -> None:
        time.sleep(0.7)
        super()._bootstrap_inner()


def test_waiting_for_a_new_thread_to_start_is_not_reported_as_blocking():
    started: list[float] = []

    def start_a_thread() -> None:
        began = time.perf_counter()
        thread = SlowToStartThread(target=lambda: None)
        thread.start()
        started.append(time.perf_counter() - began)
        thread.join(10)

    watch = LoopWatch()
    run_on_new_loop(watch, lambda: a_callback_that(start_a_thread))
    assert started[0] >= 0.7  # the callback did wait that long
    assert watch.take() == []


def test_a_blocking_call_after_starting_a_thread_is_still_reported():
    def start_a_thread_then_sleep() -> None:
        thread = SlowToStartThread(target=lambda: None)
        thread.start()
        thread.join(10)
        time.sleep(0.7)

    watch = LoopWatch()
    run_on_new_loop(watch, lambda: a_callback_that(start_a_thread_then_sleep))
    [slow] = watch.take()
    assert str(slow).startswith("blocking callback") and slow.wall >= 0.7
