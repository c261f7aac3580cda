"""In a browser: the operator opens the media streams from the admin index, then one stream's page."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.console.conftest import outside_loop, screenshot
from tests.console.streams import seed_streams

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]


def test_operator_opens_the_streams_and_a_stream(console_page, operator):
    streams = outside_loop(seed_streams)
    page = console_page(operator)
    page.locator(".app-calls").get_by_role("link", name="Media streams", exact=True).click()
    page.wait_for_url("**/admin/calls/mediastream/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(3)
    telnyx = streams["telnyx"]
    row = rows.filter(has=page.locator(f'span[title="{telnyx.stream_id}"]'))
    expect(row.locator("td.field-dropped")).to_have_text("12")
    lag = telnyx.stats["inboundLagMs"]
    expect(row.locator("td.field-lag")).to_have_text(f"{lag['p50']:g}/{lag['p99']:g} ms")
    open_row = rows.filter(has=page.locator(f'span[title="{streams["open"].stream_id}"]'))
    expect(open_row.locator("td.field-closed")).to_have_text("open")
    expect(open_row.locator("td.field-lag")).to_have_text("—")
    page.locator("#toggle-nav-sidebar").click()  # the whole table in view
    expect(page.locator("#nav-sidebar")).to_be_hidden()
    screenshot(page, "media-streams")

    row.locator("th.field-stream a").click()
    expect(page.locator("table.stream-counters")).to_contain_text("dropped: late")
    expect(page.locator("table.stream-latency tbody tr")).to_have_count(4)
    expect(page.locator("table.stream-latency")).to_contain_text("pacing lateness")
    page.get_by_role("link", name=str(telnyx.call_id)).click()
    expect(page.locator("body")).to_contain_text(telnyx.stream_id)  # the call's record lists its stream
