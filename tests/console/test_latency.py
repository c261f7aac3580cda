"""The latency dashboard's numbers (buckets, percentiles, filters, parts, outcomes), its page and the calls CSV."""
from __future__ import annotations

import csv
import io
import json
import re
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import AsyncRequestFactory
from django.urls import reverse
from django.utils import timezone

from calls.console import calls_csv, latency
from calls.console.latency import WINDOWS, Filters, dashboard
from calls.console.latency_views import calls_csv_view
from calls.models import CallEvent, CallTurn
from tests.console.latency_seed import TWENTY, TWENTY_PERCENTILES, seed_call, seed_realtime, seed_replies, seed_turns

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
H24, D7 = WINDOWS["24h"], WINDOWS["7d"]


def percentiles(row: dict) -> dict:
    return {key: row[key] for key in ("p50", "p90", "p95", "p99")}


def series(data: dict, key: str) -> dict:
    return next(s for s in data["series"] if s["key"] == key)


def bucket(data: dict, key: str, label: str) -> dict:
    return next(b for b in series(data, key)["buckets"] if b["label"] == label)


def part(data: dict, key: str) -> dict:
    return next(p for p in data["parts"] if p["key"] == key)


# --- aggregation ------------------------------------------------------------------------------


def test_hour_buckets_hold_each_turn_once_with_nearest_rank_percentiles():
    call = seed_call(NOW - timedelta(hours=2))
    seed_turns(call, datetime(2026, 11, 20, 9, 10, tzinfo=UTC), TWENTY)
    seed_turns(call, datetime(2026, 11, 20, 10, 5, tzinfo=UTC), [10, 20, 30])
    seed_turns(call, NOW - timedelta(hours=25), [7000])  # before the window
    seed_turns(call, NOW + timedelta(minutes=1), [8000])  # after now (a clock ahead): not yet
    CallTurn.objects.create(call=call, token="waiting", status="pending")  # not completed: no latency

    data = dashboard(H24, Filters(), now=NOW)

    assert data["labels"][0] == "11-19 11:00" and data["labels"][-1] == "11-20 10:00" and len(data["labels"]) == 24
    continue_turns = series(data, "continue")
    assert percentiles(bucket(data, "continue", "11-20 09:00")) == TWENTY_PERCENTILES
    assert bucket(data, "continue", "11-20 09:00")["count"] == 20
    assert bucket(data, "continue", "11-20 10:00") == {
        "label": "11-20 10:00", "start": "2026-11-20T10:00:00+00:00", "count": 3, "p50": 20, "p90": 30, "p95": 30, "p99": 30}
    assert sum(b["count"] for b in continue_turns["buckets"]) == 23 == continue_turns["overall"]["count"]
    assert bucket(data, "continue", "11-20 08:00") | {"label": "", "start": ""} == {
        "label": "", "start": "", "count": 0, "p50": None, "p90": None, "p95": None, "p99": None}
    assert continue_turns["capped"] is False and data["empty"] is False
    assert series(data, "reply")["overall"]["count"] == 0 and series(data, "realtime")["overall"]["count"] == 0


def test_day_buckets_cover_the_window_in_days():
    call = seed_call(NOW - timedelta(days=6))
    seed_turns(call, NOW - timedelta(days=6), [100, 300])
    seed_turns(call, NOW - timedelta(days=8), [9000])

    data = dashboard(D7, Filters(), now=NOW)

    assert data["labels"] == [f"2026-11-{day}" for day in range(14, 21)]
    assert bucket(data, "continue", "2026-11-14")["count"] == 2
    assert series(data, "continue")["overall"] | {} == {"count": 2, "p50": 100, "p90": 300, "p95": 300, "p99": 300}


def test_replies_realtime_turns_and_a_turns_parts():
    call = seed_call(NOW - timedelta(hours=1))
    at = NOW - timedelta(minutes=10)
    seed_turns(call, at, [1000, 2000], listen_wait=400)
    seed_replies(call, at, TWENTY)
    seed_realtime(call, at, TWENTY)
    # Realtime turns whose latency is missing or nonsense are not counted.
    CallEvent.objects.create(call=call, type="realtime.turn", occurred_at=at, payload={"latencyMs": "fast"})
    CallEvent.objects.create(call=call, type="realtime.turn", occurred_at=at, payload={"latencyMs": -5})
    CallEvent.objects.create(call=call, type="realtime.turn", occurred_at=at, payload=["not", "a", "dict"])

    data = dashboard(H24, Filters(), now=NOW)

    assert percentiles(series(data, "reply")["overall"]) == TWENTY_PERCENTILES
    assert series(data, "realtime")["overall"] == {"count": 20, **TWENTY_PERCENTILES}
    assert part(data, "listen_wait") | {} == {**part(data, "listen_wait"), "count": 2, "p50": 400, "p99": 400}
    assert percentiles(part(data, "first_audio")) == TWENTY_PERCENTILES
    assert percentiles(part(data, "first_text")) == {"p50": 400, "p90": 800, "p95": 850, "p99": 900}
    assert percentiles(part(data, "reply_total")) == {"p50": 1500, "p90": 1900, "p95": 1950, "p99": 2000}
    transcription = part(data, "transcription_final")
    assert transcription["measured"] is False and transcription["count"] == 0 and transcription["p50"] is None
    assert data["responders"] == [{"responder": "llm", "model": "openai/gpt-4o-mini", "count": 20, **TWENTY_PERCENTILES}]


def test_filters_by_route_agent_carrier_and_responder():
    at = NOW - timedelta(minutes=5)
    sales = seed_call(at, provider="twilio", route_key="+15550001000", agent_id="sales")
    support = seed_call(at, provider="telnyx", route_key="+15550002000", agent_id="support")
    seed_turns(sales, at, [100])
    seed_turns(support, at, [900])
    seed_replies(sales, at, [300], responder="llm", model="openai/gpt-4o-mini")
    seed_replies(support, at, [700], responder="command", model="")

    def overall(filters, key="continue"):
        return series(dashboard(H24, filters, now=NOW), key)["overall"]["p50"]

    assert overall(Filters(route="+15550002000")) == 900
    assert overall(Filters(agent="sales")) == 100
    assert overall(Filters(carrier="telnyx")) == 900
    assert overall(Filters(carrier="telnyx"), "reply") == 700
    assert overall(Filters(carrier="plivo")) is None
    # The responder filter narrows the auto-replies only: by responder, model, or the model's provider.
    assert overall(Filters(responder="command"), "reply") == 700
    assert overall(Filters(responder="openai"), "reply") == 300
    assert overall(Filters(responder="openai/gpt-4o-mini"), "reply") == 300
    assert overall(Filters(responder="open"), "reply") is None  # not a prefix match on any text
    assert series(dashboard(H24, Filters(responder="command"), now=NOW), "continue")["overall"]["count"] == 2
    outcomes = dashboard(H24, Filters(carrier="twilio"), now=NOW)["outcomes"]
    assert outcomes["total"] == 1


def test_calls_by_outcome_per_bucket():
    seed_call(datetime(2026, 11, 20, 9, 1, tzinfo=UTC))
    seed_call(datetime(2026, 11, 20, 9, 2, tzinfo=UTC))
    seed_call(datetime(2026, 11, 20, 9, 3, tzinfo=UTC), state="no-answer", end_reason="no-answer")
    seed_call(datetime(2026, 11, 20, 10, 1, tzinfo=UTC), state="listening", end_reason="")
    seed_call(datetime(2026, 11, 20, 10, 2, tzinfo=UTC), state="busy", end_reason="busy")
    seed_call(NOW - timedelta(days=2))  # outside the window

    outcomes = dashboard(H24, Filters(), now=NOW)["outcomes"]

    assert outcomes["outcomes"] == ["completed", "busy", "no-answer", "in progress"]
    rows = {row["label"]: row for row in outcomes["rows"]}
    assert rows["11-20 09:00"] == {"label": "11-20 09:00", "counts": [2, 0, 1, 0], "total": 3}
    assert rows["11-20 10:00"]["counts"] == [0, 1, 0, 1]
    assert outcomes["total"] == 5 and len(outcomes["rows"]) == 24


def test_no_data_is_an_empty_dashboard():
    data = dashboard(WINDOWS["30d"], Filters(route="+15550001000"), now=NOW)
    assert data["empty"] is True and len(data["labels"]) == 30
    assert all(s["overall"] == {"count": 0, "p50": None, "p90": None, "p95": None, "p99": None} for s in data["series"])
    assert data["outcomes"]["total"] == 0 and data["outcomes"]["outcomes"] == [] and data["responders"] == []
    json.dumps(data)  # embeddable as it is


def test_rows_past_the_cap_are_left_out_oldest_first(monkeypatch):
    monkeypatch.setattr(latency, "MAX_ROWS", 3)
    call = seed_call(NOW - timedelta(hours=3))
    seed_turns(call, NOW - timedelta(hours=2), [1, 2])
    seed_turns(call, NOW - timedelta(minutes=5), [500, 600, 700])

    continue_turns = series(dashboard(H24, Filters(), now=NOW), "continue")

    assert continue_turns["capped"] is True
    assert continue_turns["overall"] == {"count": 3, "p50": 600, "p90": 700, "p95": 700, "p99": 700}


# --- the page ---------------------------------------------------------------------------------


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("desk", "desk@example.com", "desk-pw-5521", is_staff=True)


@pytest.fixture
def viewer_client(client, staff_user):
    staff_user.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
    client.force_login(staff_user)
    return client


def embedded(html: str) -> dict:
    found = re.search(r'<script id="latency-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def table_rows(html: str, table_id: str) -> list[list[str]]:
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S).group(1)
    return [[re.sub(r"<.*?>", "", cell).strip() for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]


def test_the_page_draws_and_tabulates_the_same_numbers(viewer_client):
    at = timezone.now() - timedelta(seconds=5)
    call = seed_call(at)
    seed_turns(call, at, TWENTY)
    seed_replies(call, at, [300, 400])

    response = viewer_client.get(reverse("console:latency"), {"window": "24h", "carrier": "twilio"})
    html = response.content.decode()

    assert response.status_code == 200
    data = embedded(html)
    overall = series(data, "continue")["overall"]
    assert percentiles(overall) == TWENTY_PERCENTILES
    rows = table_rows(html, "table-continue")
    assert rows[0] == ["Bucket", "Turns", "p50", "p90", "p95", "p99"]
    assert rows[-1] == ["whole window", "20", "500", "900", "950", "1000"]
    assert len(rows) == 3  # the header, the one bucket with turns, the whole window
    assert 'id="chart-continue"' in html and 'id="chart-reply"' in html and 'id="chart-outcomes"' in html
    assert "calls/vendor/chartjs/chart.umd.min.js" in html and "calls/console/latency.js" in html
    assert "No realtime turns in this window." in html and 'id="chart-realtime"' not in html
    parts = {row[0].split(" (")[0]: row[1:] for row in table_rows(html, "table-parts")[1:]}
    assert parts["transcription final"] == ["not measured"]
    assert parts["first audio out"] == ["2", "300", "400", "400", "400"]
    assert 'href="/admin/console/calls.csv?window=24h&amp;carrier=twilio"' in html


def test_an_empty_window_shows_empty_states(viewer_client):
    html = viewer_client.get(reverse("console:latency"), {"window": "7d"}).content.decode()
    assert "No completed turns in this window." in html
    assert "No calls started in this window." in html
    assert "No completed continue turns in this window." in html
    assert "<canvas" not in html


@pytest.mark.parametrize("params, message", [
    ({"window": "9y"}, "Window: Select a valid choice. 9y is not one of the available choices."),
    ({"route": "+1" * 20}, "Route: Ensure this value has at most 16 characters (it has 40)."),
    ({"agent": "a\x00b"}, "Agent: Null characters are not allowed."),
])
def test_bad_parameters_are_named_on_the_page(viewer_client, params, message):
    response = viewer_client.get(reverse("console:latency"), params)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html and 'id="latency-problems"' in html and "latency-data" not in html
    csv_response = viewer_client.get(reverse("console:calls-csv"), params)
    assert csv_response.status_code == 400 and message in csv_response.content.decode()


def test_staff_without_view_call_get_403_and_no_console_row(client, staff_user):
    client.force_login(staff_user)
    assert client.get(reverse("console:latency")).status_code == 403
    assert client.get(reverse("console:calls-csv")).status_code == 403
    assert reverse("console:latency") not in client.get(reverse("admin:index")).content.decode()


def test_anonymous_is_sent_to_the_login(client):
    response = client.get(reverse("console:latency"))
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert client.get(reverse("console:calls-csv")).status_code == 302


def test_the_admin_index_and_call_list_link_the_pages(viewer_client):
    assert reverse("console:latency") in viewer_client.get(reverse("admin:index")).content.decode()
    call_list = viewer_client.get(reverse("admin:calls_call_changelist")).content.decode()
    assert f'{reverse("console:calls-csv")}?window=24h' in call_list


# --- the CSV ----------------------------------------------------------------------------------


def read_csv(response) -> list[dict]:
    assert response.streaming
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_csv_has_one_row_per_call_with_its_turn_latencies(viewer_client):
    at = timezone.now() - timedelta(hours=1)
    call = seed_call(at, agent_id="sales")
    seed_turns(call, at + timedelta(seconds=10), [300])
    seed_turns(call, at + timedelta(seconds=20), [100, 200])
    seed_replies(call, at + timedelta(seconds=25), [700, 500])
    seed_realtime(call, at + timedelta(seconds=26), [250])
    quiet = seed_call(at + timedelta(minutes=1), state="no-answer", end_reason="no-answer")
    seed_call(timezone.now() - timedelta(days=3))  # outside the 24 hours

    response = viewer_client.get(reverse("console:calls-csv"), {"window": "24h"})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="calls-24h-')
    rows = read_csv(response)
    assert [row["call_id"] for row in rows] == [str(call.pk), str(quiet.pk)]
    first = rows[0]
    assert first["started_at"] == call.started_at.isoformat() and first["duration_s"] == "28.0"
    assert (first["direction"], first["from"], first["to"], first["route"]) == (
        "inbound", "'+15557770001", "'+15550001000", "'+15550001000")
    assert (first["agent"], first["carrier"], first["state"], first["end_reason"]) == ("sales", "twilio", "completed", "completed")
    assert (first["continue_turns"], first["continue_p50_ms"], first["continue_max_ms"]) == ("3", "200", "300")
    assert first["continue_latencies_ms"] == "300 100 200"  # in the order they happened
    assert (first["replies"], first["reply_first_audio_p50_ms"], first["reply_first_audio_max_ms"]) == ("2", "500", "700")
    assert first["reply_first_audio_ms"] == "700 500"
    assert (first["realtime_turns"], first["realtime_latencies_ms"]) == ("1", "250")
    assert (rows[1]["continue_turns"], rows[1]["continue_p50_ms"], rows[1]["end_reason"]) == ("0", "", "no-answer")


def test_csv_cells_cannot_become_formulas(viewer_client):
    at = timezone.now() - timedelta(minutes=30)
    seed_call(at, from_number="=HYPERLINK(\"x\")", agent_id="@SUM(A1)", route_key="-2+3", provider="\tx")
    seed_call(at + timedelta(seconds=1), agent_id="\rcr")

    rows = read_csv(viewer_client.get(reverse("console:calls-csv")))

    assert rows[0]["from"] == "'=HYPERLINK(\"x\")"
    assert (rows[0]["agent"], rows[0]["route"], rows[0]["carrier"]) == ("'@SUM(A1)", "'-2+3", "'\tx")
    assert rows[1]["agent"] == "'\rcr"
    assert calls_csv.safe_cell("plain") == "plain" and calls_csv.safe_cell(None) == "" and calls_csv.safe_cell(-1) == "'-1"


def test_csv_streams_calls_a_chunk_at_a_time_each_once(viewer_client, monkeypatch):
    monkeypatch.setattr(calls_csv, "CHUNK", 2)
    at = timezone.now() - timedelta(hours=2)
    calls = [seed_call(at) for _ in range(3)] + [seed_call(at + timedelta(seconds=n)) for n in (1, 2)]
    for call in calls:
        seed_turns(call, at + timedelta(seconds=5), [40])

    response = viewer_client.get(reverse("console:calls-csv"), {"window": "24h"})
    pieces = list(response.streaming_content)

    assert len(pieces) == 4  # the header, then three chunks of at most two calls
    rows = list(csv.DictReader(io.StringIO(b"".join(pieces).decode())))
    assert sorted(row["call_id"] for row in rows) == sorted(str(call.pk) for call in calls)
    assert [row["call_id"] for row in rows[3:]] == [str(calls[3].pk), str(calls[4].pk)]
    assert all(row["continue_latencies_ms"] == "40" for row in rows)


def test_csv_follows_the_filters(viewer_client):
    at = timezone.now() - timedelta(minutes=20)
    twilio = seed_call(at, provider="twilio", agent_id="sales")
    seed_call(at, provider="telnyx", agent_id="sales")
    seed_call(at, provider="twilio", agent_id="support")

    rows = read_csv(viewer_client.get(reverse("console:calls-csv"), {"carrier": "twilio", "agent": "sales"}))

    assert [row["call_id"] for row in rows] == [str(twilio.pk)]
    assert read_csv(viewer_client.get(reverse("console:calls-csv"), {"route": "+15550009999"})) == []


@pytest.mark.django_db(transaction=True)
async def test_csv_under_asgi_streams_a_chunk_at_a_time(monkeypatch, django_user_model):
    """Served by the gateway (ASGI), the body is an async stream: Django would read a plain iterator whole first."""
    monkeypatch.setattr(calls_csv, "CHUNK", 2)

    def prepare():
        at = timezone.now() - timedelta(hours=1)
        calls = [seed_call(at + timedelta(seconds=n)) for n in range(5)]
        return django_user_model.objects.create_superuser("boss", "boss@example.com", "boss-pw-8812"), calls

    user, calls = await sync_to_async(prepare)()
    request = AsyncRequestFactory().get(reverse("console:calls-csv"), {"window": "24h"})
    request.user = user

    try:
        response = await sync_to_async(calls_csv_view)(request)
        assert response.is_async
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "must consume synchronous iterators" fallback
            pieces = [piece async for piece in response]
    finally:
        # The chunks were read on the sync_to_async worker thread: close its connection there.
        await sync_to_async(connections.close_all)()

    assert len(pieces) == 4  # the header, then three chunks of at most two calls
    rows = list(csv.DictReader(io.StringIO(b"".join(pieces).decode())))
    assert [row["call_id"] for row in rows] == [str(call.pk) for call in calls]
