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

from core.call_context import call_scope

from .gateway import get_gateway

log = logging.getLogger(__name__)

# Jobs that speak (a greeting, a reply) wait for their playback to finish, seconds each, so one
# live call can hold a thread for most of the call: the pool is sized for many calls, not cores.
# A waiting thread costs a few tens of KB and no CPU; the pool only grows as jobs overlap.
JOB_THREADS = 256

# Registered at import time by the modules that define jobs (see load_jobs), like Django's admin site registry.
JOBS: dict[str, Callable[..., Any]] = {}


def job(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a background job under `name` (keyword arguments only, JSON-safe)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        JOBS[name] = func
        return func

    return register


class JobExecutor:
    """How the Gateway runs jobs: the mode in force, and the thread pool with its pending jobs."""

    def __init__(self) -> None:
        self.mode_override: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: set[Future] = set()

    def mode(self) -> str:
        return self.mode_override or settings.VOICECALL_BACKGROUND

    def dispatch(self, name: str, kwargs: dict[str, Any]) -> None:
        kind = self.mode()
        if kind == "inline":
            run_job(name, kwargs)
        elif kind == "celery":
            from .tasks import run_job_task

            try:
                run_job_task.delay(name, kwargs)
            except broker_errors() as exc:
                # After the commit: the rows already say what was meant, so the caller's work stands.
                # Raising here would fail it for a job it does not wait for, and skip the hooks after this one.
                log.error("background job %s (%s) not queued: the Celery broker (Redis) did not take it: %s. "
                          "The resume sweep starts lost greetings and hang-ups again; other jobs are lost",
                          name, kwargs, exc)
        else:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=JOB_THREADS, thread_name_prefix="voicecall-job")
                future = self._executor.submit(_run_in_thread, name, kwargs)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait for submitted thread-pool jobs to finish (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            wait(list(self._pending), timeout=max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        """Let queued jobs finish on their threads; the next job starts a new pool."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


def mode() -> str:
    return get_gateway().jobs.mode()


def set_mode(kind: str | None) -> None:
    """Override how jobs run in this process (the CLI runs them inline; None restores the setting)."""
    get_gateway().jobs.mode_override = kind


def submit(name: str, **kwargs: Any) -> None:
    """Run job `name` after the current transaction commits (at once outside a transaction)."""
    load_jobs()
    if name not in JOBS:
        raise KeyError(f"unknown background job {name!r}")
    jobs = get_gateway().jobs
    transaction.on_commit(lambda: jobs.dispatch(name, kwargs))


def run_job(name: str, kwargs: dict[str, Any]) -> None:
    """Execute a registered job; failures are logged, never raised into the caller."""
    load_jobs()
    # A job about a call names it on every line it logs (jobs take call_id when they are about one).
    with call_scope(kwargs.get("call_id")):
        try:
            JOBS[name](**kwargs)
        except Exception:
            log.exception("background job %s failed (%s)", name, kwargs)


def _run_in_thread(name: str, kwargs: dict[str, Any]) -> None:
    try:
        run_job(name, kwargs)
    finally:
        connections.close_all()


def drain(timeout: float = 10.0) -> None:
    """Wait for submitted thread-pool jobs to finish (tests, shutdown)."""
    get_gateway().jobs.drain(timeout)


def on_deadline(listener: Callable[[datetime], None]) -> None:
    """Be told when a new deadline is written (the embedded scheduler wakes up for it)."""
    get_gateway().deadline_listeners.append(listener)


def off_deadline(listener: Callable[[datetime], None]) -> None:
    listeners = get_gateway().deadline_listeners
    if listener in listeners:
        listeners.remove(listener)


def deadline_set(when: datetime) -> None:
    """Call after writing a deadline: wakes the sweeper so it fires on time, not on the next tick."""
    gateway = get_gateway()

    def notify() -> None:
        if gateway.jobs.mode() == "celery":
            from .tasks import sweep_deadlines_task

            try:
                sweep_deadlines_task.apply_async(eta=when)
            except broker_errors() as exc:
                # Beat's sweep every second finds the deadline anyway, once the broker is back.
                log.warning("the sweep at the deadline %s was not queued (the Celery broker, Redis, did not take it: "
                            "%s); the periodic sweep ends it", when.isoformat(), exc)
        for listener in list(gateway.deadline_listeners):
            listener(when)

    transaction.on_commit(notify)


def broker_errors() -> tuple[type[BaseException], ...]:
    """What a publish to an unreachable or stalled Celery broker raises (after its bounded retries, see the settings)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    return (OperationalError, OSError, RedisError)


def load_jobs() -> None:
    """Import the modules that define jobs (importing registers them); cheap once they are loaded."""
    from . import conversation, services  # noqa: F401
