"""Call transfer through the service, the mock carrier, the RPC, the agent tool and the CLI: what is
stored before and after the carrier is asked, the outcome webhook, and every bad input refused with
nothing changed."""
from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import call_command

from calls import tools
from calls.models import Call, CallEvent, Transfer
from calls.services import CallNotTransferable, call_initiate, call_transfer, event_process, webhook_process
from core.errors import CallNotFound, CarrierError, InvalidRequest, UnsupportedByCarrier
from core.events import CallAnswered, CallEnded, CallTransfer
from providers.carriers import mock
from providers.carriers.base import WebhookRequest
from tests.conftest import events_body

pytestmark = pytest.mark.django_db

DESK = "+15550002222"


def answered_call(**options) -> Call:
    call = call_initiate(to="+15550001111", message="Hello.", **options)
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call.refresh_from_db()
    return call


def unchanged(call: Call) -> None:
    """Nothing was stored or sent: no transfer row, no transfer request, the call as it was."""
    before = (call.state, call.end_reason, call.hangup_reason)
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.hangup_reason) == before
    assert not Transfer.objects.filter(call=call).exists()
    assert not [r for r in mock.outbox if r.action in ("transfer_call", "warm_transfer")]


def mock_webhook(*events: dict) -> int:
    body = events_body(*events)
    return webhook_process(request=WebhookRequest("POST", "/voice/webhook", "", {}, body)).status


def test_cold_transfer_stores_the_row_then_ends_the_call_as_transferred(outbox):
    call = answered_call()
    result = call_transfer(call_id=str(call.pk), to=f" {DESK} ", requested_by="rpc")
    assert result.as_dict() == {"success": True, "transferId": result.transfer_id, "callId": str(call.pk), "to": DESK,
                                "mode": "cold", "status": "dialing"}
    request = outbox[-1]
    assert (request.action, request.provider_call_id) == ("transfer_call", call.provider_call_id)
    assert request.params == {"target": DESK, "transfer_id": result.transfer_id}
    transfer = Transfer.objects.get(call=call)
    assert (transfer.kind, transfer.status, transfer.requested_by, transfer.provider_ref) == (
        "cold", "dialing", "rpc", f"mock-transfer-{result.transfer_id}")
    call.refresh_from_db()
    assert (call.state, call.end_reason, call.hangup_claimed_at) == ("transferred", "transferred", None)

    assert mock_webhook({"type": "call.transfer", "callId": str(call.pk), "transferId": result.transfer_id,
                         "outcome": "connected"}) == 200
    transfer.refresh_from_db()
    assert transfer.status == "connected" and transfer.finished_at is not None
    # A later failure (the conversation's hang-up) does not undo it.
    event_process(event=CallTransfer(call_id=str(call.pk), transfer_id=result.transfer_id, outcome="failed", error="x"))
    transfer.refresh_from_db()
    assert (transfer.status, transfer.error) == ("connected", "")
    assert CallEvent.objects.filter(call=call, type="call.transfer").count() == 2


def test_the_row_exists_before_the_carrier_is_asked(monkeypatch):
    call = answered_call()
    seen = []

    def transfer_call(self, **kwargs):
        row = Transfer.objects.get(pk=kwargs["transfer_id"])
        seen.append((row.status, row.target))
        return ""

    monkeypatch.setattr(mock.MockCarrier, "transfer_call", transfer_call)
    call_transfer(call_id=str(call.pk), to=DESK)
    assert seen == [("requested", DESK)]


def test_failed_outcome_and_hanging_up_the_left_caller(outbox, django_capture_on_commit_callbacks):
    call = answered_call()
    result = call_transfer(call_id=str(call.pk), to="sip:desk@pbx.example.com")
    with django_capture_on_commit_callbacks(execute=True):
        event_process(event=CallTransfer(call_id=str(call.pk), transfer_id=result.transfer_id, outcome="failed",
                                         error="the target did not answer", hangup_caller=True))
    transfer = Transfer.objects.get(pk=result.transfer_id)
    assert (transfer.status, transfer.error) == ("failed", "the target did not answer")
    assert outbox[-1].action == "hangup_call" and outbox[-1].params == {"reason": "transferred"}
    call.refresh_from_db()
    assert call.end_reason == "transferred"


def test_outcome_for_an_unknown_transfer_changes_nothing(outbox, configure, django_capture_on_commit_callbacks):
    configure({"maxConcurrentCalls": 2})
    call = answered_call()
    other = answered_call()
    result = call_transfer(call_id=str(other.pk), to=DESK)
    # Another call's transfer id, a made-up one, one that is not a UUID: logged no-ops, answered 200.
    for transfer_id in (result.transfer_id, str(uuid.uuid4()), "not-a-uuid"):
        with django_capture_on_commit_callbacks(execute=True):
            status = mock_webhook({"type": "call.transfer", "callId": str(call.pk), "transferId": transfer_id,
                                  "outcome": "failed", "hangupCaller": True})
        assert status == 200
    assert Transfer.objects.get(pk=result.transfer_id).status == "dialing"
    assert not Transfer.objects.filter(call=call).exists()
    assert outbox[-1].action == "transfer_call"  # no hang-up was asked for


def test_malformed_outcome_webhook_is_400():
    call = answered_call()
    assert mock_webhook({"type": "call.transfer", "callId": str(call.pk)}) == 400
    assert mock_webhook({"type": "call.transfer", "callId": str(call.pk), "transferId": "x", "outcome": "maybe"}) == 400


def test_default_target_is_the_agents_transfer_to(configure, outbox):
    configure({"agents": {"main": {"transferTo": "sip:front@pbx.example.com"}}})
    call = answered_call()
    assert call_transfer(call_id=str(call.pk)).target == "sip:front@pbx.example.com"


def test_default_target_of_an_inbound_call_is_its_routes(configure, outbox):
    configure({"inboundPolicy": "open", "numbers": {"+15550000042": {"transferTo": DESK}},
               "agents": {"main": {"transferTo": "+15550003333"}}})
    event_process(event=CallAnswered(call_id="mock-in-1", provider_call_id="mock-in-1", direction="inbound",
                                     from_number="+15557654321", to_number="+15550000042"))
    call = Call.objects.get(provider_call_id="mock-in-1")
    assert call.route_key == "+15550000042"
    assert call_transfer(call_id=str(call.pk)).target == DESK


def test_warm_transfer_says_the_summary(outbox):
    call = answered_call()
    result = call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="  Wants to move Tuesday.  ")
    assert outbox[-1].action == "warm_transfer" and outbox[-1].params["summary"] == "Wants to move Tuesday."
    assert Transfer.objects.get(pk=result.transfer_id).summary == "Wants to move Tuesday."


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"to": "5550002222"}, "to: '5550002222' is not a transfer target. Expected an E.164 number"),
    ({"to": "desk@example.com"}, "is not a transfer target"),
    ({"to": "sip:nohost"}, "is not a transfer target"),
    ({}, "to required: the call's route and agent name no transferTo"),
    ({"to": DESK, "mode": "blind"}, "mode: expected cold or warm, got 'blind'"),
    ({"to": DESK, "mode": "warm"}, "summary required"),
    ({"to": DESK, "mode": "warm", "summary": "   "}, "summary required"),
])
def test_bad_requests_change_nothing(kwargs, message):
    call = answered_call()
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        call_transfer(call_id=str(call.pk), **kwargs)
    unchanged(call)


def test_a_call_not_answered_is_refused():
    call = call_initiate(to="+15550001111", message="Hello.")
    with pytest.raises(CallNotTransferable, match="is not answered yet .*only an answered call can be transferred"):
        call_transfer(call_id=str(call.pk), to=DESK)
    unchanged(call)


def test_an_ended_call_is_refused():
    call = answered_call()
    event_process(event=CallEnded(call_id=str(call.pk), reason="hangup-user"))
    call.refresh_from_db()
    with pytest.raises(CallNotTransferable, match=r"has already ended \(hangup-user\): nothing was transferred"):
        call_transfer(call_id=str(call.pk), to=DESK)
    unchanged(call)


def test_unknown_call():
    with pytest.raises(CallNotFound):
        call_transfer(call_id=str(uuid.uuid4()), to=DESK)
    assert not Transfer.objects.exists()


def test_a_carrier_without_transfer_is_named(monkeypatch):
    call = answered_call()
    monkeypatch.setattr(mock.MockCarrier, "supports_transfer", False)
    with pytest.raises(UnsupportedByCarrier, match="^transfer is not supported by mock$"):
        call_transfer(call_id=str(call.pk), to=DESK)
    unchanged(call)
    monkeypatch.setattr(mock.MockCarrier, "supports_transfer", True)
    monkeypatch.setattr(mock.MockCarrier, "supports_warm_transfer", False)
    with pytest.raises(UnsupportedByCarrier, match="^warm transfer is not supported by mock$"):
        call_transfer(call_id=str(call.pk), to=DESK, mode="warm", summary="Hi")
    unchanged(call)


def test_a_carrier_refusal_is_kept_and_the_call_goes_on(monkeypatch):
    call = answered_call()

    def refuse(self, **kwargs):
        raise RuntimeError("twilio POST /Calls/CA1.json failed (400, code 21220): Call is not in-progress")

    monkeypatch.setattr(mock.MockCarrier, "transfer_call", refuse)
    with pytest.raises(CarrierError, match="Call is not in-progress"):
        call_transfer(call_id=str(call.pk), to=DESK, requested_by="tool")
    transfer = Transfer.objects.get(call=call)
    assert transfer.status == "failed" and "Call is not in-progress" in transfer.error and transfer.finished_at
    call.refresh_from_db()
    assert not call.is_terminal and call.hangup_reason == "" and call.hangup_claimed_at is None
    # Nothing is under way any more: a second try is allowed.
    monkeypatch.undo()
    assert call_transfer(call_id=str(call.pk), to=DESK).status == "dialing"


def test_a_transfer_under_way_is_refused_until_it_is_stale():
    from datetime import timedelta

    from calls.clock import now

    call = answered_call()
    stuck = Transfer.objects.create(call=call, target=DESK)  # requested, as if another request were asking the carrier
    with pytest.raises(CallNotTransferable, match="already has a transfer under way"):
        call_transfer(call_id=str(call.pk), to=DESK)
    assert Transfer.objects.filter(call=call).count() == 1
    # A request whose process died before the carrier answered does not block the call for good.
    Transfer.objects.filter(pk=stuck.pk).update(requested_at=now() - timedelta(minutes=5))
    assert call_transfer(call_id=str(call.pk), to=DESK).status == "dialing"


def test_a_call_being_hung_up_is_not_transferred():
    from calls.clock import now

    call = answered_call()
    Call.objects.filter(pk=call.pk).update(hangup_claimed_at=now(), hangup_reason="hangup-bot")
    with pytest.raises(CallNotTransferable, match="is being hung up or handed over by another request"):
        call_transfer(call_id=str(call.pk), to=DESK)
    assert not Transfer.objects.filter(call=call).exists()


# --- surfaces -------------------------------------------------------------------------------------


def test_tool_transfer_call(outbox):
    call = answered_call()
    result = tools.execute({"action": "transfer_call", "callId": str(call.pk), "transferTo": DESK})["details"]
    assert result["success"] is True and result["to"] == DESK and result["mode"] == "cold"
    assert Transfer.objects.get(call=call).requested_by == "tool"
    again = tools.execute({"action": "transfer_call", "callId": str(call.pk), "transferTo": DESK})["details"]
    assert "has already ended (transferred)" in again["error"]


def test_tool_transfer_call_bad_target():
    call = answered_call()
    result = tools.execute({"action": "transfer_call", "callId": str(call.pk), "transferTo": "front desk"})["details"]
    assert result["error"].startswith("to: 'front desk' is not a transfer target")
    assert tools.execute({"action": "transfer_call"})["details"] == {"error": "callId required"}


def cli(*args: str) -> dict:
    out = io.StringIO()
    call_command("voicecall", *args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_cli_transfer_standalone(outbox):
    call = answered_call()
    result = cli("transfer", "--call-id", str(call.pk), "--to", DESK, "--warm", "--summary", "Billing.")
    assert (result["mode"], result["to"], result["status"]) == ("warm", DESK, "dialing")
    transfer = Transfer.objects.get(call=call)
    assert (transfer.requested_by, transfer.summary) == ("cli", "Billing.")


def test_cli_transfer_bad_target_exits_1():
    call = answered_call()
    err = io.StringIO()
    with pytest.raises(SystemExit) as exc:
        call_command("voicecall", "transfer", "--call-id", str(call.pk), "--to", "12345", stdout=io.StringIO(), stderr=err)
    assert exc.value.code == 1
    assert "is not a transfer target" in err.getvalue()
    unchanged(call)


def test_the_call_page_shows_the_transfer_and_its_outcome(client, django_user_model):
    from django.urls import reverse

    client.force_login(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-transfer-1"))
    call = answered_call()
    result = call_transfer(call_id=str(call.pk), to=DESK, requested_by="alice")
    event_process(event=CallTransfer(call_id=str(call.pk), transfer_id=result.transfer_id, outcome="failed",
                                     error="the target's line was busy"))
    html = client.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    assert "Transfers (status: requested, dialing, connected or failed)" in html
    assert DESK in html and "alice" in html and "the target&#x27;s line was busy" in html
    assert "transfer failed" in html  # the timeline row
    assert f"mock-transfer-{result.transfer_id}" in html


def test_the_status_record_shows_transfers_only_when_there_are_some():
    from calls.selectors import call_record

    call = answered_call()
    assert "transfers" not in call_record(call)
    result = call_transfer(call_id=str(call.pk), to=DESK, requested_by="cli")
    event_process(event=CallTransfer(call_id=str(call.pk), transfer_id=result.transfer_id, outcome="connected"))
    call.refresh_from_db()
    (shown,) = cli("status", "--call-id", str(call.pk), "--json")["transfers"]
    assert {k: shown[k] for k in ("transferId", "to", "mode", "status", "requestedBy")} == {
        "transferId": result.transfer_id, "to": DESK, "mode": "cold", "status": "connected", "requestedBy": "cli"}
    assert shown["finishedAt"] >= shown["requestedAt"] and "error" not in shown
