"""Scheduled calls and dial lists: scheduling through every surface, admission in order under maxConcurrentCalls, cancelling."""
from __future__ import annotations

import io
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from calls import rpc, tools
from calls.clock import clock_source, now, to_ms
from calls.dial_progress import dial_list_progress
from calls.dial_rows import DialListRefused
from calls.models import Call, DialList, PendingDial, PendingDialStatus
from calls.selectors import call_status
from calls.services import (
    call_end_request,
    call_initiate_request,
    call_schedule,
    dial_list_cancel,
    dial_list_create,
    dials_advance,
    event_process,
)
from calls.services import dial_queue
from core.errors import InvalidRequest
from core.events import CallEnded
from voicecall_project.rpc_tokens import RpcToken

pytestmark = pytest.mark.django_db(transaction=True)

TO = "+15550001111"
WRITE = RpcToken(scope="write", token="w", source="test")


def later(delta: timedelta):
    """Read the clock `delta` from now (a scheduled dial comes due without waiting for it)."""
    moment = now() + delta
    return clock_source(lambda: moment)


def dialed(outbox) -> list[str]:
    return [request.params["to"] for request in outbox if request.action == "initiate_call"]


def csv_rows(count: int, *, start: int = 1) -> str:
    return "to,message\n" + "".join(f"+1555000{start + i:04d},Hello {start + i}\n" for i in range(count))


def rpc_result(method: str, params: dict):
    return rpc.call_method(method, params, WRITE)


# --- scheduled calls ----------------------------------------------------------------------------


def test_a_scheduled_call_is_written_as_a_dial_not_a_call(outbox):
    result = call_initiate_request(to=TO, message="Reminder", mode="notify", at="+15m").as_dict()
    assert result["initiated"] is False and result["scheduled"] is True
    assert result["status"].startswith("scheduled for ")
    dial = PendingDial.objects.get(pk=result["callId"])
    assert result["scheduledAt"] == to_ms(dial.due_at)
    assert (dial.to_number, dial.message, dial.mode, dial.status) == (TO, "Reminder", "notify", "pending")
    assert Call.objects.count() == 0 and dialed(outbox) == []
    assert dials_advance() == 0  # not due yet
    assert Call.objects.count() == 0


def test_status_shows_a_scheduled_call_and_end_cancels_it():
    call_id = call_initiate_request(to=TO, message="Hi", at="+1h").call_id
    status = call_status(ref=call_id)
    assert status["found"] is True
    assert status["call"]["state"] == "scheduled" and status["call"]["callId"] == call_id
    assert call_end_request(call_id=call_id).as_dict() == {"success": True}
    assert call_status(ref=call_id)["call"]["state"] == "cancelled"
    assert call_end_request(call_id=call_id).as_dict() == {"success": True}  # ending it again succeeds, like an ended call
    with later(timedelta(hours=2)):
        assert dials_advance() == 0
    assert Call.objects.count() == 0


def test_a_scheduled_call_is_placed_when_it_is_due_with_the_id_it_was_given(outbox):
    call_id = call_initiate_request(to=TO, message="Hi", mode="notify", at="+10m").call_id
    with later(timedelta(minutes=10)):
        assert dials_advance() == 1
    call = Call.objects.get(pk=call_id)
    assert (call.to_number, call.initial_message, call.mode) == (TO, "Hi", "notify")
    assert dialed(outbox) == [TO]
    assert PendingDial.objects.get(pk=call_id).status == "admitted"
    assert call_status(ref=call_id)["call"]["state"] == call.state  # now the call's own record
    with later(timedelta(minutes=11)):
        assert dials_advance() == 0  # admitted once
    assert dialed(outbox) == [TO]


@pytest.mark.parametrize(
    ("at", "message"),
    [
        ("2020-01-01T00:00:00Z", "at: '2020-01-01T00:00:00Z' is in the past"),
        ("next tuesday", "at: cannot read 'next tuesday'"),
        ("2030-01-01T10:00:00", "at: '2030-01-01T10:00:00' has no UTC offset"),
    ],
)
def test_a_bad_time_is_refused_naming_the_param(at, message):
    with pytest.raises(rpc.RpcError) as refused:
        rpc_result("voicecall.initiate", {"to": TO, "message": "Hi", "at": at})
    assert refused.value.code == rpc.INVALID_PARAMS and message in refused.value.message
    assert PendingDial.objects.count() == 0


def test_a_scheduled_call_checks_its_inputs_now():
    with pytest.raises(InvalidRequest, match="to: '12345': Expected E.164"):
        call_initiate_request(to="12345", message="Hi", at="+5m")
    with pytest.raises(InvalidRequest, match="dtmfSequence requires conversation mode"):
        call_initiate_request(to=TO, message="Hi", mode="notify", dtmf_sequence="12", at="+5m")
    assert PendingDial.objects.count() == 0


def test_rpc_start_and_the_tool_schedule_too():
    started = rpc_result("voicecall.start", {"to": TO, "at": "+5m"})
    assert started["scheduled"] is True
    details = tools.execute({"action": "initiate_call", "to": TO, "message": "Hi", "at": "+1h"})["details"]
    assert details["scheduled"] is True and details["initiated"] is False
    assert tools.execute({"action": "get_status", "callId": details["callId"]})["details"]["call"]["state"] == "scheduled"
    assert tools.execute({"action": "end_call", "callId": details["callId"]})["details"] == {"success": True}
    error = tools.execute({"action": "initiate_call", "to": TO, "message": "Hi", "at": "yesterday"})["details"]["error"]
    assert error.startswith("at: cannot read 'yesterday'")


def test_the_same_idempotency_key_schedules_once():
    first = call_schedule(to=TO, due_at=now() + timedelta(minutes=5), idempotency_key="reminder-42")
    again = call_schedule(to=TO, due_at=now() + timedelta(minutes=9), idempotency_key="reminder-42")
    assert again.pk == first.pk and PendingDial.objects.count() == 1


def test_cli_schedules_shows_and_cancels():
    out = io.StringIO()
    call_command("voicecall", "call", "--to", TO, "-m", "Hi", "--at", "+30m", stdout=out)
    placed = json.loads(out.getvalue())
    assert placed["scheduled"] is True and set(placed) == {"callId", "scheduled", "scheduledAt", "status"}
    out = io.StringIO()
    call_command("voicecall", "status", "--call-id", placed["callId"], "--json", stdout=out)
    assert json.loads(out.getvalue())["state"] == "scheduled"
    out = io.StringIO()
    call_command("voicecall", "end", "--call-id", placed["callId"], stdout=out)
    assert json.loads(out.getvalue()) == {"success": True}
    assert PendingDial.objects.get(pk=placed["callId"]).status == "cancelled"


# --- dial lists --------------------------------------------------------------------------------


def test_a_dial_list_keeps_its_bad_rows_with_their_errors():
    dial_list = dial_list_create(name="march.csv", data="to,message\n+15550001111,Hi\nbad,Hi\n+15550003333,\n+15550004444,Yo\n")
    assert (dial_list.rows_total, dial_list.rows_rejected) == (4, 2)
    rows = {d.row: d for d in PendingDial.objects.filter(dial_list=dial_list)}
    assert {row: d.status for row, d in rows.items()} == {2: "pending", 3: "rejected", 4: "rejected", 5: "pending"}
    assert rows[4].error == "message: empty"
    assert rows[2].idempotency_key == f"dial-list:{dial_list.pk}:2"
    progress = dial_list_progress(dial_list=dial_list)
    assert progress.counts == {"rows": 4, "waiting": 2, "queued": 0, "dialed": 0, "ended": 0, "failed": 0, "cancelled": 0, "refused": 2}
    assert not progress.settled


def test_an_unknown_column_stores_nothing():
    with pytest.raises(DialListRefused, match="unknown column 'mesage'"):
        dial_list_create(name="typo.csv", data="to,mesage\n+15550001111,Hi\n")
    assert DialList.objects.count() == PendingDial.objects.count() == 0


def test_rows_are_admitted_in_order_while_lines_are_free(configure, outbox):
    configure({"maxConcurrentCalls": 2})
    dial_list = dial_list_create(name="five.csv", data=csv_rows(5))
    assert dials_advance() == 2
    assert dialed(outbox) == ["+15550000001", "+15550000002"]
    assert dials_advance() == 0  # the lines are busy: the rest wait
    first = Call.objects.get(to_number="+15550000001")
    event_process(event=CallEnded(call_id=str(first.pk), reason="completed"))
    assert dials_advance() == 1
    assert dialed(outbox)[-1] == "+15550000003"
    counts = dial_list_progress(dial_list=dial_list).counts
    assert (counts["waiting"], counts["dialed"], counts["ended"]) == (2, 2, 1)


def test_a_call_from_elsewhere_takes_a_line_too(configure, outbox):
    configure({"maxConcurrentCalls": 1})
    call_initiate_request(to="+15559999999", message="first")
    dial_list_create(name="one.csv", data=csv_rows(1))
    assert dials_advance() == 0
    assert PendingDial.objects.get().status == "pending"


def test_cancelled_rows_do_nothing_when_their_turn_comes(configure, outbox):
    configure({"maxConcurrentCalls": 10})
    dial_list = dial_list_create(name="three.csv", data=csv_rows(3))
    second = PendingDial.objects.get(dial_list=dial_list, row=3)
    assert call_end_request(call_id=str(second.pk)).as_dict() == {"success": True}
    assert dials_advance() == 2
    assert dialed(outbox) == ["+15550000001", "+15550000003"]
    assert not Call.objects.filter(pk=second.pk).exists()
    assert dial_list_progress(dial_list=dial_list).counts["cancelled"] == 1


def test_cancelling_a_list_stops_its_waiting_rows_only(configure, outbox):
    configure({"maxConcurrentCalls": 1})
    dial_list = dial_list_create(name="three.csv", data=csv_rows(3))
    assert dials_advance() == 1
    assert dial_list_cancel(dial_list_id=dial_list.pk) == 2
    counts = dial_list_progress(dial_list=dial_list).counts
    assert (counts["dialed"], counts["cancelled"]) == (1, 2)


def test_rows_due_later_wait_for_their_time(configure, outbox):
    configure({"maxConcurrentCalls": 10})
    dial_list_create(name="timed.csv", data="to,message,at\n+15550000001,Hi,+1h\n+15550000002,Hi,\n")
    assert dials_advance() == 1
    assert dialed(outbox) == ["+15550000002"]
    with later(timedelta(hours=1)):
        assert dials_advance() == 1
    assert dialed(outbox) == ["+15550000002", "+15550000001"]


def test_a_row_refused_at_its_turn_is_failed_with_the_reason(configure, monkeypatch, outbox):
    configure({"maxConcurrentCalls": 10})
    dial_list = dial_list_create(name="two.csv", data=csv_rows(2))

    def refuse(**kwargs):
        raise InvalidRequest("fromNumber not configured")

    monkeypatch.setattr(dial_queue, "call_initiate", refuse)
    assert dials_advance() == 0
    rows = PendingDial.objects.filter(dial_list=dial_list)
    assert {(d.status, d.error) for d in rows} == {("failed", "fromNumber not configured")}
    progress = dial_list_progress(dial_list=dial_list)
    assert progress.counts["failed"] == 2 and progress.settled


def test_admission_racing_a_cancel_either_dials_and_ends_or_never_dials(configure, outbox):
    """A cancel that loses the race to admission finds the call and ends it: never a cancelled row with a live call."""
    configure({"maxConcurrentCalls": 50})
    dial_list_create(name="race.csv", data=csv_rows(20))
    dials = list(PendingDial.objects.order_by("row"))

    def cancel_all() -> None:
        try:
            for dial in dials:
                call_end_request(call_id=str(dial.pk))
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_all)
    canceller.start()
    try:
        dials_advance()
    finally:
        canceller.join()
    for dial in PendingDial.objects.all():
        call = Call.objects.filter(pk=dial.pk).first()
        if dial.status == "cancelled":
            assert call is None
        else:
            assert dial.status == "admitted" and call is not None and call.is_terminal, (dial.row, dial.status, call and call.state)


def test_two_advances_at_once_place_each_row_once(configure, outbox):
    configure({"maxConcurrentCalls": 50})
    dial_list_create(name="ten.csv", data=csv_rows(10))
    barrier = threading.Barrier(2)

    def advance() -> None:
        try:
            barrier.wait()
            dials_advance()
        finally:
            connection.close()

    threads = [threading.Thread(target=advance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(dialed(outbox)) == [f"+1555000{i:04d}" for i in range(1, 11)]
    assert Call.objects.count() == 10


# --- the CLI and the admin ----------------------------------------------------------------------


def test_cli_dial_list_reports_bad_rows_and_waits_for_the_rest(configure, tmp_path: Path, outbox):
    configure({"maxConcurrentCalls": 10})
    path = tmp_path / "list.csv"
    path.write_text("to,message\n+15550000001,Hi\n12345,Hi\n+15550000002,\n+15550000003,Hi\n")
    out = io.StringIO()
    call_command("voicecall", "dial-list", str(path), "--wait", "--poll", "50", stdout=out, stderr=io.StringIO())
    documents = [json.loads(chunk) for chunk in _json_documents(out.getvalue())]
    created, final = documents[0], documents[-1]
    assert created["name"] == "list.csv"
    assert [row["row"] for row in created["refused"]] == [3, 4]
    assert "Expected E.164" in created["refused"][0]["error"] and created["refused"][1]["error"] == "message: empty"
    assert final["settled"] is True
    assert {row["row"]: row["outcome"] for row in final["rows"]} == {2: "dialed", 3: "refused", 4: "refused", 5: "dialed"}
    assert sorted(dialed(outbox)) == ["+15550000001", "+15550000003"]


def test_cli_dial_list_refuses_a_bad_file(tmp_path: Path):
    path = tmp_path / "typo.csv"
    path.write_text("to,mesage\n+15550000001,Hi\n")
    err = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("voicecall", "dial-list", str(path), stdout=io.StringIO(), stderr=err)
    assert "unknown column 'mesage'" in err.getvalue()
    assert DialList.objects.count() == 0


def _json_documents(text: str) -> list[str]:
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        _, end = decoder.raw_decode(text, index)
        documents.append(text[index:end])
        index = end
    return documents


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def upload(client, text: str, name: str = "campaign.csv", **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        reverse("admin:calls_diallist_add"),
        {"file": SimpleUploadedFile(name, text.encode(), content_type="text/csv"), **fields},
    )


def test_admin_upload_and_progress_page(staff, configure, outbox):
    configure({"maxConcurrentCalls": 10})
    form = staff.get(reverse("admin:calls_diallist_add"))
    assert form.status_code == 200 and b'enctype="multipart/form-data"' in form.content
    response = upload(staff, "to,message\n+15550000001,Hi\nnope,Hi\n+15550000002,Hi\n")
    dial_list = DialList.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:calls_diallist_change", args=[dial_list.pk])
    page = staff.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200
    assert "2 rows will be dialed, 1 refused." in html
    assert 'http-equiv="refresh"' in html  # still in progress
    assert "to: &#x27;nope&#x27;: Expected E.164" in html
    dials_advance()
    html = staff.get(response["Location"]).content.decode()
    assert html.count('class="row-dialed"') == 2 and html.count('class="row-refused"') == 1
    assert 'http-equiv="refresh"' not in html
    listing = staff.get(reverse("admin:calls_diallist_changelist")).content.decode()
    assert "campaign.csv" in listing and "2 admitted, 1 rejected" in listing


def test_admin_upload_refuses_a_bad_header_naming_it(staff):
    response = upload(staff, "to,mesage\n+15550000001,Hi\n")
    assert response.status_code == 200
    assert "unknown column &#x27;mesage&#x27;" in response.content.decode()
    assert DialList.objects.count() == 0


def test_admin_upload_needs_the_add_permission(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("admin:calls_diallist_add")).status_code == 403
    assert upload(client, csv_rows(1)).status_code == 403
    assert DialList.objects.count() == 0


def test_admin_cancel_action(staff, configure, outbox):
    configure({"maxConcurrentCalls": 1})
    dial_list = dial_list_create(name="three.csv", data=csv_rows(3))
    dials_advance()
    staff.post(reverse("admin:calls_diallist_changelist"), {"action": "cancel_waiting_rows", "_selected_action": [str(dial_list.pk)]})
    assert PendingDial.objects.filter(status=PendingDialStatus.CANCELLED).count() == 2


# --- who advances --------------------------------------------------------------------------------


def test_the_embedded_sweeper_and_the_beat_task_admit_due_dials(configure, outbox):
    from calls.scheduler import Sweeper
    from calls.tasks import advance_dials_task

    configure({"maxConcurrentCalls": 10})
    dial_list_create(name="two.csv", data=csv_rows(1) + "+15550000002,Hi\n")
    Sweeper().tick()
    assert dialed(outbox) == ["+15550000001", "+15550000002"]
    call_initiate_request(to=TO, message="Hi", at="+1m")
    with later(timedelta(minutes=1)):
        assert advance_dials_task() == 1
    assert dialed(outbox)[-1] == TO


def test_the_beat_task_waits_while_setup_is_incomplete(configure):
    from calls.tasks import advance_dials_task

    dial_list_create(name="one.csv", data=csv_rows(1))
    configure({"provider": "twilio"})  # no credentials: nothing can be dialed
    assert advance_dials_task() == 0
    assert PendingDial.objects.get().status == "pending"
