"""The latency page in a browser: the shipped Chart.js draws the seeded numbers, and the tables show them too."""
from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.console.conftest import outside_loop, screenshot
from tests.console.latency_seed import TWENTY, seed_call, seed_realtime, seed_replies, seed_turns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("browser")]

CHART_DATA = """canvas => {
  const chart = Chart.getChart(canvas);
  return chart && {type: chart.config.type, labels: chart.data.labels,
                   datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data}))};
}"""


EARLIER = {hours: [300 + 40 * hours, 450 + 25 * hours, 700 + 30 * hours] for hours in range(2, 12, 2)}


def seed() -> str:
    """A call with 20 turns (50…1000 ms) 5 s ago, replies and realtime turns; earlier hours' turns; the bucket's label."""
    at = timezone.now() - timedelta(seconds=5)
    call = seed_call(at - timedelta(minutes=1), agent_id="sales")
    seed_turns(call, at, TWENTY)
    seed_replies(call, at, [200, 300, 400, 600])
    seed_realtime(call, at, [150, 250])
    seed_call(at, state="no-answer", end_reason="no-answer", agent_id="sales")
    for hours, latencies in EARLIER.items():
        seed_turns(seed_call(at - timedelta(hours=hours), agent_id="sales"), at - timedelta(hours=hours), latencies)
    return timezone.localtime(at).strftime("%m-%d %H:00")


def cells(page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_the_charts_are_drawn_with_the_tables_numbers(console_page, operator):
    label = outside_loop(seed)
    page = console_page(operator)
    page.locator("#console-pages").get_by_role("link", name="Latency", exact=True).click()
    page.wait_for_url("**/admin/console/latency/")
    expect(page.locator("body")).to_have_attribute("data-charts-drawn", "true")

    continue_chart = page.locator("#chart-continue").evaluate(CHART_DATA)
    assert continue_chart["type"] == "line" and len(continue_chart["labels"]) == 24
    index = continue_chart["labels"].index(label)
    drawn = {d["label"]: d["data"][index] for d in continue_chart["datasets"]}
    assert drawn == {"p50": 500, "p90": 900, "p95": 950, "p99": 1000}
    assert sum(d["data"].count(None) for d in continue_chart["datasets"]) == 4 * (24 - 1 - len(EARLIER))  # gaps
    row = page.locator("#table-continue tbody tr", has_text=label)
    assert cells(row, "td") == [label, "20", "500", "900", "950", "1000"]
    assert cells(page, "#table-continue tfoot td")[0] == str(20 + 3 * len(EARLIER))
    assert page.locator("#table-continue tbody tr").count() == 1 + len(EARLIER)

    reply_chart = page.locator("#chart-reply").evaluate(CHART_DATA)
    assert {d["label"]: [v for v in d["data"] if v is not None] for d in reply_chart["datasets"]} == {
        "p50": [300], "p90": [600], "p95": [600], "p99": [600]}
    assert cells(page, "#table-reply tfoot td") == ["4", "300", "600", "600", "600"]
    assert cells(page, "#table-realtime tfoot td") == ["2", "150", "250", "250", "250"]

    parts_chart = page.locator("#chart-parts").evaluate(CHART_DATA)
    assert parts_chart["labels"] == ["listen wait", "responder first text", "first audio out", "reply done"]
    expect(page.locator("#table-parts tr[data-part=transcription_final]")).to_contain_text("not measured")

    outcomes_chart = page.locator("#chart-outcomes").evaluate(CHART_DATA)
    totals = {d["label"]: sum(d["data"]) for d in outcomes_chart["datasets"]}
    assert totals == {"completed": 1 + len(EARLIER), "no-answer": 1}
    screenshot(page, "latency")

    # The CSV link, downloaded from the gateway with the page's session: one row per call of the window.
    csv_response = page.request.get(page.locator("#latency-csv").get_attribute("href"))
    assert csv_response.ok and csv_response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(csv_response.text())))
    assert len(rows) == 2 + len(EARLIER)
    assert sorted(row["continue_turns"] for row in rows) == ["0", "20"] + ["3"] * len(EARLIER)

    # Filtered to a route without calls: the empty states, no chart.
    page.fill("#id_route", "+15559999999")
    page.click("#latency-filters input[type=submit]")
    expect(page.locator("#latency-empty")).to_have_text("No completed turns in this window for these filters.")
    expect(page.locator("#outcomes-empty")).to_be_visible()
    assert page.locator("canvas").count() == 0


def test_a_bad_window_is_named_on_the_page(console_page, viewer):
    page = console_page(viewer)
    response = page.goto("/admin/console/latency/?window=forever")
    assert response.status == 400
    expect(page.locator("#latency-problems")).to_contain_text("Window: Select a valid choice. forever is not one")
