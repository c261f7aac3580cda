"""Local recording of realtime streams: the caller and the model's audio, as the carrier heard it, in one WAV.

The realtime bridge plays the model's audio through the same paced Playback as speech, so the
recording taps it there; this runs it through the real server with the scripted model.
"""
from __future__ import annotations

import base64
import json
import secrets

import pytest
from asgiref.sync import sync_to_async

from calls.models import Call
from tests.calls.streams.test_local_recording import (
    PacedCaller,
    assert_caller_channel,
    assert_gateway_channel,
    read_wav,
    settled_recordings,
    talking,
)
from tests.calls.streams.test_media_stream import Listener, closed_row, stop_frame
from tests.calls.streams.test_realtime_stream import gateway, rest_stub, scripted_provider  # noqa: F401  (fixtures)
from tests.calls.streams.test_realtime_stream import issue, on_loop, open_call, session_ready, tone
from tests.waiting import await_until

live = pytest.mark.django_db(transaction=True)


@sync_to_async
def new_call(provider: str = "twilio") -> Call:
    return Call.objects.create(
        provider=provider, provider_call_id="CA" + secrets.token_hex(16), direction="inbound", state="answered",
        from_number="+15550100001", to_number="+15550100000", mode="conversation", record_local=True,
    )


@live
async def test_a_realtime_call_is_recorded_with_the_models_audio_where_the_carrier_played_it(gateway, tmp_path):
    gateway.configure({**gateway.data, "recording": {"local": True, "directory": str(tmp_path)}})
    call = await new_call()
    ws, sid, session = await open_call(gateway, call)
    listener = Listener(ws, echo=True)
    caller = PacedCaller(ws, sid, talk=talking(10, 20))
    await caller.until(50)
    on_loop(session.listener.on_audio, tone(600), "item-1")
    on_loop(session.listener.on_response_done, "item-1", "completed")
    await await_until(lambda: len(listener.audio()) >= 30, "the model's audio at the carrier")
    await caller.until(len(caller.sent) + 25)
    await caller.stop()
    await ws.send(stop_frame(sid, call))
    await closed_row(sid)
    (row,) = await settled_recordings(call)
    assert (row.status, row.source, row.channels) == ("completed", "local", 2)
    left, right = read_wav(tmp_path / row.file)
    assert_caller_channel(left, caller)
    first = assert_gateway_channel(right, listener, caller)
    assert first >= 50 and not right[: 30 * 160].any()  # the model spoke after the caller's words
    await listener.stop()


def telnyx_media(stream_id: str, payload: bytes, sequence: int) -> str:
    return json.dumps({"event": "media", "sequence_number": str(sequence), "stream_id": stream_id,
                       "media": {"track": "inbound", "chunk": str(sequence - 1), "timestamp": str((sequence - 2) * 20),
                                 "payload": base64.b64encode(payload).decode()}})


@live
async def test_a_telnyx_realtime_call_is_recorded_too(gateway, tmp_path):
    gateway.config(carrier="telnyx")
    gateway.configure({**gateway.data, "recording": {"local": True, "directory": str(tmp_path)}})
    call = await new_call(provider="telnyx")
    ws = await gateway.dial(await issue(str(call.pk)))
    stream_id = "7d1e0c7a-7a0e-4f55-9d43-5c1b8f1f2a10"
    await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
    await ws.send(json.dumps({
        "event": "start", "sequence_number": "1", "stream_id": stream_id,
        "start": {"call_control_id": call.provider_call_id, "custom_parameters": {},
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
    }))
    session = await session_ready()
    listener = Listener(ws, echo=False)
    caller = PacedCaller(ws, stream_id, talk=talking(5, 15), frame=telnyx_media)
    await caller.until(40)
    on_loop(session.listener.on_audio, tone(400), "item-1")
    on_loop(session.listener.on_response_done, "item-1", "completed")
    await await_until(lambda: len(listener.audio()) >= 20, "the model's audio as Telnyx frames")
    await caller.until(len(caller.sent) + 10)
    await caller.stop()
    await ws.send(json.dumps({"event": "stop", "sequence_number": "9", "stream_id": stream_id,
                              "stop": {"call_control_id": call.provider_call_id}}))
    await closed_row(stream_id)
    (row,) = await settled_recordings(call)
    assert row.status == "completed"
    left, right = read_wav(tmp_path / row.file)
    assert_caller_channel(left, caller)
    assert assert_gateway_channel(right, listener, caller) >= 40
    await listener.stop()
