"""The live calls page in a real browser: a call appears within a second of its webhook, its words
arrive line by line, it leaves when it ends; a view-only user gets no action widgets."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from calls.services import call_end
from tests.conftest import events_body
from tests.console.conftest import outside_loop, screenshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


def open_live(page):
    page.goto("/admin/console/live/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")  # the socket is open
    return page


def post_webhook(base_url: str, *events: dict) -> None:
    response = httpx.post(f"{base_url}/voice/webhook", content=events_body(*events), timeout=10)
    assert response.status_code == 200, response.text


def inbound(call_id: str, event: str, key: str, **fields) -> dict:
    return {"type": event, "callId": call_id, "providerCallId": call_id, "direction": "inbound",
            "from": "+15550142424", "to": "+15550100000", "id": key, **fields}


def test_a_call_appears_speaks_and_leaves(console_page, operator, configure, live_gateway):
    configure({"inboundPolicy": "open"})
    page = open_live(console_page(operator))
    expect(page.locator("#live-empty")).to_be_visible()
    expect(page.locator("#live-empty")).to_have_text("No calls in progress.")

    post_webhook(live_gateway, inbound("mock-in-7001", "call.answered", "in-7001-a"))
    answered = time.monotonic()
    row = page.locator("tr.call-row", has_text="+15550142424")
    expect(row).to_be_visible(timeout=1000)  # within a second of the webhook's answer
    seen_after = time.monotonic() - answered
    assert seen_after < 1.0, seen_after
    expect(page.locator("#live-empty")).to_be_hidden()
    expect(row.locator("td.direction")).to_have_text("inbound")
    expect(row.locator("td.carrier")).to_have_text("mock")
    duration = row.locator("td.duration")
    expect(duration).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(duration).not_to_have_text(duration.inner_text())  # it ticks, with no message from the server
    call_id = row.get_attribute("data-call-id")

    post_webhook(live_gateway, inbound("mock-in-7001", "call.speech", "in-7001-s", transcript="I'd like to book a table."))
    line = page.locator(f'tr.call-transcript[data-call-id="{call_id}"] li.line')
    expect(line.filter(has_text="I'd like to book a table.")).to_be_visible(timeout=1000)
    expect(line.last.locator(".speaker")).to_have_text("Caller")
    screenshot(page, "live-calls")

    outside_loop(call_end, call_id=call_id)
    expect(row.locator("td.state")).to_contain_text("hangup-bot")  # shown as ended a moment
    expect(row).to_have_count(0)
    expect(page.locator("#live-empty")).to_be_visible()


def test_a_viewer_sees_the_calls_but_no_action_widgets(console_page, viewer, configure, live_gateway):
    configure({"inboundPolicy": "open"})
    post_webhook(live_gateway, inbound("mock-in-7002", "call.answered", "in-7002-a"))
    page = open_live(console_page(viewer))
    row = page.locator("tr.call-row", has_text="+15550142424")
    expect(row).to_be_visible()  # rendered from the page's own data, then the socket's snapshot
    expect(page.locator("td.actions")).to_have_count(0)
    expect(page.locator("[data-call-action]")).to_have_count(0)
    expect(page.locator("#live-calls thead th")).not_to_contain_text(["Actions"])


def test_the_operator_gets_an_actions_column(console_page, operator, live_gateway):
    page = open_live(console_page(operator))
    expect(page.locator("#live-calls thead th").last).to_have_text("Actions")
