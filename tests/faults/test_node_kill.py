"""`kill -9` of the gateway process that holds a live media stream, in a real cluster: another process's sweep ends the call.

Two gateways behind the balancer, a Celery worker and beat on a private PostgreSQL database and a
private redis-server (tests/cluster.py), the Twilio carrier on a loopback REST stub. A caller's
webhooks and media stream go to node 0, which is killed with SIGKILL while webhooks are still
arriving. Within the heartbeat timeout, two sweeps and the disconnect grace the call is ended with
a reason naming the dead node, its stream row is closed, a new inbound streamed call under
`maxConcurrentCalls: 1` is no longer put on hold, and every webhook node 0 acknowledged is in the
database.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from websockets.sync.client import connect

from calls.simulator.call import parse_stream
from calls.simulator.rest import TwilioRestStub
from providers.carriers.twilio.webhook import signature
from tests.cluster import distributed, make_cluster  # noqa: F401 (make_cluster is a fixture)
from tests.waiting import wait_until

pytestmark = [distributed, pytest.mark.timeout(300)]

ACCOUNT = "AC" + "9" * 32
TOKEN = "node-kill-token"
CALLER, CALLEE = "+15550100001", "+15550100000"
HEARTBEAT, TIMEOUT = 1.0, 3.0
GRACE = 2.0


class Caller:
    """Twilio's side of inbound calls: signed webhooks (signed for the public URL, sent to any node) and a media stream."""

    def __init__(self, public_url: str) -> None:
        self.webhook_url = public_url.rstrip("/") + "/voice/webhook"

    def webhook(self, base: str, sid: str, **params: str) -> httpx.Response:
        body = {"CallSid": sid, "AccountSid": ACCOUNT, "From": CALLER, "To": CALLEE, "Caller": CALLER, "Called": CALLEE,
                "Direction": "inbound", "ApiVersion": "2010-04-01", **params}
        return httpx.post(base + "/voice/webhook", content=urlencode(body), timeout=10, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature(TOKEN, self.webhook_url, list(body.items())),
            "I-Twilio-Idempotency-Token": secrets.token_hex(8),
        })

    def ring(self, base: str, sid: str) -> tuple[str | None, str | None]:
        """The voice webhook of a new inbound call: the stream URL and token its TwiML connects, or (None, None) on hold."""
        answer = self.webhook(base, sid, CallStatus="ringing")
        assert answer.status_code == 200, answer.text
        return parse_stream(answer.text)

    @staticmethod
    @contextmanager
    def stream(port: int, url: str, token: str, sid: str) -> Iterator[None]:
        """The call's media stream on the gateway at `port` (Twilio's connected and start messages), open for the block."""
        path = urlsplit(url).path
        with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, compression=None) as ws:
            stream_sid = "MZ" + secrets.token_hex(16)
            ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
                "accountSid": ACCOUNT, "streamSid": stream_sid, "callSid": sid, "tracks": ["inbound"],
                "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            yield


def config(rest: TwilioRestStub) -> dict:
    return {
        "provider": "twilio", "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest.base_url},
        "fromNumber": CALLEE, "inboundPolicy": "open", "maxConcurrentCalls": 1,
        "streaming": {"enabled": True, "provider": "local"},
    }


def test_kill_9_of_the_node_holding_a_live_stream(make_cluster):
    hung_up: list[str] = []
    rest = TwilioRestStub(on_hangup=hung_up.append).start()
    try:
        cluster = make_cluster(config=config(rest), nodes=2, workers=1, env={
            "VOICECALL_NODE_HEARTBEAT_SECONDS": str(HEARTBEAT), "VOICECALL_NODE_TIMEOUT_SECONDS": str(TIMEOUT)})
        victim = cluster.nodes[0]
        caller = Caller(cluster.base)
        sid = "CA" + secrets.token_hex(16)
        rest.status[sid] = "in-progress"  # the carrier's side of the call, which the hang-up ends
        url, token = caller.ring(victim.base, sid)
        assert url and token
        with caller.stream(victim.port, url, token, sid):
            _run(cluster, caller, victim, sid, hung_up)
    finally:
        rest.stop()


def _run(cluster, caller: Caller, victim, sid: str, hung_up: list[str]) -> None:
    stream_of_call = ("SELECT s.closed_at, s.close_reason, n.pid FROM calls_mediastream s JOIN calls_call c ON c.id = s.call_id "
                      "LEFT JOIN calls_gatewaynode n ON n.id = s.node_id WHERE c.provider_call_id = %s")
    wait_until(lambda: cluster.rows(stream_of_call, (sid,)) == [(None, "", victim.pid)],
               "the stream to be open on node 0, with its node recorded", timeout=20)

    # While the stream is open it holds the one place: a second inbound call is put on hold.
    assert caller.ring(cluster.base, "CA" + secrets.token_hex(16)) == (None, None)

    # Webhooks keep arriving at node 0 (DTMF, a distinct code each) until it is killed mid-way.
    acknowledged: list[str] = []
    stop = threading.Event()

    def send_digits() -> None:
        index = 0
        while not stop.is_set():
            digits = f"{index:04d}"
            index += 1
            try:
                answer = caller.webhook(victim.base, sid, CallStatus="in-progress", Digits=digits)
            except httpx.HTTPError:
                continue  # refused: the process is gone
            if answer.status_code == 200:
                acknowledged.append(digits)

    sender = threading.Thread(target=send_digits, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(acknowledged) >= 5, "node 0 to acknowledge a few webhooks", timeout=30)
        victim.kill()
        killed_at = time.monotonic()
    finally:
        stop.set()
        sender.join(15)
    # Every 200 came from node 0 before it died (nothing answers after a SIGKILL).

    call_of = "SELECT id, state, end_reason FROM calls_call WHERE provider_call_id = %s"
    ended = wait_until(lambda: (rows := cluster.rows(call_of, (sid,))) and rows[0][1] not in (
        "initiated", "ringing", "answered", "active", "speaking", "listening") and rows[0],
        "the call held by the dead node to end", timeout=90, interval=0.1)
    took = time.monotonic() - killed_at
    call_id, state, end_reason = ended
    assert (state, end_reason) == ("hangup-bot", "hangup-bot")
    # Worst case: the timeout, a sweep to suspect and one to confirm, the grace, a deadline sweep;
    # the rest is slack for a machine busy with other tests.
    assert took < TIMEOUT + 2 * HEARTBEAT + GRACE + 1 + 20, took
    print(f"kill -9 to call ended: {took:.1f} s")

    [(closed_at, close_reason, pid)] = cluster.rows(stream_of_call, (sid,))
    assert closed_at is not None and close_reason == "gateway node died" and pid == victim.pid
    [(stopped_at, stop_reason)] = cluster.rows("SELECT stopped_at, stop_reason FROM calls_gatewaynode WHERE pid = %s",
                                               (victim.pid,))
    assert stopped_at is not None and stop_reason.startswith("died: no heartbeat since")
    [(payload,)] = cluster.rows("SELECT payload FROM calls_callevent WHERE call_id = %s AND type = 'stream.node_lost'",
                                (call_id,))
    assert payload["pid"] == victim.pid and payload["host"]
    assert cluster.rows("SELECT count(*) FROM calls_mediastream WHERE closed_at IS NULL") == [(0,)]
    wait_until(lambda: sid in hung_up, "the carrier to be asked to hang up the call", timeout=30)

    # Every webhook node 0 acknowledged before it died is on the database.
    stored = {payload["digits"] for (payload,) in cluster.rows(
        "SELECT payload FROM calls_callevent WHERE call_id = %s AND type = 'call.dtmf'", (call_id,))}
    assert len(acknowledged) >= 5 and set(acknowledged) <= stored, sorted(set(acknowledged) - stored)

    # The place is free again: a new inbound streamed call is connected to a stream, not held.
    url, token = caller.ring(cluster.base, "CA" + secrets.token_hex(16))
    assert url and token
    assert victim.alive() is False and cluster.nodes[1].alive()
