"""Background jobs: side effects run after commit, on a thread pool (embedded), Celery (distributed) or inline.

Services never call the carrier while holding a transaction; they `submit()` a named job,
which is dispatched when the surrounding transaction commits.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections, transaction

log = logging.getLogger(__name__)

JOBS: dict[str, Callable[..., Any]] = {}
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_pending: set[Future] = set()
_deadline_listeners: list[Callable[[datetime], None]] = []


def job(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a background job under `name` (keyword arguments only, JSON-safe)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        JOBS[name] = func
        return func

    return register


_mode_override: str | None = None


def mode() -> str:
    return _mode_override or settings.VOICECALL_BACKGROUND


def set_mode(kind: str | None) -> None:
    """Override how jobs run in this process (the CLI runs them inline; None restores the setting)."""
    global _mode_override
    _mode_override = kind


def submit(name: str, **kwargs: Any) -> None:
    """Run job `name` after the current transaction commits (at once outside a transaction)."""
    if name not in JOBS:
        raise KeyError(f"unknown background job {name!r}")
    transaction.on_commit(lambda: _dispatch(name, kwargs))


def _dispatch(name: str, kwargs: dict[str, Any]) -> None:
    kind = mode()
    if kind == "inline":
        run_job(name, kwargs)
    elif kind == "celery":
        from .tasks import run_job_task

        run_job_task.delay(name, kwargs)
    else:
        future = _get_executor().submit(_run_in_thread, name, kwargs)
        _pending.add(future)
        future.add_done_callback(_pending.discard)


def run_job(name: str, kwargs: dict[str, Any]) -> None:
    """Execute a registered job; failures are logged, never raised into the caller."""
    _ensure_jobs_loaded()
    try:
        JOBS[name](**kwargs)
    except Exception:
        log.exception("background job %s failed (%s)", name, kwargs)


def _run_in_thread(name: str, kwargs: dict[str, Any]) -> None:
    try:
        run_job(name, kwargs)
    finally:
        connections.close_all()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="voicecall-job")
        return _executor


def drain(timeout: float = 10.0) -> None:
    """Wait for submitted thread-pool jobs to finish (tests, shutdown)."""
    deadline = time.monotonic() + timeout
    while _pending and time.monotonic() < deadline:
        wait(list(_pending), timeout=max(0.0, deadline - time.monotonic()))


def on_deadline(listener: Callable[[datetime], None]) -> None:
    """Be told when a new deadline is written (the embedded scheduler wakes up for it)."""
    _deadline_listeners.append(listener)


def off_deadline(listener: Callable[[datetime], None]) -> None:
    if listener in _deadline_listeners:
        _deadline_listeners.remove(listener)


def deadline_set(when: datetime) -> None:
    """Call after writing a deadline: wakes the sweeper so it fires on time, not on the next tick."""

    def notify() -> None:
        if mode() == "celery":
            from .tasks import sweep_deadlines_task

            sweep_deadlines_task.apply_async(eta=when)
        for listener in list(_deadline_listeners):
            listener(when)

    transaction.on_commit(notify)


def _ensure_jobs_loaded() -> None:
    from . import services  # noqa: F401  (importing registers the jobs)
