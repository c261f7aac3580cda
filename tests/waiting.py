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
import io
import time
import tokenize
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
    """A lambda's own body as written, else the function's name: what a failure message names."""
    name = getattr(condition, "__name__", "")
    if name != "<lambda>":
        return name or repr(condition)
    try:
        source = inspect.getsource(condition)
        return _lambda_body(source[source.index("lambda"):]) or "a condition"
    except (OSError, TypeError, ValueError, tokenize.TokenError):
        return "a condition"


def _lambda_body(source: str) -> str:
    """The expression after `lambda …:`, up to the comma or bracket that ends it."""
    depth, body, started = 0, [], False
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT) and not (started and depth):
            if started and not depth:
                break
            continue
        if not started:
            started = token.type == tokenize.OP and token.string == ":" and depth == 0
            depth += token.string in "([{" if token.type == tokenize.OP else 0
            continue
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif token.type == tokenize.OP and token.string == "," and depth == 0:
            break
        body.append(token.string)
    return _join(body)


def _join(tokens: list[str]) -> str:
    text = ""
    for token in tokens:
        glue = text and (text[-1].isalnum() or text[-1] in "_)]}\"'") and (token[0].isalnum() or token[0] in "_\"'")
        spaced = token in {"==", "!=", ">=", "<=", "<", ">", "and", "or", "not", "in", "is", "+", "-", "*", "/", "if", "else"}
        if token in {",", ":"}:
            text += token + " "
        else:
            text += (" " + token + " ") if spaced else ((" " if glue else "") + token)
    return " ".join(text.split())


async def forever() -> None:
    """Never returns on its own: a stalled peer or a body that never comes; only cancellation ends it."""
    await asyncio.Event().wait()
