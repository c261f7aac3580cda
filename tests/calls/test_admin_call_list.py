"""The landing page, the call list's columns and filter, a failed call's error, empty inlines, and the allowlist's notation."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from calls.admin import CallAdmin
from calls.formatting import duration as human_duration
from calls.models import Call
from calls.services import call_end, call_initiate, event_process
from core.errors import CallFailed
from core.events import CallAnswered, CallEnded
from providers.carriers import mock
from routing.models import AllowedCaller

pytestmark = pytest.mark.django_db(transaction=True)
CALLS = "/admin/calls/call/"


@pytest.fixture
def staff(client, django_user_model, configure):
    configure({"maxConcurrentCalls": 5})
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def refused_dial(monkeypatch, message: str) -> Call:
    def refuse(self, dial):
        raise RuntimeError(message)

    monkeypatch.setattr(mock.MockCarrier, "initiate_call", refuse)
    with pytest.raises(CallFailed) as info:
        call_initiate(to="+15550001111")
    monkeypatch.undo()
    return Call.objects.get(pk=info.value.call_id)


def test_the_site_root_is_a_landing_page_with_links(client, staff):
    page = client.get("/")
    html = page.content.decode()
    assert page.status_code == 200
    for href in ("/admin/", "/admin/console/live/", "/admin/console/setup/", "/healthz", "/readyz",
                 "/voice/tools/voice_call.json"):
        assert f'href="{href}"' in html
    assert "README.md" in html
    assert 'href="/">View site' in staff.get("/admin/").content.decode().replace("\n", "")


def test_landing_page_needs_no_login_and_no_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert client.get("/").status_code == 200


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (45.9, "45s"), (64, "1m 04s"), (3600 + 3 * 60 + 9, "1h 03m 09s")])
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert human_duration(seconds) == text


def test_call_list_short_ids_durations_and_live_filter(staff):
    ended = call_initiate(to="+15550001111")
    event_process(event=CallAnswered(call_id=str(ended.pk)))
    answered = Call.objects.get(pk=ended.pk).answered_at
    Call.objects.filter(pk=ended.pk).update(answered_at=answered - timedelta(seconds=64))
    event_process(event=CallEnded(call_id=str(ended.pk), reason="completed"))
    Call.objects.filter(pk=ended.pk).update(ended_at=answered)
    live = call_initiate(to="+15550002222")
    event_process(event=CallAnswered(call_id=str(live.pk)))
    html = staff.get(CALLS).content.decode()
    assert f'<span class="call-id" title="{ended.pk}">{str(ended.pk)[:8]}</span>' in html
    assert f">{ended.pk}<" not in html  # the full id only in the title
    assert "1m 04s" in html
    live_only = staff.get(CALLS, {"live": "yes"}).content.decode()
    assert str(live.pk)[:8] in live_only and str(ended.pk)[:8] not in live_only
    ended_only = staff.get(CALLS, {"live": "no"}).content.decode()
    assert str(ended.pk)[:8] in ended_only and str(live.pk)[:8] not in ended_only
    duration_column = str(list(CallAdmin.list_display).index("duration"))
    shortest_first = staff.get(CALLS, {"o": duration_column}).content.decode()
    assert shortest_first.index(str(live.pk)[:8]) < shortest_first.index(str(ended.pk)[:8])  # a few seconds, then 1m 04s
    longest_first = staff.get(CALLS, {"o": "-" + duration_column}).content.decode()
    assert longest_first.index(str(ended.pk)[:8]) < longest_first.index(str(live.pk)[:8])


def test_search_takes_a_short_or_full_id(staff):
    first = call_initiate(to="+15550001111")
    second = call_initiate(to="+15550002222")
    for term in (str(first.pk)[:8], str(first.pk), first.pk.hex):
        html = staff.get(CALLS, {"q": term}).content.decode()
        assert str(first.pk)[:8] in html and str(second.pk)[:8] not in html, term


def test_a_refused_dial_shows_its_error_in_the_list_and_on_its_page(staff, monkeypatch):
    long_error = "21211 The 'To' number +15550001111 is not a valid phone number. " + "More detail from the carrier. " * 5
    call = refused_dial(monkeypatch, long_error)
    assert call.last_error == long_error
    listing = staff.get(CALLS).content.decode()
    assert f'<span class="call-error" title="{long_error.replace("&#x27;", "")}' not in listing  # escaped below
    assert "21211 The &#x27;To&#x27; number" in listing and "…</span>" in listing
    page = staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    error_box = page[page.index('id="call-error"'):]
    assert error_box.split("</p>")[0].count("More detail from the carrier.") == 5
    assert "This call ended as failed: 21211" in error_box


def test_a_failed_end_without_a_reason_from_the_carrier_says_so(staff):
    call = call_initiate(to="+15550001111")
    event_process(event=CallEnded(call_id=str(call.pk), reason="failed"))
    call.refresh_from_db()
    assert (call.state, call.end_reason) == ("failed", "failed")
    assert call.last_error.startswith("The carrier ended the call as failed and gave no reason")
    assert "gave no reason" in staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()


def test_a_failed_end_keeps_the_carriers_words(staff):
    call = call_initiate(to="+15550001111")
    event_process(event=CallEnded(call_id=str(call.pk), reason="failed", detail="SIP response 404"))
    call.refresh_from_db()
    assert call.last_error == "The carrier ended the call as failed: SIP response 404."
    assert "failed: SIP response 404" in staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()


def test_a_completed_call_has_no_error(staff):
    call = call_initiate(to="+15550001111")
    event_process(event=CallEnded(call_id=str(call.pk), reason="completed"))
    call.refresh_from_db()
    assert call.last_error == ""
    assert 'id="call-error"' not in staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()


def test_ending_a_call_for_an_error_keeps_the_error(staff):
    call = call_initiate(to="+15550001111")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    call_end(call_id=str(call.pk), reason="error", error="Realtime connection failed")
    call.refresh_from_db()
    assert (call.state, call.last_error) == ("error", "Realtime connection failed")
    assert "This call ended as error: Realtime connection failed" in staff.get(
        reverse("admin:calls_call_change", args=[call.pk])).content.decode()


def test_empty_inlines_say_so(staff):
    call = call_initiate(to="+15550001111")
    html = staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    for text in ("No transcript yet.", "No turns.", "No automatic replies.", "No media streams.", "No transfers.",
                 "No recordings."):
        assert text in html


@pytest.mark.parametrize("notation", ["+1 (555) 000-3333", "+1 555-000-3333", "0015550003333", "+1.555.000.3333",
                                      " +15550003333 "])
def test_allowlist_reads_common_notations_and_stores_e164(staff, notation):
    response = staff.post(reverse("admin:routing_allowedcaller_add"), {"number": notation, "label": "Bob", "enabled": "on"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AllowedCaller.objects.get().number == "+15550003333"


@pytest.mark.parametrize(("notation", "stored"), [
    ("+44 (0)20 7946 0000", "+442079460000"), ("+49 (0) 30 1234567", "+49301234567"),
    ("0044 (0)20 7946 0000", "+442079460000"), ("+39 06 1234 5678", "+390612345678"),  # Italy keeps its 0
])
def test_allowlist_drops_the_bracketed_trunk_zero_only(staff, notation, stored):
    response = staff.post(reverse("admin:routing_allowedcaller_add"), {"number": notation, "enabled": "on"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AllowedCaller.objects.get().number == stored


@pytest.mark.parametrize(("notation", "message"), [
    ("1.555.000.3333", "1.555.000.3333 has no country code marked: write a + before it, e.g. +15550003333"),
    ("555-1234", "555-1234 has no country code marked"),
    ("+1 555 CALL-NOW", "+1 555 CALL-NOW is not a phone number: only digits, a leading +, spaces, dashes, dots and brackets"),
    ("+0123", "+0123 is not an international number: after the + come the country code (not starting with 0)"),
    ("+1234567890123456", "15 digits at most"),
])
def test_allowlist_refuses_what_it_cannot_read_and_says_how_to_write_it(staff, notation, message):
    response = staff.post(reverse("admin:routing_allowedcaller_add"), {"number": notation, "enabled": "on"})
    html = response.content.decode().replace("&#x27;", "'")
    assert response.status_code == 200
    assert message in html
    assert "Enter the number in international form, with its country code: +15550003333" in html
    assert not AllowedCaller.objects.exists()


def test_allowlist_duplicate_in_another_notation_is_refused(staff):
    AllowedCaller.objects.create(number="+15550003333")
    response = staff.post(reverse("admin:routing_allowedcaller_add"), {"number": "+1 (555) 000-3333", "enabled": "on"})
    assert response.status_code == 200 and "already exists" in response.content.decode()


def test_config_allow_from_is_shown_beside_the_admin_allowlist(staff, configure):
    configure({"inboundPolicy": "allowlist", "allowFrom": ["+15550001111", "+15550002222"]})
    AllowedCaller.objects.create(number="+15550002222", label="Both")
    html = staff.get(reverse("admin:routing_allowedcaller_changelist")).content.decode()
    table = html[html.index('id="config-callers"'):]
    assert "+15550001111</td><td>no" in table and "+15550002222</td><td>yes" in table
    configure({"allowFrom": []})
    assert "allowFrom</code> is empty" in staff.get(reverse("admin:routing_allowedcaller_changelist")).content.decode()
