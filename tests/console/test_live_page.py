"""The live calls page's own answers: who may open it, what it renders before its socket connects."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from calls.models import Call

pytestmark = pytest.mark.django_db

URL = "/admin/console/live/"


def staff(django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("staff7", "staff7@example.com", "pw-5521-token", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    return user


def test_anonymous_users_are_sent_to_the_login(client):
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_staff_without_view_call_get_403_and_no_index_row(client, django_user_model):
    client.force_login(staff(django_user_model))
    assert client.get(URL).status_code == 403
    assert "Live calls" not in client.get("/admin/").content.decode()


def test_a_viewer_gets_the_empty_state_and_no_actions(client, django_user_model):
    client.force_login(staff(django_user_model, "view_call"))
    page = client.get(URL).content.decode()
    assert "No calls in progress." in page and 'id="live-empty" class="live-empty">' in page
    assert ">Actions</th>" not in page and "actions.js" not in page
    assert 'href="/admin/console/live/"' in client.get("/admin/").content.decode()


def test_the_page_carries_the_calls_in_progress(client, django_user_model):
    live = Call.objects.create(provider="mock", direction="outbound", state="ringing", from_number="+15550100000",
                               to_number="+15550177777", agent_id="front-desk")
    Call.objects.create(provider="mock", direction="outbound", state="completed", from_number="+15550100000",
                        to_number="+15550188888")
    client.force_login(staff(django_user_model, "view_call", "act_on_call"))
    response = client.get(URL)
    assert response.context["can_act"] is True
    assert [row["callId"] for row in response.context["calls"]] == [str(live.pk)]
    page = response.content.decode()
    assert "+15550177777" in page and "+15550188888" not in page  # in the page's data, shown by live.js
    assert "actions.js" in page and ">Actions</th>" in page
    assert 'id="live-empty" class="live-empty" hidden>' in page
