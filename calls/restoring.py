"""Restore after start, on a thread of its own and bounded in time, with the state /readyz reports.

The server listens before restore begins: checking live calls with a slow carrier never keeps
the port closed. Restore first starts again the jobs a dead process took with it (a greeting, a
hang-up, a reply: see calls/services/resume.py), then asks the carrier about every live call for
at most VOICECALL_RESTORE_SECONDS; calls it could not ask about keep their deadlines.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connections

from core.errors import VoiceCallError

log = logging.getLogger(__name__)

NOT_STARTED, RUNNING, DONE, TIMED_OUT, FAILED, SKIPPED = "not started", "running", "done", "timed out", "failed", "skipped"


class Restore:
    """One process's restore: where it is (for /readyz) and the thread that runs it."""

    def __init__(self) -> None:
        self.state = NOT_STARTED
        self.detail = ""
        self.budget: float | None = None
        self._started: float | None = None
        self._finished: float | None = None
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()

    def start(self, *, process_started_at: datetime, replies_upto: int | None = None, budget: float | None = None,
              node_id=None) -> None:
        """Run restore on a daemon thread; returns at once.

        `process_started_at` and `replies_upto` (the newest reply row then) are read before the
        server listens: what is older than them was left by the process before this one. `node_id`:
        this process's gateway node (never taken for a dead one).
        """
        self.budget = settings.VOICECALL_RESTORE_SECONDS if budget is None else budget
        self.state, self.detail = RUNNING, ""
        self._started, self._finished = time.monotonic(), None
        self.finished.clear()
        self._thread = threading.Thread(target=self._run, args=(process_started_at, replies_upto, node_id),
                                        name="voicecall-restore", daemon=True)
        self._thread.start()

    def skip(self, why: str) -> None:
        """Nothing to restore in this process (calls disabled or setup incomplete)."""
        self._end(SKIPPED, why)

    def fail(self, why: str) -> None:
        """Restore could not even begin (e.g. the database did not answer)."""
        self._end(FAILED, why)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a restore that was started to end; True when none is running."""
        return self.state == NOT_STARTED or self.finished.wait(timeout)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state}
        if self._started is not None:
            body["seconds"] = round((self._finished or time.monotonic()) - self._started, 3)
            body["limitSeconds"] = self.budget
        if self.detail:
            body["detail"] = self.detail
        return body

    def _run(self, process_started_at: datetime, replies_upto: int | None, node_id) -> None:
        from .services import calls_restore, dead_nodes_sweep, lost_jobs_resume, nodes_gone

        try:
            # One gateway per database in the embedded mode: a claim older than this process is a dead one's,
            # and so is every stream opened before it and every other node.
            # With several gateways (distributed) only expired claims are, and only the streams of nodes
            # that stopped or died (calls/services/nodes.py): a node starting never closes another's live streams.
            sole = settings.VOICECALL_MODE == "embedded"
            resumed = lost_jobs_resume(abandoned_before=process_started_at if sole else None,
                                       replies_upto=replies_upto if sole else None)
            if sole:
                nodes_gone(except_node=node_id)
            else:
                resumed += dead_nodes_sweep(exclude=node_id)
            report = calls_restore(budget=self.budget)
        except VoiceCallError as exc:
            log.warning("restore skipped: %s", exc)
            self._end(SKIPPED, str(exc))
        except Exception as exc:
            log.exception("restore failed; live calls keep their deadlines")
            self._end(FAILED, f"{type(exc).__name__}: {exc}")
        else:
            detail = report.summary() + (f"; resumed {resumed}" if resumed else "")
            if report.timed_out:
                log.warning("restore stopped after %g s: %s", self.budget, detail)
                self._end(TIMED_OUT, detail)
            else:
                self._end(DONE, detail)
        finally:
            connections.close_all()

    def _end(self, state: str, detail: str) -> None:
        self.state, self.detail, self._finished = state, detail, time.monotonic()
        self.finished.set()
