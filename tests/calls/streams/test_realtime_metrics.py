"""A realtime turn's latency reaches GET /metrics once, observed where the model's first audio of the answer leaves."""
from __future__ import annotations

import httpx

from tests.calls.streams import test_realtime_stream as realtime
from tests.calls.streams.test_media_stream import Listener, closed_row, stop_frame
from tests.metrics_scrape import parse, value
from tests.waiting import await_until

# The realtime stream tests' fixtures: the live gateway under a realtime config, its REST stub, the scripted model.
gateway = realtime.gateway
rest_stub = realtime.rest_stub
scripted_provider = realtime.scripted_provider


async def turns_observed(gw) -> float:
    async with httpx.AsyncClient(base_url=gw.live_gateway, timeout=10) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return value(parse(response.text), "voicecall_turn_latency_seconds_count", kind="realtime")


@realtime.live
async def test_a_realtime_turn_is_observed_once(gateway):
    before = await turns_observed(gateway)
    call = await realtime.new_call()
    ws, sid, session = await realtime.open_call(gateway, call)
    listener = Listener(ws, echo=True)
    realtime.on_loop(session.listener.on_speech_stopped)
    realtime.on_loop(session.listener.on_input_transcript, "What time is it?")
    realtime.on_loop(session.listener.on_audio, realtime.tone(300), "item-1")
    realtime.on_loop(session.listener.on_audio, realtime.tone(300), "item-1")  # the same answer: no second turn
    realtime.on_loop(session.listener.on_response_done, "item-1", "completed")
    await await_until(lambda: len(listener.audio()) >= 20, "the model's audio at the carrier")
    await await_until(lambda: realtime.events(call, "realtime.turn"), "the turn recorded")
    await ws.send(stop_frame(sid, call))
    await closed_row(sid)
    await listener.stop()
    assert await turns_observed(gateway) - before == 1
