"""The action endpoint: speak, DTMF and end through the call services, its permission, CSRF, every status, the audit events."""
from __future__ import annotations

import logging
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from calls.models import Call, CallEvent
from calls.selectors import call_timeline
from calls.services import call_initiate, event_process, operator_action
from core.errors import CarrierError
from core.events import CallAnswered, CallEnded
from core.phone import DTMF_MESSAGE
from providers.carriers import mock

pytestmark = pytest.mark.django_db(transaction=True)

PW = "actions-pw-5521"
JSON = {"HTTP_ACCEPT": "application/json"}


def url(call_id, action: str) -> str:
    return reverse("console:call-action", kwargs={"call_id": call_id, "action": action})


def record_url(call_id) -> str:
    return reverse("admin:calls_call_change", args=[call_id])


@pytest.fixture
def alice(django_user_model):
    """Staff with view_call and act_on_call (not a superuser: the permission itself lets her act)."""
    user = django_user_model.objects.create_user("alice", "alice@example.com", PW, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_call", "act_on_call"], content_type__app_label="calls"))
    return user


@pytest.fixture
def looker(django_user_model):
    user = django_user_model.objects.create_user("looker", "looker@example.com", PW, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
    return user


@pytest.fixture
def operator_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def live_call():
    call = call_initiate(to="+15550001111")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    mock.outbox.clear()
    return call


def operator_events(call):
    return [(e.type, e.payload) for e in CallEvent.objects.filter(call=call, type__startswith="operator.")]


def test_speak_goes_to_the_carrier_and_is_recorded_with_the_user(operator_client, live_call, alice, outbox):
    response = operator_client.post(url(live_call.pk, "speak"), {"text": "  Your order shipped "}, **JSON)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "Said on the call: Your order shipped"}
    assert [(r.action, r.params["text"]) for r in outbox] == [("play_tts", "Your order shipped")]
    assert operator_events(live_call) == [
        ("operator.speak", {"user": "alice", "userId": alice.pk, "text": "Your order shipped", "ok": True}),
    ]
    details = [row["detail"] for row in call_timeline(call=live_call) if row["label"] == "operator.speak"]
    assert details == ["speak by alice: Your order shipped"]


def test_dtmf_and_end(operator_client, live_call, alice, outbox):
    response = operator_client.post(url(live_call.pk, "dtmf"), {"digits": "12#"}, **JSON)
    assert (response.status_code, response.json()) == (200, {"ok": True, "message": "Sent DTMF 12#"})
    response = operator_client.post(url(live_call.pk, "end"), **JSON)
    assert (response.status_code, response.json()) == (200, {"ok": True, "message": "Call ended"})
    assert [r.action for r in outbox] == ["send_dtmf", "hangup_call"]
    assert Call.objects.get(pk=live_call.pk).is_terminal
    assert operator_events(live_call) == [
        ("operator.dtmf", {"user": "alice", "userId": alice.pk, "digits": "12#", "ok": True}),
        ("operator.end", {"user": "alice", "userId": alice.pk, "ok": True}),
    ]
    details = [row["detail"] for row in call_timeline(call=live_call) if row["label"].startswith("operator.")]
    assert details == ["dtmf by alice: 12#", "end by alice"]


@pytest.mark.parametrize(("action", "data", "message"), [
    ("speak", {}, "message required"),
    ("speak", {"text": "   "}, "message required"),
    ("dtmf", {}, "digits required"),
    ("dtmf", {"digits": "12x"}, DTMF_MESSAGE),
])
def test_bad_input_is_400_naming_what_is_wrong(operator_client, live_call, alice, outbox, action, data, message):
    response = operator_client.post(url(live_call.pk, action), data, **JSON)
    assert (response.status_code, response.json()) == (400, {"ok": False, "message": message})
    assert outbox == []
    ((kind, payload),) = operator_events(live_call)
    assert kind == f"operator.{action}" and payload["ok"] is False and payload["error"] == message
    assert payload["user"] == "alice" and payload["userId"] == alice.pk


def test_staff_without_the_permission_gets_403_even_posting_directly(client, looker, live_call, outbox):
    client.force_login(looker)
    response = client.post(url(live_call.pk, "end"), **JSON)
    assert response.status_code == 403 and response.json()["ok"] is False
    assert "act_on_call" in response.json()["message"]
    assert client.post(url(live_call.pk, "speak"), {"text": "Hi"}).status_code == 403  # a plain form post too
    assert outbox == [] and operator_events(live_call) == []
    assert not Call.objects.get(pk=live_call.pk).is_terminal


def test_anonymous_is_sent_to_the_login(client, live_call):
    response = client.post(url(live_call.pk, "end"), **JSON)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert not Call.objects.get(pk=live_call.pk).is_terminal


def test_unknown_call_and_unknown_action_are_404(operator_client, live_call):
    response = operator_client.post(url(uuid.uuid4(), "speak"), {"text": "Hi"}, **JSON)
    assert (response.status_code, response.json()) == (404, {"ok": False, "message": "Call not found"})
    assert operator_client.post(url(live_call.pk, "forward"), **JSON).status_code == 404
    assert operator_client.post(url(live_call.pk, "forward")).status_code == 404
    assert operator_client.post("/admin/console/calls/not-a-uuid/end/", **JSON).status_code == 404
    assert operator_events(live_call) == []


def test_get_is_405(operator_client, live_call):
    response = operator_client.get(url(live_call.pk, "end"))
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert not Call.objects.get(pk=live_call.pk).is_terminal


@pytest.mark.parametrize(("action", "data"), [("speak", {"text": "Hi"}), ("dtmf", {"digits": "1"}), ("end", {})])
def test_an_ended_call_is_409_saying_so(operator_client, live_call, outbox, action, data):
    event_process(event=CallEnded(call_id=str(live_call.pk), reason="hangup-user"))
    response = operator_client.post(url(live_call.pk, action), data, **JSON)
    message = f"Call {live_call.pk} has already ended (hangup-user)"
    assert (response.status_code, response.json()) == (409, {"ok": False, "message": message})
    assert outbox == []
    ((_, payload),) = operator_events(live_call)
    assert payload["ok"] is False and payload["error"] == message


def test_a_call_that_ends_while_the_action_runs_is_409(operator_client, live_call, monkeypatch):
    """The call ends between the endpoint's look and the carrier request: the service's refusal is reported as ended."""
    import calls.services.operator as operator

    real = operator.call_speak_request

    def ended_first(**kwargs):
        event_process(event=CallEnded(call_id=str(live_call.pk), reason="completed"))
        return real(**kwargs)

    monkeypatch.setattr(operator, "call_speak_request", ended_first)
    response = operator_client.post(url(live_call.pk, "speak"), {"text": "Hi"}, **JSON)
    assert response.status_code == 409
    assert response.json()["message"] == f"Call {live_call.pk} has already ended (completed)"


def test_a_call_not_connected_yet_is_409(operator_client, live_call):
    Call.objects.filter(pk=live_call.pk).update(provider_call_id=None)
    response = operator_client.post(url(live_call.pk, "dtmf"), {"digits": "1"}, **JSON)
    assert (response.status_code, response.json()) == (409, {"ok": False, "message": "Call not connected"})


def test_a_carrier_failure_is_502_and_recorded(operator_client, live_call, monkeypatch):
    def refuse(self, **kwargs):
        raise RuntimeError("carrier says no")

    monkeypatch.setattr(mock.MockCarrier, "play_tts", refuse)
    response = operator_client.post(url(live_call.pk, "speak"), {"text": "Hi"}, **JSON)
    assert (response.status_code, response.json()) == (502, {"ok": False, "message": "carrier says no"})
    ((_, payload),) = operator_events(live_call)
    assert payload["ok"] is False and payload["error"] == "carrier says no"
    (row,) = [row for row in call_timeline(call=live_call) if row["label"] == "operator.speak"]
    assert row["detail"] == "speak by alice: Hi (failed: carrier says no)"


def test_the_attempt_is_stored_before_the_carrier_is_asked(operator_client, live_call, monkeypatch):
    seen = []

    def hang_up(self, **kwargs):
        seen.extend(operator_events(live_call))
        raise CarrierError("line dropped")

    monkeypatch.setattr(mock.MockCarrier, "hangup_call", hang_up)
    response = operator_client.post(url(live_call.pk, "end"), **JSON)
    assert response.status_code == 502
    assert [payload["ok"] for _, payload in seen] == [None]  # stored, outcome not known yet
    ((_, payload),) = operator_events(live_call)
    assert payload["ok"] is False and payload["error"] == "line dropped"


def test_an_outcome_for_a_deleted_call_is_logged(live_call, alice, monkeypatch, caplog):
    import calls.services.operator as operator

    def delete_then_speak(**kwargs):
        Call.objects.filter(pk=live_call.pk).delete()
        raise CarrierError("no such call at the carrier")

    monkeypatch.setattr(operator, "call_speak_request", delete_then_speak)
    with caplog.at_level(logging.INFO, logger="calls.operator"), pytest.raises(CarrierError):
        operator_action(call_id=str(live_call.pk), action="speak", user=alice, value="Hi")
    assert "operator alice: operator.speak on call" in caplog.text and "record is gone" in caplog.text


def test_csrf_is_enforced(alice, live_call, outbox):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post(url(live_call.pk, "end"), **JSON)
    assert response.status_code == 403
    assert outbox == [] and operator_events(live_call) == []
    # With the token from a page of the admin (cookie and header, as the widget sends them), it goes through.
    client.get(record_url(live_call.pk))
    token = client.cookies["csrftoken"].value
    response = client.post(url(live_call.pk, "end"), HTTP_X_CSRFTOKEN=token, **JSON)
    assert response.status_code == 200


def test_a_form_post_redirects_back_with_a_message(operator_client, live_call):
    back = record_url(live_call.pk) + "?from=live"
    response = operator_client.post(url(live_call.pk, "dtmf"), {"digits": "9", "next": back})
    assert response.status_code == 302 and response["Location"] == back
    assert [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)] == [("success", "Sent DTMF 9")]

    response = operator_client.post(url(live_call.pk, "dtmf"), {"digits": "x", "next": "https://elsewhere.example/"})
    assert response.status_code == 302 and response["Location"] == record_url(live_call.pk)  # not off-site
    page = operator_client.get(response["Location"])
    assert DTMF_MESSAGE in page.content.decode()

    response = operator_client.post(url(uuid.uuid4(), "end"))
    assert response.status_code == 404  # no record to go back to


def test_the_record_page_has_actions_for_operators_on_live_calls_only(client, alice, looker, live_call):
    client.force_login(alice)
    html = client.get(record_url(live_call.pk)).content.decode()
    assert 'data-call-action="speak"' in html and 'data-call-action="dtmf"' in html and 'data-call-action="end"' in html
    assert f'action="{url(live_call.pk, "end")}"' in html and "calls/console/actions.js" in html
    assert 'data-action-url-template="/admin/console/calls/{call}/{action}/"' in html

    client.force_login(looker)
    html = client.get(record_url(live_call.pk)).content.decode()
    assert "data-call-action" not in html and "calls/console/actions.js" not in html

    client.force_login(alice)
    event_process(event=CallEnded(call_id=str(live_call.pk), reason="completed"))
    html = client.get(record_url(live_call.pk)).content.decode()
    assert "data-call-action" not in html


def test_disabled_voice_calls_are_503(operator_client, live_call, configure):
    configure({"enabled": False})
    response = operator_client.post(url(live_call.pk, "end"), **JSON)
    assert response.status_code == 503 and response.json()["message"].startswith("Voice calls are disabled")
    assert not Call.objects.get(pk=live_call.pk).is_terminal


async def test_through_the_asgi_application(asgi, alice, looker, live_call, outbox):
    """The real ASGI app: a session cookie, the CSRF token from an admin page, then the action (and its refusal for view-only staff)."""
    from asgiref.sync import sync_to_async

    async def log_in(user) -> str:
        client = Client()
        await sync_to_async(client.force_login)(user)
        asgi.cookies.set("sessionid", client.cookies["sessionid"].value)
        page = await asgi.get(record_url(live_call.pk))
        assert page.status_code == 200
        return asgi.cookies["csrftoken"]

    token = await log_in(looker)
    headers = {"Accept": "application/json", "X-CSRFToken": token}
    response = await asgi.post(url(live_call.pk, "dtmf"), data={"digits": "5"}, headers=headers)
    assert response.status_code == 403 and outbox == []

    token = await log_in(alice)
    response = await asgi.post(url(live_call.pk, "dtmf"), data={"digits": "5"}, headers={**headers, "X-CSRFToken": token})
    assert (response.status_code, response.json()) == (200, {"ok": True, "message": "Sent DTMF 5"})
    assert [r.params["digits"] for r in outbox] == ["5"]
    response = await asgi.post(url(live_call.pk, "dtmf"), data={"digits": "5"}, headers={"Accept": "application/json"})
    assert response.status_code == 403  # no token: refused by the CSRF check


def test_an_attempt_without_its_outcome_reads_as_such_in_the_timeline(live_call):
    """The gateway stopped between storing the attempt and its outcome: the timeline does not claim either way."""
    CallEvent.objects.create(call=live_call, type="operator.end", payload={"user": "bob", "userId": 7, "ok": None},
                             occurred_at=live_call.started_at)
    (row,) = [row for row in call_timeline(call=live_call) if row["label"] == "operator.end"]
    assert row["detail"] == "end by bob (no outcome recorded)"


# --- transfer -----------------------------------------------------------------------------------


def test_transfer_hands_the_call_over_and_is_recorded_with_the_user(operator_client, live_call, alice, outbox):
    response = operator_client.post(url(live_call.pk, "transfer"), {"to": " +15550002222 ", "mode": "cold"}, **JSON)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "message": "Call handed to +15550002222: transfer dialing; "
                                                      "the call record shows how it goes"}
    assert [(r.action, r.params["target"]) for r in outbox] == [("transfer_call", "+15550002222")]
    transfer = live_call.transfers.get()
    assert (transfer.requested_by, transfer.status) == ("alice", "dialing")
    assert Call.objects.get(pk=live_call.pk).end_reason == "transferred"
    assert operator_events(live_call) == [
        ("operator.transfer", {"user": "alice", "userId": alice.pk, "to": "+15550002222", "mode": "cold", "summary": "",
                               "transferId": str(transfer.pk), "ok": True}),
    ]
    timeline = {row["label"]: row["detail"] for row in call_timeline(call=live_call)}
    assert timeline["operator.transfer"] == "transfer by alice: cold to +15550002222"
    assert timeline["transfer dialing"] == "cold to +15550002222, asked by alice"


def test_warm_transfer_from_the_console(operator_client, live_call, outbox):
    response = operator_client.post(url(live_call.pk, "transfer"), {
        "to": "sip:desk@pbx.example.com", "mode": "warm", "summary": "Billing question"}, **JSON)
    assert response.status_code == 200 and "warm transfer (the summary first) dialing" in response.json()["message"]
    assert outbox[-1].action == "warm_transfer" and outbox[-1].params["summary"] == "Billing question"


@pytest.mark.parametrize(("data", "message"), [
    ({"to": "front desk"}, "to: 'front desk' is not a transfer target. Expected an E.164 number (+15550001234) or a SIP URI (sip:agent@example.com)"),
    ({}, "to required: the call's route and agent name no transferTo"),
    ({"to": "+15550002222", "mode": "warm"}, "summary required: a warm transfer says it to the person answering first"),
    ({"to": "+15550002222", "mode": "sideways"}, "mode: expected cold or warm, got 'sideways'"),
])
def test_a_bad_transfer_is_400_and_changes_nothing(operator_client, live_call, outbox, data, message):
    response = operator_client.post(url(live_call.pk, "transfer"), data, **JSON)
    assert (response.status_code, response.json()) == (400, {"ok": False, "message": message})
    assert outbox == [] and not live_call.transfers.exists()
    assert not Call.objects.get(pk=live_call.pk).is_terminal
    ((_, payload),) = operator_events(live_call)
    assert payload["ok"] is False and payload["error"] == message


def test_an_ended_call_cannot_be_transferred(operator_client, live_call, outbox):
    event_process(event=CallEnded(call_id=str(live_call.pk), reason="hangup-user"))
    response = operator_client.post(url(live_call.pk, "transfer"), {"to": "+15550002222"}, **JSON)
    message = f"Call {live_call.pk} has already ended (hangup-user)"
    assert (response.status_code, response.json()) == (409, {"ok": False, "message": message})
    assert outbox == [] and not live_call.transfers.exists()


def test_a_carrier_without_warm_transfer_is_409_and_the_call_stays_live(operator_client, live_call, outbox, monkeypatch):
    monkeypatch.setattr(mock.MockCarrier, "supports_warm_transfer", False)
    response = operator_client.post(url(live_call.pk, "transfer"), {
        "to": "+15550002222", "mode": "warm", "summary": "Hi"}, **JSON)
    assert response.status_code == 409
    assert response.json() == {"ok": False, "message": "warm transfer is not supported by mock", "callLive": True}
    assert not Call.objects.get(pk=live_call.pk).is_terminal and not live_call.transfers.exists()


def test_the_record_page_offers_transfer(client, alice, live_call):
    client.force_login(alice)
    html = client.get(record_url(live_call.pk)).content.decode()
    assert 'data-call-action="transfer"' in html and f'action="{url(live_call.pk, "transfer")}"' in html
    assert 'name="mode"' in html and 'name="summary"' in html
