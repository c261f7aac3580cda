"""The Celery app for the distributed mode: workers run background jobs, beat runs the sweeps."""
from __future__ import annotations

import os

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_project.settings")

app = Celery("voicecall")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["calls"])


@setup_logging.connect
def keep_the_settings_logging(**_) -> None:
    """Workers and beat keep the settings' console handler (redacted, LOG_FORMAT) instead of Celery's own.

    Without a receiver Celery replaces the root logger's handlers with one that redacts nothing.
    """
app.conf.beat_schedule = {
    # Deadlines are also scheduled at their exact time when written; this catches the rest.
    "sweep-deadlines": {"task": "calls.sweep_deadlines", "schedule": 1.0},
    "reap-stale-calls": {"task": "calls.reap_stale_calls", "schedule": 30.0},
    # Scheduled calls and dial-list rows that are due are admitted while maxConcurrentCalls allows.
    "advance-dials": {"task": "calls.advance_dials", "schedule": 1.0},
    # Greetings and hang-ups whose claim expired (their worker died) are started again.
    "resume-lost-jobs": {"task": "calls.resume_lost_jobs", "schedule": 30.0},
    "purge-replay-keys": {"task": "calls.purge_processed_webhooks", "schedule": 600.0},
    # Gateway processes that stopped heartbeating: declared dead, the media streams they held closed.
    "sweep-dead-nodes": {"task": "calls.sweep_dead_nodes", "schedule": settings.VOICECALL_NODE_HEARTBEAT_SECONDS},
}
