"""The Gateway: the one object holding the process's config in force, runtime, job pool, sweeper and loop."""
from __future__ import annotations

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
