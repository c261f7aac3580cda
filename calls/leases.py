"""Claims as leases: a claim timestamp this process holds is renewed while its work runs, so only a dead process's claim expires.

A claim column (e.g. `Call.greeting_claimed_at`) holds the time it was last renewed; any process
treats a claim older than CLAIM_TTL as abandoned and may take it over. Work that can outlast
CLAIM_TTL (a long greeting on a slow line) holds its claim here: one thread renews every held claim
every third of CLAIM_TTL with a conditional UPDATE on the exact value it wrote last, which works as
the owner's token (a claim taken over meanwhile is not touched, and is dropped from the set).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from django.db import connections

log = logging.getLogger(__name__)


class LeaseKeeper:
    """The claims this process holds, renewed on one daemon thread (started on first use)."""

    def __init__(self, every: float | None = None) -> None:
        self._every = every
        self._held: dict[tuple[str, object], datetime] = {}  # (column, call pk) -> the value written last
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @contextmanager
    def hold(self, column: str, call_id: object, claimed_at: datetime) -> Iterator[None]:
        """Keep the claim `column` = `claimed_at` on call `call_id` alive for the duration of the block."""
        key = (column, call_id)
        with self._lock:
            self._held[key] = claimed_at
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="voicecall-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    @property
    def every(self) -> float:
        """Seconds between renewals: a third of the claim lifetime, so two renewals can be late."""
        if self._every is None:
            from .services.common import CLAIM_TTL

            self._every = CLAIM_TTL.total_seconds() / 3
        return self._every

    def held(self) -> dict[tuple[str, object], datetime]:
        with self._lock:
            return dict(self._held)

    def renew(self) -> int:
        """Renew every held claim once; returns how many were still ours."""
        from .clock import now
        from .models import Call

        renewed = 0
        for (column, call_id), token in self.held().items():
            fresh = now()
            if Call.objects.filter(pk=call_id, **{column: token}).update(**{column: fresh}):
                renewed += 1
                with self._lock:
                    if (column, call_id) in self._held:
                        self._held[(column, call_id)] = fresh
            else:
                # Released by its work (which finished) or taken over: nothing more to keep.
                with self._lock:
                    if self._held.get((column, call_id)) == token:
                        self._held.pop((column, call_id))
        return renewed

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.every)
                with self._lock:
                    if not self._held:
                        self._thread = None
                        return
                try:
                    self.renew()
                except Exception:
                    log.exception("renewing claims failed (retried in %.0f s)", self.every)
                    connections.close_all()
        finally:
            connections.close_all()
