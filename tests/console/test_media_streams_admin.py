"""Media streams in the admin: read-only list with counters and lag percentiles, filters, a readable detail page,
and the streams of a call on its record page."""
from __future__ import annotations

import re
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from calls.models import MediaStream
from tests.console.streams import seed_streams

pytestmark = pytest.mark.django_db

LIST = "/admin/calls/mediastream/"


@pytest.fixture
def operator(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("operator", "operator@example.com", "pw-streams-5520"))
    return client


@pytest.fixture
def streams():
    return seed_streams()


def result_rows(html: str) -> list[str]:
    body = html.split('id="result_list"', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", row)).split()) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_list_shows_counters_percentiles_and_open_streams(operator, streams):
    response = operator.get(LIST)
    assert response.status_code == 200
    html = response.content.decode()
    rows = result_rows(html)
    assert len(rows) == 3
    twilio, telnyx = streams["twilio"], streams["telnyx"]
    lag = twilio.stats["inboundLagMs"]
    (row,) = [r for r in rows if r.startswith(twilio.stream_id[:8] + "…")]
    assert f" twilio {str(twilio.call_id)[:6]}… " in row
    assert f" stop 6100/6060 0 {lag['p50']:g}/{lag['p99']:g} ms {twilio.stats['pacingLateMs']['p99']:g} ms gw-1:4242" in row
    (row,) = [r for r in rows if r.startswith(telnyx.stream_id[:8])]
    assert " disconnected 2000/1960 12 " in row
    (row,) = [r for r in rows if r.startswith(streams["open"].stream_id[:8])]
    assert " open — — — — — gw-1:4242" in row  # no close reason, no stats yet
    # The call column links to the call's record.
    assert f'href="{reverse("admin:calls_call_change", args=[twilio.call_id])}"' in html


@pytest.mark.parametrize(("query", "expected"), [
    ({"carrier": "telnyx"}, {"telnyx"}),
    ({"state": "open"}, {"open"}),
    ({"state": "closed"}, {"twilio", "telnyx"}),
    ({"close_reason": "stop"}, {"twilio"}),
])
def test_filters(operator, streams, query, expected):
    html = operator.get(LIST, query).content.decode()
    shown = {name for name, stream in streams.items() if stream.stream_id in html}
    assert shown == expected


def test_detail_page_shows_every_counter_and_percentile(operator, streams):
    stream = streams["telnyx"]
    response = operator.get(reverse("admin:calls_mediastream_change", args=[stream.pk]))
    assert response.status_code == 200
    html = unescape(response.content.decode())
    assert 'name="_save"' not in html
    counters = re.search(r'<table class="stream-counters">(.*?)</table>', html, re.S).group(1)
    text = " ".join(re.sub(r"<[^>]+>", " ", counters).split())
    assert text == "counter count frames in 2000 frames out 1960 dropped 12 dropped: late 12 marks acked 6 stt ready 1"
    latency = " ".join(re.sub(r"<[^>]+>", " ", re.search(r'<table class="stream-latency">(.*?)</table>', html, re.S).group(1)).split())
    lag, pacing = stream.stats["inboundLagMs"], stream.stats["pacingLateMs"]
    assert f"inbound lag how far behind real time each inbound frame was handled 2000 {lag['p50']:g} ms {lag['p99']:g} ms {lag['max']:g} ms" in latency
    assert f"pacing lateness how late each outbound frame left against its 20 ms slot 2000 {pacing['p50']:g} ms" in latency
    turn = stream.stats["turnLatencyMs"]
    assert f"turn latency final transcript to the first reply audio frame sent 3 {turn['p50']:g} ms {turn['p99']:g} ms 820 ms" in latency
    assert "turn latency, own share" in latency
    assert "0 min" not in html and "40 s" in html  # its duration


def test_detail_page_of_an_open_stream(operator, streams):
    html = operator.get(reverse("admin:calls_mediastream_change", args=[streams["open"].pk])).content.decode()
    assert "open: the counters are written when the stream closes" in html
    assert "open: the percentiles are written when the stream closes" in html


def test_nothing_to_add_change_or_delete(operator, streams):
    stream = streams["twilio"]
    assert operator.get(reverse("admin:calls_mediastream_add")).status_code == 403
    assert operator.post(reverse("admin:calls_mediastream_change", args=[stream.pk]), {"close_reason": "x"}).status_code == 403
    assert operator.post(reverse("admin:calls_mediastream_delete", args=[stream.pk]), {"post": "yes"}).status_code == 403
    assert MediaStream.objects.get(pk=stream.pk).close_reason == "stop"


def test_the_call_record_lists_its_streams(operator, streams):
    stream = streams["twilio"]
    html = operator.get(reverse("admin:calls_call_change", args=[stream.call_id])).content.decode()
    assert "media streams" in html.lower()
    assert stream.stream_id in html
    assert reverse("admin:calls_mediastream_change", args=[stream.pk]) in html


def test_view_call_is_enough_and_login_is_required(client, django_user_model, streams):
    assert client.get(LIST).status_code == 302
    viewer = django_user_model.objects.create_user("viewer", "viewer@example.com", "pw-streams-5520", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_call", content_type__app_label="calls"))
    client.force_login(viewer)
    assert client.get(LIST).status_code == 200
    assert client.get(reverse("admin:calls_mediastream_change", args=[streams["open"].pk])).status_code == 200
    assert streams["twilio"].stream_id in client.get(reverse("admin:calls_call_change", args=[streams["twilio"].call_id])).content.decode()
    other = django_user_model.objects.create_user("other", "other@example.com", "pw-streams-5520", is_staff=True)
    client.force_login(other)
    assert client.get(LIST).status_code == 403
