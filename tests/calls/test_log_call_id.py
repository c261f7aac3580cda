"""The call id on the lines logged while a call's work runs: the event pipeline and background jobs."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from calls import background
from calls.models import Call
from calls.services import deadlines_sweep, event_process
from core.call_context import bind_call_id, call_scope, current_call_id
from core.events import CallInitiated
from providers.carriers import mock
from tests.logs import ConsoleCapture

pytestmark = pytest.mark.django_db(transaction=True)


def test_lines_of_an_event_name_the_call_it_applies_to(configure):
    configure({"inboundPolicy": "open"})
    with ConsoleCapture() as console:
        event_process(event=CallInitiated(call_id="CA-log-1", provider_call_id="CA-log-1", direction="inbound",
                                          from_number="+15557654321", to_number="+15550009999"))
    call = Call.objects.get()
    created = [r for r in console.records if "created from webhook" in r["message"]]
    assert created and created[0]["call_id"] == str(call.pk)
    assert current_call_id() is None  # nothing left behind for the next piece of work


def test_a_line_about_an_unknown_call_has_no_call_id():
    with ConsoleCapture() as console:
        event_process(event=CallInitiated(call_id="nobody", provider_call_id=None))
    ignored = [r for r in console.records if "unknown call" in r["message"]]
    assert ignored and "call_id" not in ignored[0]


def test_a_jobs_lines_name_its_call(monkeypatch):
    call = Call.objects.create(
        provider="mock", provider_call_id="mock-job-1", direction="outbound", state="answered",
        from_number="+15550000000", to_number="+15550001111", started_at=timezone.now(),
        answered_at=timezone.now(), max_duration_deadline=timezone.now() - timedelta(seconds=1),
    )
    monkeypatch.setattr(mock.MockCarrier, "hangup_call",
                        lambda self, **kw: (_ for _ in ()).throw(RuntimeError("refused: Bearer sk-abcdefghijklmnopqrstu")))
    background.set_mode("inline")
    with ConsoleCapture() as console:
        deadlines_sweep()
    sweep = [r for r in console.records if "reached, ending" in r["message"]]
    failed = [r for r in console.records if " hang-up attempt 1 of " in r["message"]]
    assert sweep and failed
    assert failed[0]["call_id"] == str(call.pk)  # logged by the deadline job
    assert "sk-abcdefghijklmnopqrstu" not in console.text


def test_call_scope_restores_the_callers_call():
    with call_scope("outer"):
        with call_scope():
            bind_call_id("inner")
            assert current_call_id() == "inner"
        assert current_call_id() == "outer"
        with call_scope("other"):
            assert current_call_id() == "other"
        with call_scope(""):
            assert current_call_id() == "outer"  # no id: the caller's stays
    assert current_call_id() is None


def test_text_lines_name_the_call_after_the_logger():
    import logging

    with ConsoleCapture(json=False) as console:
        with call_scope("call-9"):
            logging.getLogger("calls.example").warning("about a call")
        logging.getLogger("calls.example").warning("about none")
        logging.getLogger("calls.example").warning("named explicitly", extra={"call_id": "call-3"})
    lines = console.text.splitlines()
    assert lines[0].endswith("WARNING calls.example [call call-9]: about a call")
    assert lines[1].endswith("WARNING calls.example: about none")
    assert lines[2].endswith("WARNING calls.example [call call-3]: named explicitly")


def test_lines_of_an_rpc_request_about_a_call_name_it(live_gateway):
    import httpx
    from django.conf import settings

    from calls.rpc_tokens import local_token
    from calls.services import call_initiate

    call = call_initiate(to="+15550001111", message="Hi")
    Call.objects.filter(pk=call.pk).update(state="answered", answered_at=timezone.now())
    body = {"jsonrpc": "2.0", "method": "voicecall.end", "params": {"callId": str(call.pk)}, "id": 1}
    with ConsoleCapture() as console:
        reply = httpx.post(f"{live_gateway}/voice/rpc", json=body, timeout=10,
                           headers={"Authorization": f"Bearer {local_token(settings.DATA_DIR).token}"}).json()
    assert reply["result"] == {"success": True}, reply
    ended = [r for r in console.records if r["message"].startswith(f"call {call.pk} ended")]
    assert ended and ended[0]["call_id"] == str(call.pk)
