"""GET /metrics through the real ASGI application: the database gauges, webhook counts and latency, refusals by reason, turn latency, the bearer token."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from calls.models import Call, GatewayNode, MediaStream, PendingDial
from calls.services import call_continue, call_initiate
from tests.calls.test_e2e_mock_call import asyncio_thread
from tests.conftest import events_body
from tests.metrics_scrape import families, parse, value
from tests.paths import ROOT
from tests.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "xyz-metrics-token-7731"


async def scrape(asgi, **headers: str):
    response = await asgi.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def calls_in(states: dict[str, int], *, provider: str = "mock") -> list[Call]:
    made = []
    for state, count in states.items():
        for _ in range(count):
            made.append(Call.objects.create(provider=provider, direction="inbound", state=state,
                                            from_number="+15550100001", to_number="+15550100000"))
    return made


async def test_the_scrape_shows_calls_by_state_outcomes_streams_queue_and_nodes(asgi):
    empty = await scrape(asgi)
    assert value(empty, "voicecall_calls_active") == 0
    assert value(empty, "voicecall_calls", state="ringing") == 0  # every state is shown, 0 included
    assert value(empty, "voicecall_calls_ended_last_hour", reason="busy") == 0

    def rows():
        live = calls_in({"ringing": 2, "active": 1, "listening": 3})
        calls_in({"completed": 4, "no-answer": 1})
        old = calls_in({"busy": 1})[0]
        Call.objects.filter(pk=old.pk).update(started_at=old.started_at.replace(year=2020))  # outside the window
        MediaStream.objects.create(call=live[2], stream_id="MZ1", carrier="twilio")
        MediaStream.objects.create(call=live[3], stream_id="MZ2", carrier="twilio", closed_at=old.started_at)
        PendingDial.objects.create(idempotency_key="k1", to_number="+15550100009")
        PendingDial.objects.create(idempotency_key="k2", to_number="+15550100008", status="admitted")
        Call.objects.create(provider="mock", direction="outbound", state="initiated", from_number="+1555",
                            to_number="+15550100007")  # queued: no dial request yet
        GatewayNode.objects.create(host="h", pid=1)
        GatewayNode.objects.create(host="h", pid=2, stopped_at=old.started_at)

    await sync_to_async(rows)()
    samples = await scrape(asgi)
    assert value(samples, "voicecall_calls", state="ringing") == 2
    assert value(samples, "voicecall_calls", state="active") == 1
    assert value(samples, "voicecall_calls", state="listening") == 3
    assert value(samples, "voicecall_calls", state="initiated") == 1
    assert value(samples, "voicecall_calls_active") == 7
    assert value(samples, "voicecall_calls_ended_last_hour", reason="completed") == 4
    assert value(samples, "voicecall_calls_ended_last_hour", reason="no-answer") == 1
    assert value(samples, "voicecall_calls_ended_last_hour", reason="busy") == 0
    assert value(samples, "voicecall_media_streams_open", carrier="twilio") == 1
    assert value(samples, "voicecall_dial_queue_depth", queue="pending") == 1
    assert value(samples, "voicecall_dial_queue_depth", queue="undialed") == 1
    assert value(samples, "voicecall_gateway_nodes_live") == 1


async def test_the_scrape_uses_a_few_queries(asgi):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from calls.metrics.database import DatabaseCollector

    def collect():
        with CaptureQueriesContext(connection) as queries:
            list(DatabaseCollector().collect())
        return len(queries)

    assert await sync_to_async(collect)() <= 5


async def test_every_metric_has_help_and_the_voicecall_prefix(asgi):
    response = await asgi.get("/metrics")
    ours = {name: family for name, family in families(response.text).items() if name.startswith("voicecall_")}
    assert {"voicecall_calls", "voicecall_calls_active", "voicecall_calls_ended_last_hour", "voicecall_media_streams_open",
            "voicecall_dial_queue_depth", "voicecall_gateway_nodes_live", "voicecall_webhook_requests",
            "voicecall_webhook_request_duration_seconds", "voicecall_refused_requests",
            "voicecall_stream_inbound_lag_seconds", "voicecall_stream_outbound_pacing_delay_seconds",
            "voicecall_turn_latency_seconds"} <= set(ours)
    assert all(family.documentation for family in ours.values())
    assert ours["voicecall_webhook_requests"].type == "counter"
    assert ours["voicecall_turn_latency_seconds"].type == "histogram"


async def test_webhooks_are_counted_by_carrier_and_status_with_their_latency(asgi):
    before = await scrape(asgi)
    call = await sync_to_async(call_initiate)(to="+15550001111", message="Hello there.")
    for index, event in enumerate(("call.ringing", "call.answered")):
        response = await asgi.post("/voice/webhook", content=events_body({"type": event, "callId": str(call.pk), "id": f"m{index}"}))
        assert response.status_code == 200
    assert (await asgi.post("/voice/webhook", content=b"{not json")).status_code == 400
    assert (await asgi.post("/voice/webhook", content=b"x" * (64 * 1024 + 1))).status_code == 413
    assert (await asgi.get("/voice/webhook")).status_code == 405
    after = await scrape(asgi)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("voicecall_webhook_requests_total", carrier="mock", status="200") == 2
    assert delta("voicecall_webhook_requests_total", carrier="mock", status="400") == 1
    assert delta("voicecall_webhook_requests_total", carrier="mock", status="413") == 1
    assert delta("voicecall_webhook_requests_total", carrier="mock", status="405") == 1
    assert delta("voicecall_webhook_request_duration_seconds_count", carrier="mock") == 5
    assert delta("voicecall_webhook_request_duration_seconds_bucket", carrier="mock", le="+Inf") == 5
    assert delta("voicecall_webhook_request_duration_seconds_sum", carrier="mock") > 0
    assert delta("voicecall_refused_requests_total", reason="webhook_malformed") == 1
    assert delta("voicecall_refused_requests_total", reason="body_too_large") == 1
    assert value(after, "voicecall_calls_active") == 1  # the call the webhooks answered


async def test_an_unsigned_carrier_webhook_is_refused_and_counted(asgi, configure):
    configure({"enabled": True, "provider": "twilio", "fromNumber": "+15550000001",
               "publicUrl": "https://gw.example.com/voice/webhook",
               "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "twilio-token-8841"}})
    before = await scrape(asgi)
    unsigned = await asgi.post("/voice/webhook", content=b"CallSid=CA1", headers={"content-type": "application/x-www-form-urlencoded"})
    wrong = await asgi.post("/voice/webhook", content=b"CallSid=CA1", headers={
        "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": "bm90LWEtc2lnbmF0dXJl"})
    assert (unsigned.status_code, wrong.status_code) == (401, 401)
    after = await scrape(asgi)
    assert value(after, "voicecall_refused_requests_total", reason="webhook_signature") - \
        value(before, "voicecall_refused_requests_total", reason="webhook_signature") == 2
    assert value(after, "voicecall_webhook_requests_total", carrier="twilio", status="401") - \
        value(before, "voicecall_webhook_requests_total", carrier="twilio", status="401") == 2


async def test_a_bad_rpc_token_is_counted_as_refused(asgi):
    before = await scrape(asgi)
    response = await asgi.post("/voice/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "voicecall.status"},
                               headers={"Authorization": "Bearer not-the-token-1234567"})
    assert response.status_code == 401
    after = await scrape(asgi)
    assert value(after, "voicecall_refused_requests_total", reason="rpc_auth") - \
        value(before, "voicecall_refused_requests_total", reason="rpc_auth") == 1


async def test_a_continue_turn_is_observed_once(asgi):
    before = await scrape(asgi)
    call = await sync_to_async(call_initiate)(to="+15550001111", message="Hi.", mode="conversation")
    cid = str(call.pk)
    await asgi.post("/voice/webhook", content=events_body({"type": "call.answered", "callId": cid, "id": "t1"}))
    turn = asyncio_thread(lambda: call_continue(call_id=cid, prompt="Tuesday?"))
    await await_until(sync_to_async(lambda: Call.objects.get(pk=cid).turns.filter(listen_started_at__isnull=False).exists()),
                      "the turn to listen")
    speech = events_body({"type": "call.speech", "callId": cid, "transcript": "Yes.", "id": "t2"})
    assert (await asgi.post("/voice/webhook", content=speech)).status_code == 200
    assert turn.join() == "Yes."
    assert (await asgi.post("/voice/webhook", content=speech)).status_code == 200  # a replay completes nothing
    after = await scrape(asgi)
    assert value(after, "voicecall_turn_latency_seconds_count", kind="continue") - \
        value(before, "voicecall_turn_latency_seconds_count", kind="continue") == 1
    assert value(after, "voicecall_turn_latency_seconds_count", kind="reply") == value(before, "voicecall_turn_latency_seconds_count", kind="reply")


@override_settings(VOICECALL_METRICS_TOKEN=TOKEN)
async def test_the_bearer_token_guards_the_scrape(asgi):
    before = await scrape(asgi, Authorization=f"Bearer {TOKEN}")
    missing = await asgi.get("/metrics")
    wrong = await asgi.get("/metrics", headers={"Authorization": "Bearer xyz-metrics-token-7732"})
    basic = await asgi.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "voicecall_" not in response.text
    after = await scrape(asgi, Authorization=f"Bearer {TOKEN}")
    assert value(after, "voicecall_refused_requests_total", reason="metrics_auth") - \
        value(before, "voicecall_refused_requests_total", reason="metrics_auth") == 3


async def test_only_get_scrapes(asgi):
    assert (await asgi.post("/metrics")).status_code in (403, 405)  # CSRF or method: never a scrape


def test_the_metrics_token_is_redacted_like_other_secrets(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_DATA_DIR": str(tmp_path),
           "VOICECALL_METRICS_TOKEN": TOKEN}
    env.pop("DATABASE_URL", None), env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-c", "import django; django.setup(); from core.redact import redact; "
                           f"print(redact('scraped with {TOKEN} today'))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "scraped with [redacted] today"


def sync_scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse(response.content.decode())


@override_settings(VOICECALL_ADMIN_LOGIN_MAX_FAILURES=2)
def test_an_admin_lockout_is_counted_as_refused(client):
    from django.contrib.auth.models import User

    User.objects.create_user("ops", password="xyz-login-token-5521", is_staff=True)
    before = sync_scrape(client)
    for _ in range(3):  # two failures lock the pair; the third attempt is refused unchecked
        response = client.post("/admin/login/?next=/admin/", {"username": "ops", "password": "xyz-wrong-token-1"})
        assert response.status_code == 200
    assert b"Too many failed login attempts" in response.content
    after = sync_scrape(client)
    assert value(after, "voicecall_refused_requests_total", reason="admin_lockout") - \
        value(before, "voicecall_refused_requests_total", reason="admin_lockout") == 1


def test_an_automatic_reply_is_observed_once(client, configure):
    from tests.calls import test_conversations as conversations
    from tests.fakes.ai.llm import FakeChatCompletions

    with FakeChatCompletions(api_key=conversations.KEY, reply='{"spoken": "We open at nine."}') as llm:
        configure(conversations.llm_config(llm))
        before = sync_scrape(client)
        call = conversations.ring()
        conversations.say(call, "When do you open?")
        reply = call.replies.get()
        after = sync_scrape(client)
    assert reply.first_audio_ms is not None
    assert value(after, "voicecall_turn_latency_seconds_count", kind="reply") - \
        value(before, "voicecall_turn_latency_seconds_count", kind="reply") == 1
    assert value(after, "voicecall_turn_latency_seconds_sum", kind="reply") - \
        value(before, "voicecall_turn_latency_seconds_sum", kind="reply") == pytest.approx(reply.first_audio_ms / 1000)
