"""The webhook endpoint through the real ASGI application: order of checks, limits, replay, bad input."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from calls import webhooks
from calls.models import Call, CallEvent, ProcessedWebhook
from calls.services import call_initiate
from calls.services import webhooks as webhook_processing
from providers.carriers.mock import MockCarrier
from providers.registry import register_carrier
from tests.conftest import events_body
from tests.waiting import await_until, forever

pytestmark = pytest.mark.django_db(transaction=True)


class SignedMock(MockCarrier):
    """A mock that, like real carriers, needs a signature header before its body is read."""

    name = "mock"
    signature_header_groups = (("x-test-signature",),)


async def new_call(**kwargs) -> Call:
    return await sync_to_async(call_initiate)(to="+15550001111", **kwargs)


async def test_events_are_processed_and_acknowledged(asgi):
    call = await new_call()
    response = await asgi.post(
        "/voice/webhook",
        content=events_body({"type": "call.ringing", "callId": str(call.pk)}, {"type": "call.answered", "callId": str(call.pk)}),
    )
    assert (response.status_code, response.text) == (200, "OK")
    await sync_to_async(call.refresh_from_db)()
    assert call.state == "answered"
    assert await sync_to_async(CallEvent.objects.filter(call=call).count)() == 2


@pytest.mark.parametrize("path", ["/voice/webhook/", "/voice/webhook"])
async def test_path_matching_ignores_trailing_slash(asgi, path):
    response = await asgi.post(path, content=events_body())
    assert response.status_code == 200


async def test_custom_serve_path(asgi, configure):
    configure({"serve": {"path": "hooks/carrier/"}})
    assert (await asgi.post("/hooks/carrier", content=events_body())).status_code == 200
    assert (await asgi.post("/voice/webhook", content=events_body())).status_code == 404


async def test_wrong_method_is_405(asgi):
    response = await asgi.get("/voice/webhook")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "body: not valid JSON"),
        (b"[]", 'body: expected {"events": [...]} or {"event": {...}}'),
        (json.dumps({"events": [{"type": "call.ringing"}]}).encode(), "events[0].callId: required"),
        (json.dumps({"event": {"type": "call.ringing", "callId": "c", "timestamp": -1}}).encode(), "event.timestamp: must be"),
        # Year 9999: the max-duration deadline from it would overflow (found by the fuzz job).
        (json.dumps({"event": {"type": "call.answered", "callId": "c", "timestamp": 253402300799998}}).encode(),
         "event.timestamp: must be"),
        # An object where a name is expected is not hashable: a set lookup would raise (found by the fuzz job).
        (json.dumps({"event": {"type": "call.ended", "callId": "c", "reason": {}}}).encode(), "event.reason: must be one of"),
    ],
)
async def test_malformed_bodies_get_400_naming_the_problem(asgi, body, message):
    response = await asgi.post("/voice/webhook", content=body)
    assert response.status_code == 400
    assert response.text.startswith(message)
    assert not await sync_to_async(ProcessedWebhook.objects.exists)()


async def test_a_bad_event_rejects_the_whole_batch_and_loses_nothing_accepted(asgi):
    call = await new_call()
    ok = await asgi.post("/voice/webhook", content=events_body({"type": "call.ringing", "callId": str(call.pk)}))
    assert ok.status_code == 200
    bad = await asgi.post(
        "/voice/webhook",
        content=events_body({"type": "call.answered", "callId": str(call.pk)}, {"type": "call.bogus", "callId": "x"}),
    )
    assert bad.status_code == 400
    await sync_to_async(call.refresh_from_db)()
    assert call.state == "ringing"  # the earlier event stays, the bad batch applied nothing
    assert await sync_to_async(CallEvent.objects.count)() == 1


async def test_a_batch_with_an_event_seen_before_applies_the_rest_once(asgi):
    """The one-transaction path meets the duplicate at its insert, rolls back, and goes event by event."""
    call = await new_call()
    ringing = {"type": "call.ringing", "callId": str(call.pk), "id": "evt-ringing"}
    assert (await asgi.post("/voice/webhook", content=events_body(ringing))).status_code == 200
    answered = {"type": "call.answered", "callId": str(call.pk), "id": "evt-answered"}
    both = await asgi.post("/voice/webhook", content=events_body(answered, ringing))
    assert both.status_code == 200
    await sync_to_async(call.refresh_from_db)()
    assert call.state == "answered"
    types = await sync_to_async(lambda: list(CallEvent.objects.filter(call=call).values_list("type", flat=True)))()
    assert types == ["call.ringing", "call.answered"]
    assert await sync_to_async(ProcessedWebhook.objects.count)() == 2  # both requests' answers kept
    # The same batch again is a replay: its first answer, nothing applied.
    again = await asgi.post("/voice/webhook", content=events_body(answered, ringing))
    assert (again.status_code, again.text) == (both.status_code, both.text)
    assert await sync_to_async(CallEvent.objects.count)() == 2


async def test_a_failure_inside_the_transaction_leaves_no_trace(asgi, monkeypatch):
    """Anything but a duplicate fails the request (500): nothing of it is kept, so the carrier's retry applies it."""
    call = await new_call()
    body = events_body({"type": "call.answered", "callId": str(call.pk), "id": "evt-1"})

    def broken(*args, **kwargs):
        raise RuntimeError("storage failed")

    with monkeypatch.context() as patched:
        patched.setattr(webhook_processing, "_remember_new", broken)
        failed = await asgi.post("/voice/webhook", content=body)
    assert failed.status_code == 500
    await sync_to_async(call.refresh_from_db)()
    assert call.state != "answered"
    assert not await sync_to_async(CallEvent.objects.exists)()
    assert not await sync_to_async(ProcessedWebhook.objects.exists)()
    retry = await asgi.post("/voice/webhook", content=body)
    assert retry.status_code == 200
    await sync_to_async(call.refresh_from_db)()
    assert call.state == "answered"


async def test_replay_gets_the_first_answer_without_processing(asgi, monkeypatch):
    call = await new_call()
    body = events_body({"type": "call.ringing", "callId": str(call.pk)})
    assert (await asgi.post("/voice/webhook", content=body)).status_code == 200
    calls = []
    monkeypatch.setattr(webhook_processing, "event_process", lambda *, event, **_: calls.append(event))
    replay = await asgi.post("/voice/webhook", content=body)
    assert (replay.status_code, replay.text) == (200, "OK")
    assert calls == []
    stored = await sync_to_async(ProcessedWebhook.objects.get)()
    assert stored.key.startswith("mock:") and stored.body == "OK"


async def test_unknown_call_is_not_remembered_so_a_retry_can_succeed(asgi):
    body = events_body({"type": "call.ringing", "callId": "not-yet-known"})
    response = await asgi.post("/voice/webhook", content=body)
    assert response.status_code == 200
    assert not await sync_to_async(ProcessedWebhook.objects.exists)()


async def test_setup_incomplete_answers_503_with_the_list(asgi, configure):
    configure({"provider": "plivo"})
    response = await asgi.post("/voice/webhook", content=events_body())
    assert response.status_code == 503
    assert response.text == (
        "Voice call setup incomplete: fromNumber: required; plivo.authId: required (or set PLIVO_AUTH_ID); "
        "plivo.authToken: required (or set PLIVO_AUTH_TOKEN)"
    )


async def test_body_over_64kb_is_413(asgi):
    response = await asgi.post("/voice/webhook", content=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413


async def call_app(app, *, headers=(), body_parts=(b"",), client=("10.0.0.1", 1), hang=False):
    """Drive the webhook ASGI app directly; `hang` makes the client never finish its body."""
    received = []
    sent = []
    parts = list(body_parts)

    async def receive():
        received.append(True)
        if hang:
            await forever()
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/voice/webhook", "query_string": b"",
             "headers": list(headers), "client": client, "scheme": "http"}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], received


async def test_missing_signature_header_is_401_before_reading_the_body(monkeypatch):
    register_carrier("mock", "tests.calls.test_webhook_pipeline.SignedMock")
    from calls.runtime import reset_runtime

    reset_runtime()
    try:
        status, body, received = await call_app(webhooks.WebhookApp(), body_parts=[events_body()])
        assert (status, body, received) == (401, b"Unauthorized", [])
        status, _, received = await call_app(
            webhooks.WebhookApp(), headers=[(b"x-test-signature", b"sig")], body_parts=[events_body()]
        )
        assert status == 200 and received
    finally:
        register_carrier("mock", "providers.carriers.mock.MockCarrier")
        reset_runtime()


async def test_declared_oversize_body_is_refused_before_reading():
    status, _, received = await call_app(webhooks.WebhookApp(), headers=[(b"content-length", b"70000")])
    assert (status, received) == (413, [])


async def test_body_arriving_in_parts_over_the_limit_is_413():
    parts = [b"x" * 40_000, b"x" * 40_000]
    status, _, _ = await call_app(webhooks.WebhookApp(), body_parts=parts)
    assert status == 413


async def test_slow_body_times_out_with_408(settings):
    settings.VOICECALL_WEBHOOK_BODY_TIMEOUT = 0.1
    status, body, _ = await call_app(webhooks.WebhookApp(), hang=True)
    assert (status, body) == (408, b"Request Timeout")


async def hold_in_flight(app, client: str, count: int) -> list[asyncio.Task]:
    """`count` requests from `client` that stay in flight (their bodies never finish)."""
    slow = [asyncio.create_task(call_app(app, hang=True, client=(client, i))) for i in range(count)]
    await await_until(lambda: app.in_flight.get(client) == count, f"{count} requests in flight")
    return slow


async def release(app, slow: list[asyncio.Task]) -> None:
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)
    assert app.in_flight == {}


async def test_in_flight_cap_per_ip_is_429(configure):
    configure({"serve": {"maxInFlightPerIp": 3}})
    app = webhooks.WebhookApp()
    slow = await hold_in_flight(app, "10.0.0.9", 3)
    status, body, received = await call_app(app, client=("10.0.0.9", 99), body_parts=[events_body()])
    assert (status, body, received) == (429, b"Too Many Requests", [])
    other_ip, _, _ = await call_app(app, client=("10.0.0.10", 1), body_parts=[events_body()])
    assert other_ip == 200
    await release(app, slow)
    # Once the address has room again, it is served.
    again, _, _ = await call_app(app, client=("10.0.0.9", 100), body_parts=[events_body()])
    assert again == 200


async def test_default_in_flight_cap_lets_a_carriers_burst_through():
    app = webhooks.WebhookApp()
    slow = await hold_in_flight(app, "10.0.0.9", 25)
    status, _, _ = await call_app(app, client=("10.0.0.9", 99), body_parts=[events_body()])
    assert status == 200
    await release(app, slow)


async def test_skip_signature_verification_uses_a_request_key(asgi, configure):
    configure({"skipSignatureVerification": True})
    call = await new_call()
    body = events_body({"type": "call.ringing", "callId": str(call.pk)})
    assert (await asgi.post("/voice/webhook", content=body)).status_code == 200
    stored = await sync_to_async(ProcessedWebhook.objects.get)()
    assert stored.key.startswith("mock:skip:")


async def test_non_webhook_paths_go_to_django(asgi):
    response = await asgi.get("/healthz")
    assert response.json() == {"status": "ok"}
    assert (await asgi.post("/elsewhere", content=b"{}")).status_code == 404


async def test_first_request_starts_gateway_services_off_the_event_loop(asgi, settings, monkeypatch):
    """Under a plain ASGI server the first request starts the services (restore runs on a thread of its own)."""
    from calls.gateway import get_gateway

    gateway = get_gateway()
    settings.VOICECALL_AUTOSTART_SERVICES = True
    settings.VOICECALL_EMBEDDED_SCHEDULER = False
    monkeypatch.setattr(gateway, "started", False)
    await sync_to_async(Call.objects.create)(
        provider="mock", provider_call_id="mock-ended-1", direction="outbound", from_number="+1", to_number="+2"
    )
    try:
        assert (await asgi.get("/healthz")).status_code == 200
        assert gateway.started
        assert await sync_to_async(gateway.restore.wait, thread_sensitive=False)(10)  # in the background
        call = await sync_to_async(Call.objects.get)(provider_call_id="mock-ended-1")
        assert call.state == "completed"  # restore asked the carrier and closed it
    finally:
        gateway.stop()
