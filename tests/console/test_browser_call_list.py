"""In a browser at 1366x768: the call list fits the window, ids stay on one line, a failed call's error is in its row."""
from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import expect

from tests.console.conftest import outside_loop

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]
LONG_ERROR = ("21211 The 'To' number +15550009999 is not a valid phone number, or the carrier refused it "
              "for a reason it keeps to itself; see the carrier's debugger for the details of this request.")


def some_calls():
    from calls.clock import now
    from calls.models import Call

    start = now() - timedelta(minutes=5)
    common = {"provider": "twilio", "from_number": "+15550001234"}
    rows = [
        Call(direction="outbound", mode="conversation", to_number="+15550009999", state="failed", end_reason="failed",
             last_error=LONG_ERROR, started_at=start, ended_at=start + timedelta(seconds=2), **common),
        Call(direction="outbound", mode="notify", to_number="+15550002222", state="hangup-user", end_reason="hangup-user",
             started_at=start, answered_at=start + timedelta(seconds=5), ended_at=start + timedelta(seconds=69), **common),
        Call(direction="inbound", mode="conversation", to_number="+15550001234", state="listening",
             started_at=start, answered_at=start + timedelta(seconds=3), provider="twilio", from_number="+442079460000"),
        Call(direction="outbound", mode="conversation", to_number="+15550003333", state="error", end_reason="error",
             last_error="Realtime session lost: " + "connection reset by peer " * 6, started_at=start,
             answered_at=start, ended_at=start + timedelta(seconds=40), **common),
    ]
    for row in rows:
        row.save()
    return rows


def test_the_call_list_fits_1366_pixels(console_page, operator):
    calls = outside_loop(some_calls)
    page = console_page(operator, width=1366, height=768)
    page.goto("/admin/calls/call/")
    expect(page.locator("#result_list tbody tr")).to_have_count(len(calls))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    table_right = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
    filters_left = page.evaluate("document.querySelector('#changelist-filter').getBoundingClientRect().left")
    assert table_right <= filters_left  # every column in view, none behind the filters
    assert page.evaluate("(() => { const box = document.querySelector('#changelist .results');"
                         " return box.scrollWidth <= box.clientWidth; })()")  # nothing to scroll sideways to
    line_heights = page.evaluate("""() => [...document.querySelectorAll('#result_list .call-id')].map(
        el => el.getClientRects().length)""")
    assert line_heights == [1] * len(calls)  # each id on one line
    failed = page.locator("#result_list tr", has=page.locator(f'span[title="{calls[0].pk}"]'))
    expect(failed.locator(".field-error .call-error")).to_have_attribute("title", LONG_ERROR)
    expect(failed.locator(".field-state")).to_have_text("failed")
    ended = page.locator("#result_list tr", has=page.locator(f'span[title="{calls[1].pk}"]'))
    expect(ended.locator(".field-duration")).to_have_text("1m 04s")
    page.locator(f'span[title="{calls[0].pk}"]').click()
    expect(page.locator("#call-error")).to_contain_text("This call ended as failed: 21211 The 'To' number")
