"""Celery tasks (distributed mode): the same jobs and sweeps the embedded gateway runs itself."""
from __future__ import annotations

import logging

from celery import shared_task

# Shared tasks are sent through the current Celery app: the project's, configured from the settings.
# The project package does not load it at startup (only processes that send or run tasks need Celery),
# so whoever sends a task imports it here first.
import voicecall_project.celery  # noqa: E402,F401
from core.errors import VoiceCallError

log = logging.getLogger(__name__)


@shared_task(name="calls.run_job", acks_late=True)
def run_job_task(name: str, kwargs: dict) -> None:
    from .background import run_job

    run_job(name, kwargs)


def _when_ready(sweep) -> int:
    """Run a sweep; while setup is incomplete or calls are disabled there is nothing to do."""
    try:
        return sweep()
    except VoiceCallError as exc:
        log.debug("%s skipped: %s", sweep.__name__, exc)
        return 0


@shared_task(name="calls.sweep_deadlines")
def sweep_deadlines_task() -> int:
    from .services import deadlines_sweep

    return _when_ready(deadlines_sweep)


@shared_task(name="calls.reap_stale_calls")
def reap_stale_calls_task() -> int:
    from .services import local_recordings_reap, stale_calls_reap

    _when_ready(local_recordings_reap)  # recordings a dead process left in progress
    return _when_ready(stale_calls_reap)


@shared_task(name="calls.purge_processed_webhooks")
def purge_processed_webhooks_task() -> int:
    from .services import processed_webhooks_purge

    return processed_webhooks_purge()


@shared_task(name="calls.resume_lost_jobs")
def resume_lost_jobs_task() -> int:
    from .services import lost_jobs_resume

    return _when_ready(lost_jobs_resume)


@shared_task(name="calls.sweep_dead_nodes")
def sweep_dead_nodes_task() -> int:
    """Gateway processes whose heartbeat stopped: declared dead, their media streams closed (calls/services/nodes.py)."""
    from .services import dead_nodes_sweep

    return dead_nodes_sweep()


@shared_task(name="calls.advance_dials")
def advance_dials_task() -> int:
    from .services import dials_advance

    return _when_ready(dials_advance)
