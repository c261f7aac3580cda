"""The embedded mode's sweeper: a thread in the gateway that enforces deadlines, admits due dials, reaps stale calls, resumes lost jobs.

It sleeps until the next deadline on the database (at most one second, so deadlines written
by other processes are seen) and wakes early when this process writes a new one. In the
distributed mode Celery beat runs the same sweeps instead.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import connections

from core.errors import VoiceCallError

from . import background

log = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 1.0
MIN_SLEEP_SECONDS = 0.02
PURGE_INTERVAL_SECONDS = 600


class Sweeper(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="voicecall-sweeper", daemon=True)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._next_reap = 0.0
        self._next_purge = 0.0
        self._next_nodes = 0.0
        # The restore at start resumes lost jobs first; the sweeper's own look comes one interval later.
        self._next_resume = time.monotonic() + settings.VOICECALL_RESUME_SECONDS

    def wake(self, *_args) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        self.join(timeout)

    def run(self) -> None:
        background.on_deadline(self.wake)
        log.info("sweeper started")
        try:
            while not self._stopping.is_set():
                delay = self.tick()
                self._wake.wait(delay)
                self._wake.clear()
        finally:
            background.off_deadline(self.wake)
            connections.close_all()

    def tick(self) -> float:
        """One pass; returns how long to sleep before the next."""
        from .gateway import get_gateway
        from .services import (
            REAP_INTERVAL_SECONDS, dead_nodes_sweep, deadlines_sweep, dials_advance, local_recordings_reap, lost_jobs_resume,
            next_deadline,
            processed_webhooks_purge,
            stale_calls_reap,
        )

        try:
            deadlines_sweep()
            dials_advance()  # scheduled calls and dial-list rows that are due, while lines are free
            clock = time.monotonic()
            if clock >= self._next_reap:
                self._next_reap = clock + REAP_INTERVAL_SECONDS
                stale_calls_reap()
                local_recordings_reap()  # recordings a dead process left in progress
            if clock >= self._next_resume:
                self._next_resume = clock + settings.VOICECALL_RESUME_SECONDS
                lost_jobs_resume()  # jobs whose claim expired: their process died (calls/services/resume.py)
            if clock >= self._next_nodes:
                self._next_nodes = clock + settings.VOICECALL_NODE_HEARTBEAT_SECONDS
                dead_nodes_sweep(exclude=get_gateway().node.node_id)  # gateway processes that died (calls/services/nodes.py)
            if clock >= self._next_purge:
                self._next_purge = clock + PURGE_INTERVAL_SECONDS
                processed_webhooks_purge()
            upcoming = next_deadline()
        except VoiceCallError as exc:
            log.debug("sweep skipped: %s", exc)  # setup incomplete or disabled
            return MAX_SLEEP_SECONDS
        except Exception:
            log.exception("sweep failed")
            connections.close_all()
            return MAX_SLEEP_SECONDS
        if upcoming is None:
            return MAX_SLEEP_SECONDS
        from django.utils import timezone

        seconds = (upcoming - timezone.now()).total_seconds()
        return max(MIN_SLEEP_SECONDS, min(MAX_SLEEP_SECONDS, seconds))
