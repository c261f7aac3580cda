"""The tests' own waiting helpers: they return as soon as a condition holds and name it when it does not."""
from __future__ import annotations

import asyncio

import pytest

from tests.waiting import await_stays, await_until, stays, wait_until


def test_wait_until_returns_the_value_as_soon_as_it_is_truthy():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and calls)) == [1, 1, 1]


def test_a_timeout_names_the_condition_and_its_last_value():
    items: list[int] = []
    with pytest.raises(AssertionError, match=r"^timed out after 0.05 s waiting for len\(items\) == 2 \(last value: False\)$"):
        wait_until(lambda: len(items) == 2, timeout=0.05)
    with pytest.raises(AssertionError, match=r"waiting for the queue to fill \(last value: \[\]\)"):
        wait_until(lambda: items, "the queue to fill", timeout=0.05)


async def test_await_until_takes_awaitable_conditions():
    async def ready():
        return "yes"

    assert await await_until(ready) == "yes"
    with pytest.raises(AssertionError, match="waiting for never"):
        await await_until(asyncio.Event().is_set, "never", timeout=0.05)


def test_stays_fails_at_the_first_moment_the_condition_breaks():
    ticks: list[int] = []
    stays(lambda: True, seconds=0.02)
    with pytest.raises(AssertionError, match=r"expected fewer than three ticks to hold for 5 s"):
        stays(lambda: ticks.append(1) or len(ticks) < 3, "fewer than three ticks", seconds=5)
    assert len(ticks) == 3


async def test_await_stays_watches_the_whole_window():
    flag = asyncio.Event()
    asyncio.get_running_loop().call_later(0.03, flag.set)
    with pytest.raises(AssertionError, match=r"expected not flag.is_set\(\) to hold"):
        await await_stays(lambda: not flag.is_set(), seconds=1)
