"""Shared fixtures: a config in force, the mock carrier's outbox, and helpers to drive calls."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from calls import background, dial_rate
from calls.config import use_config
from providers.carriers import mock


@pytest.fixture(autouse=True)
def _clean_state():
    """Each test starts with an empty outbox, default config, inline background jobs and idle dial rate limits."""
    mock.reset_outbox()
    background.set_mode(None)
    dial_rate.reset()
    with use_config({}):
        yield
    mock.reset_outbox()


@pytest.fixture
def configure():
    """Put a config in force for the rest of the test: configure({...}, env={...})."""
    stack = []

    def apply(data: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        manager = use_config(data or {}, environ=env or {})
        loaded = manager.__enter__()
        stack.append(manager)
        return loaded

    yield apply
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def outbox():
    return mock.outbox


def admit_concurrently(attempts: int) -> list[str]:
    """Place `attempts` calls from as many threads at once; returns "ok"/"full" per attempt."""
    import threading

    from django.db import connection

    from core.errors import CapacityReached
    from calls.services import call_initiate

    results: list[str] = []

    def place(index: int) -> None:
        try:
            call_initiate(to=f"+1555000{index:04d}")
            results.append("ok")
        except CapacityReached:
            results.append("full")
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def events_body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


@pytest.fixture
async def asgi():
    """An httpx client speaking to the real ASGI application (no socket)."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    from voicecall_project.asgi import application

    transport = httpx.ASGITransport(app=application, client=("10.0.0.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client
    # The test's own sync_to_async calls ran on a worker thread; close its connection there.
    await sync_to_async(connections.close_all)()


@pytest.fixture
def live_gateway(transactional_db) -> Iterator[str]:
    """Base URL of the real gateway (Daphne) on a loopback port; see tests/live_gateway.py.

    The test fails if a callback blocked the gateway's event loop while it ran (tests/loop_watch.py).
    """
    from tests.live_gateway import live_gateway_loop, live_gateway_url
    from tests.loop_watch import LoopWatch

    url = live_gateway_url()
    watch, loop = LoopWatch(), live_gateway_loop()
    watch.watch(loop)
    try:
        yield url
    finally:
        watch.unwatch(loop)
    watch.check()


def hold_hangup_until_seen(monkeypatch, owner: Any, *, others: int) -> None:
    """The first carrier hang-up of a call stays in flight until `others` other `call_end`s have seen it.

    `owner.hangup_call` is wrapped (a carrier class or instance); `call_end` is watched for the
    locked lookups other threads make while the hang-up is in flight. Only then does it go on, so
    "a second end arrives while the first hang-up is in flight" happens on every run, however busy
    the machine is.
    """
    import threading

    from calls.services import ending
    from tests.waiting import wait_until

    in_flight = threading.Event()
    lookers: set[int] = set()
    find = ending.call_find

    def watched_find(**kwargs):
        if in_flight.is_set():
            lookers.add(threading.get_ident())
        return find(**kwargs)

    hangup = owner.hangup_call

    def held_hangup(*args, **kwargs):
        in_flight.set()
        wait_until(lambda: len(lookers - {threading.get_ident()}) >= others,
                   f"{others} other end(s) to find the hang-up in flight")
        return hangup(*args, **kwargs)

    monkeypatch.setattr(ending, "call_find", watched_find)
    monkeypatch.setattr(owner, "hangup_call", held_hangup)


@pytest.fixture(autouse=True)
def _fresh_warning_limits():
    """Rate-limited warnings start unseen in every test: one test's failures never silence another's."""
    from calls import log_limit

    log_limit.reset()
    yield
    log_limit.reset()
