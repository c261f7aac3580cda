"""The distributed mode against real services: PostgreSQL, channels-redis and a Celery worker on Redis.

Skipped unless DATABASE_URL points at PostgreSQL and REDIS_URL is set (CI sets both when they answer).
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from tests.waiting import wait_until

distributed = pytest.mark.skipif(
    not settings.REDIS_URL or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="needs DATABASE_URL=postgresql://... and REDIS_URL (distributed mode)",
)
pytestmark = [distributed, pytest.mark.django_db(transaction=True)]


def test_settings_switch_to_services():
    assert settings.VOICECALL_MODE == "distributed"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert connection.vendor == "postgresql"


async def test_channel_layer_round_trip_through_redis():
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("call.test", channel)
    await layer.group_send("call.test", {"type": "call.command", "text": "hello"})
    message = await layer.receive(channel)
    assert message == {"type": "call.command", "text": "hello"}
    await layer.group_discard("call.test", channel)


@pytest.fixture
def celery_worker_thread():
    from celery.contrib.testing.worker import start_worker

    from voicecall_project.celery import app

    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING", shutdown_timeout=10):
        yield app


def test_jobs_and_sweeps_run_on_a_real_celery_worker(celery_worker_thread, configure):
    from calls import background
    from core.events import CallAnswered
    from calls.models import Call
    from calls.services import call_initiate, event_process
    from calls.tasks import sweep_deadlines_task
    from providers.carriers import mock

    background.set_mode("celery")
    try:
        configure({"maxConcurrentCalls": 5})
        # The greeting job is queued on Redis and spoken by the worker.
        call = call_initiate(to="+15550001111", message="Hello from a worker", mode="conversation")
        event_process(event=CallAnswered(call_id=str(call.pk)))
        wait_until(lambda: Call.objects.get(pk=call.pk).transcript_entries.exists(), "the worker to speak the greeting", timeout=15)
        assert "play_tts" in mock.outbox_actions(call.provider_call_id)

        # A due deadline is enforced by the sweep task the worker runs.
        Call.objects.filter(pk=call.pk).update(max_duration_deadline=timezone.now() - timedelta(seconds=1))
        sweep_deadlines_task.delay()
        wait_until(lambda: Call.objects.get(pk=call.pk).state == "timeout", "the worker's sweep to end the call", timeout=15)
    finally:
        background.set_mode(None)


def test_admission_lock_holds_across_connections(configure):
    """Several database connections admitting at once still respect maxConcurrentCalls (row lock)."""
    from calls.models import Call
    from tests.conftest import admit_concurrently

    configure({"maxConcurrentCalls": 2})
    assert admit_concurrently(6).count("ok") == 2
    assert Call.objects.live().count() == 2
