"""The live calls socket (calls/console/socket.py) through the real gateway: who may open it, the
snapshot, and each change arriving as it is made, from worker threads, through the channel layer
in use (the in-memory one, or Redis with REDIS_URL set)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.utils import timezone
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls.console import pokes, socket as console_socket
from calls.console.live import RECONCILE_EVERY, LiveView
from calls.models import Call, TranscriptEntry
from calls.services.common import finalize_by_id, transcript_add
from tests.calls.streams.test_media_stream import (  # noqa: F401  (fixtures used by name)
    FRAME_BYTES, close_clients, gateway, media_frame, new_call, open_stream, rest_stub,
)
from tests.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/admin/console/live/socket"


@sync_to_async
def session_of(*, superuser: bool = False, perms: tuple[str, ...] = ("view_call",), staff: bool = True) -> str:
    """A logged-in admin session's cookie value for a new user."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    name = f"user{time.monotonic_ns()}"
    model = get_user_model()
    if superuser:
        user = model.objects.create_superuser(name, f"{name}@example.com", "pw-8812-token")
    else:
        user = model.objects.create_user(name, f"{name}@example.com", "pw-8812-token", is_staff=staff)
        for codename in perms:
            user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="calls"))
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Console:
    """A console socket's messages, read in the background."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.messages: list[dict] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass

    def of(self, kind: str, **match) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind and all(m.get(k) == v for k, v in match.items())]

    async def first(self, kind: str, what: str, *, timeout: float = 5.0, where=lambda m: True, **match) -> dict:
        def found():
            return next((m for m in self.of(kind, **match) if where(m)), None)

        return await await_until(found, what, timeout=timeout)

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), 2)
        await self.task


async def dial(live_gateway: str, *, cookie: str | None, origin: str | None = "same"):
    host = live_gateway.split("://", 1)[1]
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
    if origin == "same":
        origin = live_gateway
    return await connect(f"ws://{host}{PATH}", origin=origin, additional_headers=headers, open_timeout=5, close_timeout=1)


async def close_code(ws) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


@sync_to_async
def live_call(*, number: str = "+15550100001", state: str = "answered", **fields) -> Call:
    return Call.objects.create(provider="mock", provider_call_id=f"mock-{time.monotonic_ns()}", direction="inbound",
                               state=state, from_number=number, to_number="+15550100000", route_key="sales",
                               agent_id="helper", **fields)


# --- who may open it -------------------------------------------------------------------------------


async def test_an_anonymous_socket_is_closed_4401(live_gateway):
    ws = await dial(live_gateway, cookie=None)
    assert await close_code(ws) == console_socket.CLOSE_LOGIN


async def test_staff_without_view_call_are_closed_4403(live_gateway):
    ws = await dial(live_gateway, cookie=await session_of(perms=()))
    assert await close_code(ws) == console_socket.CLOSE_FORBIDDEN


async def test_a_user_who_is_not_staff_is_closed_4403_even_with_the_permission(live_gateway):
    ws = await dial(live_gateway, cookie=await session_of(staff=False))
    assert await close_code(ws) == console_socket.CLOSE_FORBIDDEN


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1.evil.example", None])
async def test_a_socket_from_another_site_or_without_origin_is_refused(live_gateway, origin):
    with pytest.raises(InvalidStatus) as refused:
        await dial(live_gateway, cookie=await session_of(superuser=True), origin=origin)
    assert refused.value.response.status_code == 403


# --- what it sends -----------------------------------------------------------------------------------


async def test_the_snapshot_has_the_live_calls_and_their_transcript(live_gateway):
    call = await live_call(number="+15550111111")
    await sync_to_async(transcript_add)(call=call, speaker="user", text="Hello there")
    await live_call(number="+15550122222", state="completed")
    console = Console(await dial(live_gateway, cookie=await session_of()))
    snapshot = await console.first("snapshot", "the snapshot")
    assert [row["number"] for row in snapshot["calls"]] == ["+15550111111"]
    row = snapshot["calls"][0]
    assert row == {
        "callId": str(call.pk), "number": "+15550111111", "direction": "inbound", "route": "sales", "agent": "helper",
        "state": "answered", "carrier": "mock", "startedAt": call.started_at.isoformat(), "answeredAt": None,
        "stream": False,
    }
    lines = (await console.first("transcript", "the transcript so far", callId=str(call.pk)))["lines"]
    assert [(entry["speaker"], entry["text"]) for entry in lines] == [("user", "Hello there")]
    await console.close()


async def test_changes_from_worker_threads_arrive_by_poke(live_gateway, monkeypatch):
    """New call, state change, transcript line and end, each within a second, without the safety timer."""
    monkeypatch.setattr(console_socket, "SAFETY_SECONDS", 60.0)
    console = Console(await dial(live_gateway, cookie=await session_of()))
    await console.first("snapshot", "the snapshot")

    in_thread = sync_to_async(lambda fn: fn(), thread_sensitive=False)
    call = await in_thread(lambda: Call.objects.create(
        provider="mock", provider_call_id="mock-poked", direction="outbound", state="initiated",
        from_number="+15550100000", to_number="+15550133333"))
    key = str(call.pk)
    row = (await console.first("call", "the new call", timeout=1.5, where=lambda m: m["call"]["callId"] == key))["call"]
    assert (row["number"], row["direction"], row["state"]) == ("+15550133333", "outbound", "initiated")

    # As the services write it: every change of a call moves its updated_at.
    await in_thread(lambda: Call.objects.filter(pk=call.pk).update(state="answered", updated_at=timezone.now()))
    await console.first("call", "the answered state", timeout=1.5,
                        where=lambda m: m["call"]["callId"] == key and m["call"]["state"] == "answered")

    await in_thread(lambda: transcript_add(call=call, speaker="bot", text="How can I help?"))
    message = await console.first("transcript", "the new line", timeout=1.5, callId=key)
    assert [entry["text"] for entry in message["lines"]] == ["How can I help?"]
    assert message["lines"][0]["id"] == await sync_to_async(lambda: TranscriptEntry.objects.get(call=call).pk)()

    await in_thread(lambda: finalize_by_id(call.pk, "completed"))
    gone = await console.first("gone", "the end", timeout=1.5, callId=key)
    assert (gone["state"], gone["endReason"]) == ("completed", "completed")
    await console.close()


async def test_a_lost_poke_costs_at_most_the_safety_timer(live_gateway, monkeypatch):
    monkeypatch.setattr(pokes.poker, "poke", lambda: None)  # no poke is ever sent
    console = Console(await dial(live_gateway, cookie=await session_of()))
    await console.first("snapshot", "the snapshot")
    call = await live_call()
    await console.first("call", "the call, found by the timer", timeout=2.5,
                        where=lambda m: m["call"]["callId"] == str(call.pk))
    await console.close()


async def test_stream_health_arrives_once_a_second_for_a_streamed_call(gateway):
    call = await new_call()
    console = Console(await dial(gateway.live_gateway, cookie=await session_of()))
    await console.first("snapshot", "the snapshot")
    ws, sid = await open_stream(gateway, call)
    await console.first("call", "the call with its stream", where=lambda m: m["call"]["stream"])
    for sequence in (2, 3, 4):
        await ws.send(media_frame(sid, b"\x10" * FRAME_BYTES, sequence=sequence))
    health = await console.first("stream", "the stream's health", timeout=4, callId=str(call.pk),
                                 where=lambda m: m["stats"]["framesIn"] == 3)
    assert set(health["stats"]) == {"framesIn", "framesOut", "dropped", "lagP50Ms", "lagP99Ms"}
    assert health["stats"]["dropped"] == 0
    await ws.close()
    await console.first("call", "the stream closed", where=lambda m: m["call"]["callId"] == str(call.pk)
                        and not m["call"]["stream"])
    await console.close()
    await close_clients(gateway)


# --- the reads and the pokes, focused ----------------------------------------------------------------


def test_a_call_missed_by_the_change_window_is_found_by_the_reconcile():
    view = LiveView()
    view.snapshot()
    call = Call.objects.create(provider="mock", direction="inbound", state="ringing", from_number="+1555", to_number="+1556")
    Call.objects.filter(pk=call.pk).update(updated_at=call.updated_at.replace(year=2001))  # outside any window
    messages = []
    for _ in range(RECONCILE_EVERY):
        messages += view.changes()
    assert [m["call"]["callId"] for m in messages if m["type"] == "call"] == [str(call.pk)]
    Call.objects.filter(pk=call.pk).update(state="completed", updated_at=call.updated_at.replace(year=2001))
    messages = []
    for _ in range(RECONCILE_EVERY):
        messages += view.changes()
    assert [(m["type"], m["callId"], m["state"]) for m in messages] == [("gone", str(call.pk), "completed")]


def poker_idle() -> bool:
    """No poke waiting and no send on its way."""
    return not pokes.poker.pending and (pokes.poker._task is None or pokes.poker._task.done())


async def test_pokes_from_many_threads_are_coalesced_and_never_block(live_gateway):
    console = Console(await dial(live_gateway, cookie=await session_of()))  # binds the loop of the in-memory layer
    await console.first("snapshot", "the snapshot")
    await await_until(poker_idle, "the setup's pokes sent")
    sent = pokes.poker.sent
    durations: list[float] = []

    def hammer() -> None:
        for _ in range(500):
            started = time.perf_counter()
            pokes.poke()
            durations.append(time.perf_counter() - started)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    started = time.monotonic()
    await asyncio.to_thread(lambda: [t.start() for t in threads] and [t.join() for t in threads])
    await await_until(lambda: pokes.poker.sent > sent and poker_idle(), "the last poke sent")
    elapsed = time.monotonic() - started
    # 2,000 pokes: one send for each POKE_INTERVAL they spanned, and one more at most.
    assert pokes.poker.sent - sent <= elapsed / pokes.POKE_INTERVAL + 2
    assert sorted(durations)[len(durations) // 2] < 0.001  # the writer's share: a flag, mostly
    await console.close()


def test_writes_poke_once_committed_and_not_when_rolled_back(monkeypatch):
    from django.db import transaction

    poked: list[int] = []
    monkeypatch.setattr(pokes.poker, "poke", lambda: poked.append(1))
    with transaction.atomic():
        call = Call.objects.create(provider="mock", direction="inbound", from_number="+1555", to_number="+1556")
        TranscriptEntry.objects.create(call=call, speaker="user", text="Hi")
        Call.objects.filter(pk=call.pk).update(state="ringing")
        assert poked == []  # nobody is told before the rows are there to read
    assert len(poked) == 3
    poked.clear()
    with transaction.atomic():
        Call.objects.filter(pk=call.pk).update(state="answered")
        transaction.set_rollback(True)
    assert poked == []
    Call.objects.filter(pk=call.pk, state="no-such-state").update(state="answered")  # no row changed
    assert poked == []
