"""Waiting in tests: on the condition itself, never for a guessed amount of time.

`wait_until` (sync) and `await_until` (async) poll a condition until it holds and return its
value. On timeout they fail naming what was awaited and what the condition last returned, so a
loaded machine only makes a test slower, never wrong, and a real failure says what did not happen.

`stays` / `await_stays` are the one honest use of elapsed time: a negative check ("no second
clear within 100 ms") that watches the condition for the whole window and fails at the first moment
it stops holding.

The async variants accept a condition that returns an awaitable (for example a database query
wrapped in sync_to_async), and never block the event loop while they wait.
"""
from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

TIMEOUT = 10.0  # generous: it bounds a failing test, a passing one returns as soon as it can
POLL = 0.01


def wait_until(condition: Callable[[], T], what: str | None = None, *, timeout: float = TIMEOUT,
               interval: float = POLL) -> T:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(condition, what, timeout, value))
        time.sleep(interval)


async def await_until(condition: Callable[[], Any], what: str | None = None, *, timeout: float = TIMEOUT,
                      interval: float = POLL) -> Any:
    """Like wait_until, in a coroutine; `condition` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = await _evaluate(condition)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(condition, what, timeout, value))
        await asyncio.sleep(interval)


def stays(condition: Callable[[], Any], what: str | None = None, *, seconds: float, interval: float = POLL) -> None:
    """Negative check: `condition` holds now and for the next `seconds` (elapsed time is the point)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if not value:
            raise AssertionError(_broke(condition, what, seconds, value))
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


async def await_stays(condition: Callable[[], Any], what: str | None = None, *, seconds: float,
                      interval: float = POLL) -> None:
    """Like stays, in a coroutine; `condition` may return an awaitable."""
    deadline = time.monotonic() + seconds
    while True:
        value = await _evaluate(condition)
        if not value:
            raise AssertionError(_broke(condition, what, seconds, value))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)


async def _evaluate(condition: Callable[[], Any]) -> Any:
    value = condition()
    if inspect.isawaitable(value):
        value = await value
    return value


def _timed_out(condition: Callable[[], Any], what: str | None, timeout: float, value: Any) -> str:
    return f"timed out after {timeout:g} s waiting for {what or describe(condition)} (last value: {value!r:.300})"


def _broke(condition: Callable[[], Any], what: str | None, seconds: float, value: Any) -> str:
    return f"expected {what or describe(condition)} to hold for {seconds:g} s, but it stopped (value: {value!r:.300})"


def describe(condition: Callable[[], Any]) -> str:
    """A lambda's own source text, else the function's name: what a failure message names."""
    name = getattr(condition, "__name__", "")
    if name != "<lambda>":
        return name or repr(condition)
    try:
        source = inspect.getsource(condition)
    except (OSError, TypeError):
        return "a condition"
    match = re.search(r"lambda[^:]*:\s*(.*)", " ".join(source.split()))
    return match.group(1).rstrip(",) ") if match else "a condition"


async def forever() -> None:
    """Never returns on its own: a stalled peer or a body that never comes; only cancellation ends it."""
    await asyncio.Event().wait()
