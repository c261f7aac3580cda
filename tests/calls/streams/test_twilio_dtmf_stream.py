"""Digits sent on a Twilio call whose audio goes through a media stream, through the real gateway.

The fake Twilio rings the live gateway and the test plays Twilio's side of each media stream the
call's TwiML connects, as Twilio does: a REST update of the call's TwiML (the digits) ends the
running stream, so the fake's stop hook sends Twilio's stop frame and closes that socket.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from websockets.asyncio.client import connect

from calls.models import Call, MediaStream
from calls.services import call_end, call_send_dtmf, call_speak, deadlines_sweep
from calls.services.streams import DISCONNECT_GRACE
from core.audio import FRAME_BYTES
from tests.calls.streams.test_media_stream import Listener, _joined, bot_lines, fetch_call, stream_row
from tests.fakes import FakeTwilio
from tests.waiting import await_until

pytestmark = [pytest.mark.django_db(transaction=True)]

FROM, CALLER = "+15550000001", "+15557654321"


class TwilioStreams:
    """Twilio's side of each <Connect><Stream> of a call: open it like Twilio, stop it when Twilio would."""

    def __init__(self, fake: FakeTwilio, loop: asyncio.AbstractEventLoop) -> None:
        self.fake, self.loop = fake, loop
        self.open: dict[int, tuple] = {}  # id(stream record) -> (socket, streamSid)
        fake.on_stream_stop = self._stopped

    async def connect(self, call: Call, fake_call, record: dict) -> tuple:
        stream_sid = "MZ" + secrets.token_hex(16)
        ws = await connect(record["url"], open_timeout=5, close_timeout=1, max_size=2**21)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
            "accountSid": self.fake.account_sid, "streamSid": stream_sid, "callSid": fake_call.sid, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": record["parameters"]}}))
        self.open[id(record)] = (ws, stream_sid, fake_call.sid)
        await await_until(lambda: stream_row(stream_sid))
        await await_until(lambda: _joined(call))  # joined the call's group: commands reach it
        return ws, stream_sid

    def _stopped(self, fake_call, record: dict) -> None:
        # On the fake's worker, before what the update runs next (as Twilio stops the stream first).
        held = self.open.pop(id(record), None)
        if held is not None:
            asyncio.run_coroutine_threadsafe(self._stop(*held), self.loop).result(5)

    async def _stop(self, ws, stream_sid: str, call_sid: str) -> None:
        try:
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": "99", "streamSid": stream_sid,
                                      "stop": {"accountSid": self.fake.account_sid, "callSid": call_sid}}))
            await asyncio.wait_for(ws.close(), 3)
        except Exception:
            pass

    async def close_all(self) -> None:
        for ws, _, _ in list(self.open.values()):
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass


@pytest.fixture
async def twilio(live_gateway, configure):
    with FakeTwilio() as fake:
        loaded = configure({
            "enabled": True,
            "provider": "twilio",
            "twilio": {"accountSid": fake.account_sid, "authToken": fake.auth_token, "baseUrl": fake.base_url},
            "fromNumber": FROM,
            "publicUrl": f"{live_gateway}/voice/webhook",
            "inboundPolicy": "open",
            "maxConcurrentCalls": 5,
            "streaming": {"enabled": True, "provider": "local"},
            "tts": {"provider": "local"},
        })
        assert not loaded.errors, loaded.errors
        streams = TwilioStreams(fake, asyncio.get_running_loop())
        yield fake, streams
        await streams.close_all()
        # Let the gateway record the test's streams before the database is flushed.
        await await_until(sync_to_async(lambda: not MediaStream.objects.filter(closed_at__isnull=True).exists()),
                          "every stream of the test recorded as closed", timeout=5)
        assert not fake.errors


def _call_of(sid: str) -> Call | None:
    return Call.objects.filter(provider_call_id=sid).first()


async def test_a_streamed_call_keeps_its_audio_on_a_new_stream_after_dtmf(twilio, live_gateway):
    fake, streams = twilio
    fake_call = await asyncio.to_thread(fake.ring_inbound, CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = await await_until(sync_to_async(lambda: _call_of(fake_call.sid)))
    assert fake_call.blocked_on == "stream" and len(fake_call.streams) == 1
    first = fake_call.streams[0]
    ws1, sid1 = await streams.connect(call, fake_call, first)
    old = Listener(ws1, echo=True)

    await sync_to_async(call_send_dtmf, thread_sensitive=False)(call_id=str(call.pk), digits="12")
    await asyncio.to_thread(fake.wait_idle)
    assert fake_call.played_digits == ["12"]
    assert first["stopped"] == "replaced"  # Twilio ended the stream the call had
    # After the digits the call is back on a media stream, with the call's stream token.
    assert fake_call.blocked_on == "stream" and len(fake_call.streams) == 2, fake_call.documents[-1]
    second = fake_call.streams[1]
    assert second["url"] == first["url"] and second["parameters"] == first["parameters"]

    ws2, sid2 = await streams.connect(call, fake_call, second)
    new = Listener(ws2, echo=True)
    outcome = await asyncio.wait_for(
        sync_to_async(call_speak, thread_sensitive=False)(call_id=str(call.pk), text="Your extension is connected."), 20)
    assert outcome == "played"
    assert len(new.audio()) >= 15 and all(len(p) == FRAME_BYTES for p in new.payloads())
    assert all(m["streamSid"] == sid2 for _, m in new.frames)
    assert old.audio() == []
    assert await bot_lines(call) == ["Your extension is connected."]

    # The old stream's close did not end the call: a sweep past its disconnect grace leaves the call up
    # (the new stream replaced the old row, so the old socket's close starts no grace of its own).
    past_grace = timezone.now() + DISCONNECT_GRACE + timedelta(seconds=1)
    await sync_to_async(deadlines_sweep, thread_sensitive=False)(at=past_grace)
    live = await fetch_call(call)
    assert not live.is_terminal and live.stream_grace_deadline is None
    assert fake_call.status == "in-progress"
    rows = await sync_to_async(lambda: list(MediaStream.objects.filter(call=call).order_by("pk")))()
    assert [r.stream_id for r in rows] == [sid1, sid2]
    assert rows[0].closed_at is not None and rows[1].closed_at is None

    await old.stop()
    await sync_to_async(call_end, thread_sensitive=False)(call_id=str(call.pk))
    await asyncio.to_thread(fake.wait_idle)
    assert fake_call.streams[1]["stopped"] == "ended"
    await new.stop()


async def test_a_streamed_call_transferred_leaves_its_stream_without_hanging_up(twilio, live_gateway):
    from calls.services import call_transfer

    fake, streams = twilio
    fake_call = await asyncio.to_thread(fake.ring_inbound, CALLER, FROM, f"{live_gateway}/voice/webhook")
    call = await await_until(sync_to_async(lambda: _call_of(fake_call.sid)))
    first = fake_call.streams[0]
    ws, sid = await streams.connect(call, fake_call, first)
    listener = Listener(ws, echo=True)

    result = await sync_to_async(call_transfer, thread_sensitive=False)(call_id=str(call.pk), to="+15550002222")
    assert result.status == "dialing"
    await asyncio.to_thread(fake.wait_idle)
    assert first["stopped"] == "replaced"  # the <Dial> took the call's audio from the stream
    assert fake_call.blocked_on == "dial" and fake_call.dial["target"] == "+15550002222"
    ended = await fetch_call(call)
    assert ended.end_reason == "transferred"
    await await_until(sync_to_async(lambda: MediaStream.objects.get(stream_id=sid).closed_at is not None),
                      "the stream recorded as closed")

    # Past the disconnect grace nothing hangs the caller up: they are with the target now.
    past_grace = timezone.now() + DISCONNECT_GRACE + timedelta(seconds=1)
    await sync_to_async(deadlines_sweep, thread_sensitive=False)(at=past_grace)
    await asyncio.to_thread(fake.wait_idle)
    assert fake_call.status == "in-progress" and fake_call.blocked_on == "dial"
    updates = fake.requests_to("POST", rf"/Calls/{fake_call.sid}\.json$")
    assert [list(r.form) for r in updates] == [["Twiml"]]  # the transfer only: no Status=completed
    assert (await fetch_call(call)).end_reason == "transferred"
    await listener.stop()
