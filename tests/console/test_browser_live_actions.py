"""The live page and the action widget together: an operator ends a call from its row and sees it leave."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from calls.models import Call, CallEvent
from tests.console.conftest import outside_loop
from tests.console.test_browser_live import inbound, open_live, post_webhook

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


def test_operator_ends_a_call_from_the_live_page(console_page, operator, configure, live_gateway):
    configure({"inboundPolicy": "open"})
    post_webhook(live_gateway, inbound("mock-in-7101", "call.answered", "in-7101-a"))
    page = open_live(console_page(operator))
    row = page.locator("tr.call-row", has_text="+15550142424")
    expect(row).to_be_visible()
    call_id = row.get_attribute("data-call-id")
    end = row.locator('[data-call-action="end"]')
    expect(end).to_be_visible()

    page.once("dialog", lambda dialog: dialog.dismiss())  # asked first; "no" ends nothing
    end.click()
    expect(row.locator(".action-result")).to_be_empty()
    assert not outside_loop(Call.objects.get, pk=call_id).is_terminal

    page.once("dialog", lambda dialog: dialog.accept())
    end.click()
    expect(row).to_have_count(0)  # ended: it leaves the page
    expect(page.locator("#live-empty")).to_be_visible()
    call = outside_loop(Call.objects.get, pk=call_id)
    assert call.is_terminal
    events = outside_loop(lambda: list(CallEvent.objects.filter(call_id=call_id, type="operator.end").values_list("payload", flat=True)))
    assert [(event["user"], event["ok"]) for event in events] == [("operator", True)]
