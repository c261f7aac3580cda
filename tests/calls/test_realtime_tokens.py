"""One-time realtime stream tokens (calls/services/realtime.py): issued, used once, expired, purged."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from calls.clock import now
from calls.models import Call, RealtimeStreamToken
from calls.services import realtime_token_consume, realtime_token_issue, realtime_tokens_purge


def a_call(**fields) -> Call:
    return Call.objects.create(provider="twilio", provider_call_id="CA" + uuid.uuid4().hex, direction="inbound",
                               state="answered", from_number="+15550100001", to_number="+15550100000", **fields)


@pytest.mark.django_db
def test_a_token_is_valid_30_seconds_and_used_once():
    call = a_call()
    token = realtime_token_issue(str(call.pk))
    row = RealtimeStreamToken.objects.get(token=token)
    assert row.expires_at - row.created_at == timedelta(seconds=30)
    assert realtime_token_consume(token) == str(call.pk)
    assert realtime_token_consume(token) is None


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["", "garbage", "5b0c3a52-4a33-4a5c-9d5e-0d3c3f0b0b0b"])
def test_malformed_and_unknown_tokens_are_refused(token, caplog):
    assert realtime_token_consume(token) is None
    assert "stream token" in caplog.text


@pytest.mark.django_db
def test_an_expired_token_is_refused(caplog):
    call = a_call()
    token = realtime_token_issue(str(call.pk))
    RealtimeStreamToken.objects.filter(token=token).update(expires_at=now() - timedelta(milliseconds=1))
    assert realtime_token_consume(token) is None
    assert "expired" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_of_two_upgrades_with_one_token_only_one_gets_through():
    call = a_call()
    token = realtime_token_issue(str(call.pk))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: realtime_token_consume(token), range(4)))
    assert results.count(str(call.pk)) == 1 and results.count(None) == 3


@pytest.mark.django_db
def test_purge_warns_about_unused_tokens_and_forgets_old_ones(caplog):
    call = a_call(initial_message="Hello")
    unused = realtime_token_issue(str(call.pk))
    used = realtime_token_issue(str(call.pk))
    realtime_token_consume(used)
    assert realtime_tokens_purge(at=now() + timedelta(seconds=29)) == 0
    assert realtime_tokens_purge(at=now() + timedelta(seconds=31)) == 1  # the expired unused one
    assert "never opened its realtime stream" in caplog.text and "greeting was not spoken" in caplog.text
    assert not RealtimeStreamToken.objects.filter(token=unused).exists()
    assert realtime_tokens_purge(at=now() + timedelta(hours=2)) == 1  # the used one, kept an hour
    assert not RealtimeStreamToken.objects.exists()
