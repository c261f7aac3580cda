"""Actions on a call in a real browser: the record page's widget speaks, sends DTMF, transfers and ends (after a confirmation)."""
from __future__ import annotations

import threading

import pytest
from playwright.sync_api import expect

from calls.models import Call, CallEvent
from calls.services import call_end, call_initiate, event_process
from core.events import CallAnswered
from providers.carriers import mock
from tests.console.conftest import PASSWORD, outside_loop, screenshot
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


def answered_call() -> Call:
    call = call_initiate(to="+15550004444")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    return call


@pytest.fixture
def live_call():
    call = outside_loop(answered_call)
    mock.outbox.clear()
    return call


def record_page(page, call):
    page.goto(f"/admin/calls/call/{call.pk}/change/")
    widget = page.locator("#call-actions")
    expect(widget.locator("h2")).to_have_text("Actions")
    return widget


def sent(action: str) -> list[dict]:
    return [request.params for request in mock.outbox if request.action == action]


def state_of(call) -> str:
    return outside_loop(lambda: Call.objects.get(pk=call.pk).state)


def test_operator_speaks_and_sends_dtmf(console_page, operator, live_call, monkeypatch):
    page = console_page(operator)
    widget = record_page(page, live_call)
    result = widget.locator(".action-result[role=status]")

    # The carrier's answer is held back: while the request is in flight the buttons are off.
    release = threading.Event()
    real_play = mock.MockCarrier.play_tts

    def held_play(self, **kwargs):
        release.wait(10)
        return real_play(self, **kwargs)

    monkeypatch.setattr(mock.MockCarrier, "play_tts", held_play)
    try:
        widget.get_by_label("Message").fill("Your table is ready")
        widget.get_by_label("Message").press("Enter")  # Enter submits, as the button does
        expect(widget.locator("[data-call-action=speak]")).to_be_disabled()
        expect(widget.locator("[data-call-action=end]")).to_be_disabled()
    finally:
        release.set()
    expect(result).to_have_text("Said on the call: Your table is ready")
    expect(widget.locator("[data-call-action=speak]")).to_be_enabled()
    assert [params["text"] for params in sent("play_tts")] == ["Your table is ready"]
    screenshot(page, "call-actions")

    widget.get_by_label("Digits").fill("12#")
    widget.locator("[data-call-action=dtmf]").click()
    expect(result).to_have_text("Sent DTMF 12#")
    assert [params["digits"] for params in sent("send_dtmf")] == ["12#"]

    events = outside_loop(lambda: [(e.type, e.payload["user"], e.payload["ok"]) for e in
                                   CallEvent.objects.filter(call=live_call, type__startswith="operator.")])
    assert events == [("operator.speak", "operator", True), ("operator.dtmf", "operator", True)]
    page.reload()
    expect(page.locator("tr.timeline-event", has_text="speak by operator: Your table is ready")).to_be_visible()


def test_ending_asks_first(console_page, operator, live_call):
    page = console_page(operator)
    widget = record_page(page, live_call)
    end = widget.locator("[data-call-action=end]")
    expect(widget.locator("form[data-call-action-form=end] [data-confirm-box]")).to_be_hidden()  # window.confirm asks instead

    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    end.click()
    wait_until(lambda: asked, "the confirmation to be asked")
    page.evaluate("() => 0")  # the click's handler has run to its end
    expect(widget.locator(".action-result")).to_have_text("")
    assert sent("hangup_call") == [] and state_of(live_call) == "answered"

    page.once("dialog", lambda dialog: dialog.accept())
    end.click()
    expect(widget.locator(".action-result")).to_have_text("Call ended")
    assert state_of(live_call) == "hangup-bot" and len(sent("hangup_call")) == 1
    expect(end).to_be_disabled()  # nothing more to do on this call
    assert "End this call" in asked[0]


def test_transferring_asks_first_then_hands_the_call_over(console_page, operator, live_call):
    page = console_page(operator)
    widget = record_page(page, live_call)
    widget.get_by_label("Transfer to").fill("sip:desk@pbx.example.com")
    widget.get_by_label("Mode").select_option("warm")
    widget.get_by_label("Summary").fill("Billing question")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    widget.locator("[data-call-action=transfer]").click()
    expect(widget.locator(".action-result")).to_have_text(
        "Call handed to sip:desk@pbx.example.com: warm transfer (the summary first) dialing; "
        "the call record shows how it goes")
    assert "Hand this call over" in asked[0]
    assert sent("warm_transfer") == [{"target": "sip:desk@pbx.example.com", "summary": "Billing question",
                                      "transfer_id": sent("warm_transfer")[0]["transfer_id"]}]
    assert state_of(live_call) == "transferred"
    expect(widget.locator("[data-call-action=speak]")).to_be_disabled()  # the gateway is out of the call
    page.reload()
    expect(page.locator("tr.timeline-event", has_text="transfer by operator: warm to sip:desk@pbx.example.com")).to_be_visible()


def test_an_action_on_a_call_that_ended_meanwhile_says_so(console_page, operator, live_call):
    page = console_page(operator)
    widget = record_page(page, live_call)
    outside_loop(call_end, call_id=str(live_call.pk))  # hung up elsewhere after the page loaded
    widget.get_by_label("Message").fill("Are you still there?")
    widget.locator("[data-call-action=speak]").click()
    result = widget.locator(".action-result")
    expect(result).to_have_text(f"Call {live_call.pk} has already ended (hangup-bot)")
    expect(result).to_have_class("action-result action-result-error")
    assert sent("play_tts") == []


def test_without_javascript_the_forms_post_and_come_back(browser_page, browser, live_gateway, operator, live_call):
    # browser_page: Playwright's loop marked for this test (see conftest); this page's context is our own.
    context = browser.new_context(java_script_enabled=False, base_url=live_gateway, viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        widget = record_page(page, live_call)
        widget.locator("[data-call-action=end]").click()  # the box is not ticked: the browser holds the form
        widget.locator("form[data-call-action-form=end] [data-confirm-box]").check()
        widget.locator("[data-call-action=end]").click()
        expect(page.locator(".messagelist .success")).to_have_text("Call ended")
        assert page.url.endswith(f"/admin/calls/call/{live_call.pk}/change/")
        expect(page.locator("#call-actions")).to_have_count(0)  # an ended call has nothing to act on
        assert len(sent("hangup_call")) == 1
    finally:
        context.close()


def test_a_viewer_sees_no_action_buttons(console_page, viewer, live_call):
    page = console_page(viewer)
    page.goto(f"/admin/calls/call/{live_call.pk}/change/")
    expect(page.locator("#content-main")).to_be_visible()
    expect(page.locator("[data-call-action]")).to_have_count(0)
    expect(page.locator("#call-actions")).to_have_count(0)


def test_the_widget_renders_on_any_admin_page(console_page, operator, live_call):
    """What the live calls page does: load actions.js and render the widget into an element of its own."""
    page = console_page(operator)  # the admin's index: no widget, no URL template on it
    page.add_script_tag(url="/static/calls/console/actions.js")
    page.evaluate("""(callId) => {
        const cell = document.createElement("div");
        cell.id = "row-actions";
        document.querySelector("#content-main").prepend(cell);
        window.callActions.render(cell, callId);
        window.callActions.render(cell, callId);  // a second render of the same call keeps the widget
    }""", str(live_call.pk))
    widget = page.locator("#row-actions")
    expect(widget.locator("form")).to_have_count(4)
    widget.locator("input[name=text]").fill("Hold on please")
    widget.locator("[data-call-action=speak]").click()
    expect(widget.locator(".action-result[role=status]")).to_have_text("Said on the call: Hold on please")
    assert [params["text"] for params in sent("play_tts")] == ["Hold on please"]
