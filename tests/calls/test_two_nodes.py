"""Two gateway processes, a real Celery worker and beat, one PostgreSQL database and one Redis: a call split across nodes.

A simulated Twilio caller's webhooks go to node A and its media stream to node B (as a load
balancer may route them). `speak`, `continue`, `dtmf` and `end` sent by RPC to node A act on the
call whose stream lives on node B: the stream plays what A asked for, the caller's answer comes
back to A's `continue`, the digits reach the carrier, and the hang-up closes B's stream. An
outbound call started by RPC on node B is dialed by the Celery worker, not by B.

Skipped unless the run is distributed (DATABASE_URL on PostgreSQL and REDIS_URL set); every test
module gets its own PostgreSQL database and its own redis-server, so parallel runs share nothing.
"""
from __future__ import annotations

import asyncio

import pytest

from bench.gateway_process import start_helper, stop_helper
from calls.simulator.call import Gateway, Line
from tests.calls.split_caller import ClusterTwilio, SplitCaller, ancestors
from tests.cluster import cluster_running, distributed
from tests.waiting import await_until, wait_until

# Real processes on a machine shared with other work: starting them alone can take many seconds. One
# xdist worker runs both tests, so the module starts one cluster.
pytestmark = [distributed, pytest.mark.timeout(240), pytest.mark.xdist_group("two-nodes")]

CLINIC, CALLER, CALLEE = "+15550104000", "+15550104001", "+15550104002"
GREETING = "Welcome to the clinic."
SAID_BY_A = "Node A says your appointment is on Monday."
PROMPT = "What else can I do for you?"


@pytest.fixture(scope="module")
def twilio():
    with ClusterTwilio() as fake:
        yield fake


@pytest.fixture(scope="module")
def speech():
    """Instant fakes of Deepgram's streaming STT and OpenAI's TTS, in a process of their own."""
    process, urls = start_helper("cloud_fakes.py")
    yield urls
    stop_helper(process)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, twilio, speech):
    config = {
        "provider": "twilio", "fromNumber": CLINIC, "inboundPolicy": "open", "inboundGreeting": GREETING,
        "maxConcurrentCalls": 4,
        "twilio": {"accountSid": twilio.account_sid, "authToken": twilio.auth_token, "baseUrl": twilio.base_url},
        "streaming": {"enabled": True, "provider": "deepgram", "providers": {"deepgram": {
            "apiKey": speech["sttKey"], "baseUrl": speech["stt"], "endpointingMs": 300}}},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": speech["ttsKey"], "baseUrl": speech["tts"] + "/v1"}}},
    }
    with cluster_running(tmp_path_factory.mktemp("two-nodes"), config=config, nodes=2, workers=1) as (running, _):
        yield running


def bot_lines(cluster, call_id: str) -> list[str]:
    return [text for (text,) in cluster.rows(
        "SELECT text FROM calls_transcriptentry WHERE call_id = %s AND speaker = 'bot' ORDER BY id", (call_id,))]


def open_streams(cluster, call_id: str) -> int:
    return cluster.rows("SELECT count(*) FROM calls_mediastream WHERE call_id = %s AND closed_at IS NULL", (call_id,))[0][0]


async def _is(read, expected) -> bool:
    return (await read()) == expected


def logs(cluster) -> str:
    return "\n".join(f"--- {process.name} ---\n{process.log()[-3000:]}" for process in cluster.processes())


def result_of(answer: dict, cluster) -> dict:
    assert "result" in answer, f"{answer}\n{logs(cluster)}"
    return answer["result"]


async def test_commands_on_node_a_act_on_the_stream_held_by_node_b(cluster, twilio):
    a, b = cluster.nodes
    # Signed for the public URL (the balancer's), posted to node A; the stream URL's socket goes to node B.
    gateway = Gateway(base_url=a.base, webhook_url=f"{cluster.base}/voice/webhook", account_sid=twilio.account_sid,
                      auth_token=twilio.auth_token, stream_base_url=b.base)
    # The caller's one line is held until the test asks for it: its answer to A's `continue`.
    caller = SplitCaller(gateway, [Line("answer")], held=("answer",), line_ms=1200, twilio=twilio, caller=CALLER,
                         callee=CLINIC, max_seconds=120)
    call_task = asyncio.create_task(caller.run())
    db = asyncio.to_thread

    async def call_id() -> str | None:
        found = await db(cluster.rows, "SELECT id FROM calls_call WHERE provider_call_id = %s", (caller.sid,))
        return str(found[0][0]) if found else None

    try:
        cid = await await_until(call_id, "the ring webhook on node A to create the call", timeout=30)

        async def said() -> list[str]:
            return await db(bot_lines, cluster, cid)

        async def state() -> str:
            return (await db(cluster.rows, "SELECT state FROM calls_call WHERE id = %s", (cid,)))[0][0]

        # The stream landed on node B (node A never saw it) and the greeting is played on it.
        await await_until(lambda: db(open_streams, cluster, cid), "the media stream to open on node B", timeout=30)
        started = f"media stream {caller.stream_sid} started"
        await await_until(lambda: started in b.log(), "node B to log the stream's start", timeout=10)
        assert started not in a.log()
        assert await await_until(said, "the greeting to be played on node B's stream", timeout=30) == [GREETING]
        played_before = caller.report.speech_frames_played

        # speak on A: node B's stream plays it (the line is recorded only once played).
        spoken = await db(cluster.rpc, "voicecall.speak", {"callId": cid, "message": SAID_BY_A})
        assert result_of(spoken, cluster) == {"success": True}
        await await_until(lambda: caller.report.speech_frames_played > played_before,
                          "the caller to hear what node A said", timeout=20)
        assert (await said())[-1] == SAID_BY_A

        # continue on A: the prompt plays on B, the caller answers, B's transcript answers A's turn.
        heard_before = caller.report.speech_frames_played
        turn = asyncio.ensure_future(db(cluster.rpc, "voicecall.continue", {"callId": cid, "message": PROMPT}))
        await await_until(lambda: caller.report.speech_frames_played > heard_before or turn.done(),
                          "the caller to hear the prompt", timeout=20)
        caller.go("answer")
        answered = result_of(await asyncio.wait_for(turn, 60), cluster)
        assert answered["success"] is True and "book an appointment" in answered["transcript"], answered
        assert (await said())[-1] == PROMPT
        # Both went over node B's stream: the carrier was never asked to say anything itself.
        assert twilio.call(caller.sid).said == [] and twilio.updates(caller.sid) == []

        # dtmf on A: Twilio sends digits only through a TwiML update, which the carrier receives from node A.
        # (On Twilio itself the update also ends the <Connect><Stream>; this fake leaves the stream up.)
        pressed = await db(cluster.rpc, "voicecall.dtmf", {"callId": cid, "digits": "1234"})
        assert result_of(pressed, cluster) == {"success": True}
        assert await await_until(lambda: twilio.call(caller.sid).played_digits, "the carrier to play the digits",
                                 timeout=10) == ["1234"]

        # end on A: the carrier hangs up, B's stream closes, the call is recorded as ended by the bot.
        assert result_of(await db(cluster.rpc, "voicecall.end", {"callId": cid}), cluster) == {"success": True}
        report = await asyncio.wait_for(call_task, 60)
        assert report.outcome == "hangup-bot", (report.outcome, report.error)
        await await_until(lambda: _is(state, "hangup-bot"), "the call to be recorded as ended", timeout=20)
        await await_until(lambda: _is(lambda: db(open_streams, cluster, cid), 0), "node B to close the stream row",
                          timeout=20)
    except BaseException:
        call_task.cancel()
        print(logs(cluster))
        raise


def test_an_outbound_call_started_on_node_b_is_dialed_by_the_worker(cluster, twilio):
    before = len(twilio.dials())
    placed = result_of(cluster.rpc("voicecall.initiate", {"to": CALLEE, "message": "Your car is ready.",
                                                          "mode": "notify"}, node=1), cluster)
    cid = placed["callId"]
    dial = wait_until(lambda: twilio.dials()[before:], "the carrier to receive the dial", timeout=30)[0]
    assert dial.value("To") == CALLEE and cid in dial.value("StatusCallback"), dial.form
    sender = twilio.sender_pid(dial)
    assert sender is not None, "the process that sent the dial was not found"
    family = ancestors(sender)
    workers = {worker.pid for worker in cluster.workers}
    nodes = {node.pid for node in cluster.nodes}
    assert workers & set(family), f"dialed by pid {sender} ({family}), not by a worker {workers}; nodes {nodes}"
    assert not nodes & set(family)

    # The carrier's id is stored with the call; the callee answers, hears the message, and the call completes.
    sid = next(call.sid for call in list(twilio.calls.values()) if call.to == CALLEE and call.direction == "outbound-api")
    wait_until(lambda: cluster.rows("SELECT provider_call_id FROM calls_call WHERE id = %s", (cid,))[0][0] == sid,
               "the call to get the carrier's id", timeout=30)
    twilio.answer(sid)
    assert [said["text"] for said in twilio.call(sid).said] == ["Your car is ready."]
    wait_until(lambda: cluster.rows("SELECT state FROM calls_call WHERE id = %s", (cid,))[0][0] == "completed",
               "the call to be recorded as completed", timeout=30)
