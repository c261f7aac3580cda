"""Redis restarted mid-call under a real cluster: connected calls keep their streams and end cleanly; commands during the outage fail fast, naming Redis.

Two gateway processes behind the balancer, a Celery worker and beat (calls/cli/cluster.py), on a
private PostgreSQL database and a private redis-server that the test kills and starts again on the
same port: the channel layer and the Celery broker both go away, and come back empty. The caller's
webhook goes through the balancer and its media stream to node 1; commands go to node 0, so every
one of them crosses Redis. Skipped unless the run is distributed.
"""
from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async

from calls.simulator.rest import TwilioRestStub
from tests.cluster import distributed, make_cluster  # noqa: F401 (a fixture)
from tests.fakes.ai.tts import FakeTts
from tests.faults.streamed_caller import StreamedCaller
from tests.waiting import await_until

pytestmark = distributed

ACCOUNT = "AC" + "9" * 32
TOKEN = "redis-outage-token"
TTS_KEY = "sk-redis-outage"
GREETING = "Thanks for calling the clinic."
COMMAND_BOUND = 10.0  # seconds: a command to a stream fails within this during an outage (its own bound is 4 s)


def cluster_config(rest: TwilioRestStub, tts: FakeTts) -> dict:
    return {
        "provider": "twilio", "fromNumber": "+15550100000", "inboundPolicy": "open", "inboundGreeting": GREETING,
        "maxConcurrentCalls": 4,
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest.base_url},
        "streaming": {"enabled": True, "provider": "local"},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": TTS_KEY, "baseUrl": f"{tts.url}/v1"}}},
    }


async def timed_rpc(cluster, method: str, params: dict, node: int = 0) -> tuple[float, dict]:
    started = time.monotonic()
    answer = await asyncio.to_thread(cluster.rpc, method, params, node, timeout=60)
    return time.monotonic() - started, answer


async def call_id_of(cluster, caller: StreamedCaller) -> str:
    def streamed() -> str | None:
        rows = cluster.rows("SELECT c.id FROM calls_call c JOIN calls_mediastream s ON s.call_id = c.id "
                            "WHERE c.provider_call_id = %s", (caller.sid,))
        return str(rows[0][0]) if rows else None

    return await await_until(sync_to_async(streamed), f"the stream of {caller.sid} to be recorded", timeout=20)


async def test_a_redis_restart_mid_call_keeps_the_stream_and_commands_fail_fast_naming_redis(make_cluster):
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    try:
        with FakeTts(openai_key=TTS_KEY, chunk_gap=0.0) as tts:
            cluster = await asyncio.to_thread(make_cluster, config=cluster_config(rest, tts), nodes=2, workers=1)
            try:
                await run_outage(cluster, make_cluster.redis)
            except AssertionError as exc:
                logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in cluster.processes()[1:])
                raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        rest.stop()


async def run_outage(cluster, redis) -> None:
    stream_node = cluster.nodes[1]

    def new_caller() -> StreamedCaller:
        return StreamedCaller(cluster.base, cluster.base + "/voice/webhook", account_sid=ACCOUNT, auth_token=TOKEN,
                              stream_base=stream_node.base)

    caller = await new_caller().connect()
    call_id = await call_id_of(cluster, caller)
    # The worker spoke the greeting on node 1's stream: the broker and the channel layer both work.
    await await_until(lambda: caller.speech_frames_received > 0, "the greeting to reach the caller", timeout=30)

    redis.stop()
    await await_until(lambda: "the channel layer (Redis) is unreachable" in stream_node.log(),
                      "node 1 to notice that Redis is gone", timeout=20)
    for method, params in (("voicecall.speak", {"callId": call_id, "message": "Are you still there?"}),
                           ("voicecall.continue", {"callId": call_id, "message": "Anything else?"})):
        took, answer = await timed_rpc(cluster, method, params)
        assert "error" in answer, (method, answer)
        assert "channel layer (Redis)" in answer["error"]["message"], (method, answer)
        assert answer["error"]["data"]["code"] == "UNAVAILABLE", (method, answer)
        assert took < COMMAND_BOUND, (method, took)
    # The stream goes on through the outage: the caller's audio keeps being taken.
    sent_in_outage = caller.frames_sent
    await await_until(lambda: caller.frames_sent >= sent_in_outage + 25, "half a second more of the caller's audio")
    assert not caller.closed_by_gateway.is_set(), caller.close_code

    await asyncio.to_thread(redis.start)  # the same port, nothing kept: no groups, no queues
    sent_at_restart = caller.frames_sent
    heard_before = caller.speech_frames_received

    async def spoken() -> dict | None:
        _, answer = await timed_rpc(cluster, "voicecall.speak", {"callId": call_id, "message": "We are back."})
        return answer if "result" in answer else None

    # The stream joined its call's group again: a command from node 0 reaches it and is played.
    assert (await await_until(spoken, "a speak to reach the stream once Redis is back", timeout=30,
                              interval=0.5))["result"] == {"success": True}
    assert caller.speech_frames_received > heard_before
    assert not caller.closed_by_gateway.is_set()

    # A call that starts after the outage is greeted: the worker is consuming the broker again.
    second = await new_caller().connect()
    second_id = await call_id_of(cluster, second)
    await await_until(lambda: second.speech_frames_received > 0, "the second call's greeting", timeout=60)

    # The first call ends cleanly: ended by RPC on node 0, its stream on node 1 closed normally.
    took, answer = await timed_rpc(cluster, "voicecall.end", {"callId": call_id})
    assert answer.get("result") == {"success": True}, answer
    await await_until(caller.closed_by_gateway.is_set, "node 1 to close the ended call's stream", timeout=10)
    assert caller.close_code == 1000

    def recorded() -> list[tuple] | None:
        rows = cluster.rows("SELECT c.state, c.end_reason, s.close_reason, (s.stats->>'frames_in')::int "
                            "FROM calls_call c JOIN calls_mediastream s ON s.call_id = c.id "
                            "WHERE c.id = %s AND s.closed_at IS NOT NULL", (call_id,))
        return rows or None

    [(state, end_reason, close_reason, frames_in)] = await await_until(
        sync_to_async(recorded), "the first call's end and its stream's close to be recorded", timeout=15)
    assert (state, end_reason, close_reason) == ("hangup-bot", "hangup-bot", "call ended")
    assert frames_in >= sent_at_restart - 5, (frames_in, sent_at_restart)  # the outage's audio was taken too

    await second.hang_up()
    await timed_rpc(cluster, "voicecall.end", {"callId": second_id})
    for node in cluster.nodes:
        assert "handler failed" not in node.log(), node.log()[-4000:]
    assert "answers again" in stream_node.log()
