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


def test_current_runtime_is_only_the_one_built_for_the_config_in_force(configure):
    gateway = get_gateway()
    configure({"maxConcurrentCalls": 3})
    assert gateway.current_runtime() is None  # nothing is built by asking
    runtime = get_runtime()
    assert gateway.current_runtime() is runtime
    configure({"maxConcurrentCalls": 4})
    assert gateway.current_runtime() is None


@pytest.mark.django_db(transaction=True)
def test_start_builds_the_runtime_and_warms_provider_imports(settings, monkeypatch, configure):
    from calls import warmup
    from providers import registry

    imported = []
    monkeypatch.setattr(warmup, "import_string", lambda path: imported.append(path))
    gateway = get_gateway()
    monkeypatch.setattr(gateway, "started", False)
    settings.VOICECALL_EMBEDDED_SCHEDULER = False
    configure({"maxConcurrentCalls": 3})
    try:
        assert gateway.start() is True
        assert gateway.current_runtime() is not None
        assert set(imported) == {*registry.CARRIERS.values(), *registry.TRANSCRIPTION.values(), *registry.TTS.values()}
    finally:
        gateway.stop()


def test_warm_up_survives_a_backend_that_cannot_be_imported(monkeypatch):
    from calls.warmup import warm
    from providers import registry

    monkeypatch.setitem(registry.TTS, "broken", "providers.tts.no_such_module.Nothing")
    warm()  # the backend's own first use reports it
