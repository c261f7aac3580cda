"""The Gateway: the one object holding the process's config in force, runtime, job pool, sweeper and loop."""
from __future__ import annotations

import httpx
import pytest
from django.apps import apps

from calls.background import JOBS, JobExecutor
from calls.gateway import Gateway, get_gateway
from calls.runtime import get_runtime


def test_the_app_config_creates_the_one_gateway():
    assert isinstance(get_gateway(), Gateway)
    assert get_gateway() is apps.get_app_config("calls").gateway


def test_a_new_config_in_force_closes_the_carrier_built_from_the_old_one(configure, monkeypatch):
    configure({"maxConcurrentCalls": 3})
    first = get_runtime()
    assert get_runtime() is first  # built once per config
    closed = []
    monkeypatch.setattr(first.carrier, "close", lambda: closed.append(True))
    configure({"maxConcurrentCalls": 4})
    second = get_runtime()
    assert second is not first and second.config.max_concurrent_calls == 4
    assert closed == [True]


@pytest.mark.django_db(transaction=True)
def test_start_runs_once_and_stop_stops_the_sweeper(settings, monkeypatch):
    gateway = get_gateway()
    monkeypatch.setattr(gateway, "started", False)
    settings.VOICECALL_EMBEDDED_SCHEDULER = True
    try:
        assert gateway.start() is True
        assert gateway.start() is False
        sweeper = gateway.sweeper
        assert sweeper is not None and sweeper.is_alive()
    finally:
        gateway.stop()
    assert gateway.sweeper is None and not gateway.started
    assert not sweeper.is_alive()


def test_stopped_job_pool_lets_its_jobs_finish_and_the_next_job_gets_a_new_one(settings, monkeypatch):
    settings.VOICECALL_BACKGROUND = "thread"
    ran: list[int] = []
    monkeypatch.setitem(JOBS, "test.record", lambda n: ran.append(n))
    jobs = JobExecutor()
    jobs.dispatch("test.record", {"n": 1})
    jobs.shutdown()
    jobs.dispatch("test.record", {"n": 2})
    jobs.drain(5)
    assert sorted(ran) == [1, 2]
    jobs.shutdown()


def test_daphne_requests_leave_form_bodies_to_the_app(live_gateway):
    """Twisted does not parse form posts (skip_form_parsing); the app still gets the body as sent."""
    from daphne.http_protocol import WebRequest

    assert WebRequest._form_parsing_skipped
    body = "CallSid=CA1&SpeechResult=a+b%26c&Empty="
    response = httpx.post(f"{live_gateway}/voice/webhook", content=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    # The mock carrier reads JSON: the form arrived unchanged and is refused as not JSON, not lost.
    assert response.status_code == 400 and "not valid JSON" in response.text
