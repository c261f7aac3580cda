"""Admin pages (calls read-only, routes and allowlist editable with validation) and health endpoints."""
from __future__ import annotations

import pytest
from django.urls import reverse

from calls.models import Call
from calls.services import call_initiate, event_process
from core.events import CallAnswered, CallSpeech
from routing.models import AllowedCaller, NumberRoute

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def test_call_list_and_filters(staff, configure):
    configure({"maxConcurrentCalls": 5, "inboundPolicy": "open"})
    outbound = call_initiate(to="+15550001111")
    event_process(event=CallAnswered(call_id=str(outbound.pk)))
    event_process(event=CallAnswered(call_id="CA-in", provider_call_id="CA-in", direction="inbound", from_number="+15557777777"))
    url = reverse("admin:calls_call_changelist")
    page = staff.get(url)
    assert page.status_code == 200
    assert str(outbound.pk) in page.content.decode()
    inbound_only = staff.get(url, {"direction": "inbound"}).content.decode()
    assert "+15557777777" in inbound_only and str(outbound.pk) not in inbound_only
    by_state = staff.get(url, {"state": "answered"}).content.decode()
    assert str(outbound.pk) in by_state
    assert staff.get(url, {"provider": "mock"}).status_code == 200
    assert str(outbound.pk) in staff.get(url, {"started_at__gte": "2000-01-01 00:00:00+00:00"}).content.decode()
    assert str(outbound.pk) not in staff.get(url, {"started_at__lt": "2000-01-01 00:00:00+00:00"}).content.decode()


def test_call_detail_is_read_only_with_transcript_and_events(staff):
    call = call_initiate(to="+15550001111", message="Hi there", mode="conversation")
    event_process(event=CallAnswered(call_id=str(call.pk)))
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="Who is this?"))
    page = staff.get(reverse("admin:calls_call_change", args=[call.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Hi there" in html and "Who is this?" in html and "call.answered" in html
    assert 'name="_save"' not in html  # nothing to save: read-only
    assert "Timeline" in html and "caller said" in html and "bot said" in html
    response = staff.post(reverse("admin:calls_call_change", args=[call.pk]), {"state": "completed"})
    assert response.status_code == 403
    assert Call.objects.get(pk=call.pk).state == "listening"
    assert staff.get(reverse("admin:calls_call_add")).status_code == 403


def test_number_route_validation(staff):
    url = reverse("admin:routing_numberroute_add")
    bad = staff.post(url, {"number": "555-1234", "tts": "{}", "enabled": "on"})
    assert bad.status_code == 200
    assert "Expected E.164 format, e.g. +15550001234" in bad.content.decode()
    bad_tts = staff.post(url, {"number": "+15550009999", "tts": '{"timeoutMs": 5}', "enabled": "on"})
    assert "tts.timeoutMs: must be between 1000 and 120000" in bad_tts.content.decode()
    good = staff.post(url, {"number": "+15550009999", "inbound_greeting": "Hi from sales", "tts": "{}", "enabled": "on"})
    assert good.status_code == 302
    assert NumberRoute.objects.get().inbound_greeting == "Hi from sales"


def test_allowed_caller_validation(staff):
    url = reverse("admin:routing_allowedcaller_add")
    assert "Enter the number in international form" in staff.post(url, {"number": "+0123", "enabled": "on"}).content.decode()
    assert staff.post(url, {"number": "+15557654321", "label": "Alice", "enabled": "on"}).status_code == 302
    assert AllowedCaller.objects.get().label == "Alice"


def test_admin_requires_login(client):
    response = client.get(reverse("admin:calls_call_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_ready_and_not_ready(client, configure):
    body = client.get("/readyz").json()
    # Where this process's restore is (none here: the test client's process never started the gateway).
    assert set(body.pop("restore")) >= {"state"}
    assert body == {"ready": True, "provider": "mock"}
    configure({"provider": "telnyx", "fromNumber": "+15550000000"})
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["errors"] == [
        "telnyx.apiKey: required (or set TELNYX_API_KEY)",
        "telnyx.connectionId: required (or set TELNYX_CONNECTION_ID)",
        "telnyx.publicKey: required (or set TELNYX_PUBLIC_KEY)",
    ]
    configure({"enabled": False})
    assert client.get("/readyz").json()["errors"] == ["voice calls are disabled (enabled: false)"]


async def test_admin_static_files_are_served_by_the_gateway(asgi):
    response = await asgi.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["content-type"]


def test_config_routes_are_shown_beside_admin_routes(staff, configure):
    configure({"numbers": {
        "+15550001111": {"inboundGreeting": "Config sales", "tts": {"providers": {"openai": {"apiKey": "sk-secret-value"}}}},
        "+15550002222": {"inboundGreeting": "Config support"},
    }})
    NumberRoute.objects.create(number="+15550001111", inbound_greeting="Admin sales")
    html = staff.get(reverse("admin:routing_numberroute_changelist")).content.decode()
    assert "Routes from the config file" in html
    table = html[html.index('id="config-routes"'):]
    assert "Config sales" in table and "Config support" in table
    assert "no: the admin route wins" in table and table.count("<td>yes</td>") == 1
    assert "sk-secret-value" not in html  # credentials are described, never shown


def test_pairing_codes_are_made_in_the_admin(staff):
    from routing.models import PairingCode

    response = staff.post(reverse("admin:routing_pairingcode_add"), {
        "label": "Grandma", "expires_at_0": "2099-01-01", "expires_at_1": "00:00:00"})
    assert response.status_code == 302, response.content.decode()[:2000]
    created = PairingCode.objects.get()
    assert created.label == "Grandma" and len(created.code) == 6 and created.usable
    listing = staff.get(reverse("admin:routing_pairingcode_changelist"), {"usable": "yes"}).content.decode()
    assert created.code in listing
    assert created.code not in staff.get(reverse("admin:routing_pairingcode_changelist"), {"usable": "no"}).content.decode()


def test_replies_and_session_memory_are_visible(staff, configure):
    configure({"inboundPolicy": "open", "agents": {"main": {"responder": {"type": "scripted", "replies": ["Scripted answer."]}}}})
    event_process(event=CallAnswered(call_id="CA-in", provider_call_id="CA-in", direction="inbound", from_number="+15557777777"))
    call = Call.objects.get(provider_call_id="CA-in")
    event_process(event=CallSpeech(call_id=str(call.pk), transcript="A question."))
    html = staff.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    assert "automatic replies" in html.lower() and "Scripted answer." in html and "reply spoken" in html
    from calls.models import ConversationSession

    session = ConversationSession.objects.get()
    page = staff.get(reverse("admin:calls_conversationsession_change", args=[session.pk])).content.decode()
    assert "A question." in page and "Scripted answer." in page
