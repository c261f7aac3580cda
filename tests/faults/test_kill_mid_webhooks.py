"""`kill -9` of the gateway while a carrier streams webhooks (SQLite and PostgreSQL): nothing acknowledged is lost, no call stays open.

A client thread plays the carrier: call after call, one event per request (initiated, answered,
two final transcripts, ended), each retried until the gateway acknowledges it with a 2xx, as a
carrier retries. The gateway is killed with SIGKILL several times mid-stream and restarted on the
same port and database. Afterwards every acknowledged event and transcript is in the database,
every call whose ending was acknowledged is ended, and any other call has a deadline the
sweeper acts on.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.faults.gateway import GatewayProcess, private_postgres
from tests.waiting import wait_until

# Real processes: on a machine shared with other work a start alone can take many seconds.
pytestmark = pytest.mark.timeout(240)

KILLS = 2
EVENTS_BETWEEN_KILLS = 6
CONFIG = {
    "provider": "mock", "inboundPolicy": "open", "inboundGreeting": "Hello.", "maxConcurrentCalls": 50,
    "agents": {"main": {"responder": {"type": "scripted", "replies": ["Noted."]}}},
}
TERMINAL = ("completed", "hangup-user", "hangup-bot", "timeout", "busy", "no-answer", "failed", "error", "voicemail")


def call_events(tag: str, number: int) -> list[dict]:
    cid = f"fault-{tag}-{number}"
    parties = {"from": "+15557650000", "to": "+15550009999"}
    return [
        {"type": "call.initiated", "callId": cid, "providerCallId": cid, "direction": "inbound", **parties, "id": f"{cid}-init"},
        {"type": "call.answered", "callId": cid, "id": f"{cid}-answer"},
        {"type": "call.speech", "callId": cid, "transcript": f"first words of call {number}", "id": f"{cid}-s1"},
        {"type": "call.speech", "callId": cid, "transcript": f"second words of call {number}", "id": f"{cid}-s2"},
        {"type": "call.ended", "callId": cid, "reason": "completed", "id": f"{cid}-end"},
    ]


class Carrier(threading.Thread):
    """Streams calls' events to the gateway until asked to stop (after the call in progress ends)."""

    def __init__(self, gateway: GatewayProcess, tag: str) -> None:
        super().__init__(daemon=True, name="fault-carrier")
        self.gateway, self.tag = gateway, tag
        self.acked: list[dict] = []
        self.refused: dict[str, int] = {}  # what an unacknowledged attempt got: an error name or a status
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            number = 0
            while not self.stopping.is_set():
                for event in call_events(self.tag, number):
                    self._deliver(event)
                number += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _deliver(self, event: dict) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = self.gateway.post({"event": event}, timeout=10)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            else:
                if 200 <= response.status_code < 300:
                    self.acked.append(event)
                    return
                if response.status_code < 500:
                    raise AssertionError(f"{event['id']} refused: {response.status_code} {response.text}")
                outcome = str(response.status_code)
            self.refused[outcome] = self.refused.get(outcome, 0) + 1
            time.sleep(0.05)  # a carrier's retry interval; the gateway may be restarting
        raise AssertionError(f"{event['id']} never acknowledged")


def run_kills(gateway: GatewayProcess, tag: str) -> Carrier:
    carrier = Carrier(gateway, tag)
    gateway.start()
    carrier.start()
    try:
        for _ in range(KILLS):
            target = len(carrier.acked) + EVENTS_BETWEEN_KILLS
            wait_until(lambda: len(carrier.acked) >= target or carrier.error, "events acknowledged", timeout=60)
            gateway.kill()
            gateway.start()
        target = len(carrier.acked) + EVENTS_BETWEEN_KILLS
        wait_until(lambda: len(carrier.acked) >= target or carrier.error, "events after the last restart", timeout=60)
    finally:
        carrier.stopping.set()
        carrier.join(90)
    assert carrier.error is None, f"{carrier.error!r}\n{gateway.log()[-3000:]}"
    # The stream really crossed the kills: some attempts went unanswered and were retried.
    assert carrier.refused, "no delivery was interrupted by a kill"
    return carrier


def assert_nothing_lost(gateway: GatewayProcess, carrier: Carrier) -> None:
    stored = {key for (key,) in gateway.rows("SELECT dedupe_key FROM calls_callevent")}
    missing = [e["id"] for e in carrier.acked if e["id"] not in stored]
    assert not missing, f"acknowledged but not stored: {missing}"

    said = set(gateway.rows("SELECT c.provider_call_id, t.text FROM calls_transcriptentry t "
                            "JOIN calls_call c ON c.id = t.call_id WHERE t.speaker = 'user'"))
    lost = [e for e in carrier.acked if e["type"] == "call.speech" and (e["callId"], e["transcript"]) not in said]
    assert not lost, f"acknowledged transcripts missing: {lost}"
    duplicated = gateway.rows("SELECT c.provider_call_id, t.text, COUNT(*) FROM calls_transcriptentry t "
                              "JOIN calls_call c ON c.id = t.call_id WHERE t.speaker = 'user' "
                              "GROUP BY c.provider_call_id, t.text HAVING COUNT(*) > 1")
    assert not duplicated, f"a retried event was applied twice: {duplicated}"

    calls = {cid: (state, ended, deadline, answered) for cid, state, ended, deadline, answered in gateway.rows(
        "SELECT provider_call_id, state, ended_at, max_duration_deadline, answered_at FROM calls_call")}
    for cid in {e["callId"] for e in carrier.acked if e["type"] == "call.ended"}:
        state, ended, _, _ = calls[cid]
        assert ended is not None and state in TERMINAL, (cid, calls[cid])
    # Nothing open forever: an unended call was answered with a max-duration deadline, or was
    # never answered (the stale-call reaper ends it).
    for cid, (state, ended, deadline, answered) in calls.items():
        if ended is None:
            assert deadline is not None or answered is None, (cid, calls[cid])


def test_kill_9_mid_webhooks_on_sqlite(tmp_path):
    gateway = GatewayProcess(tmp_path, CONFIG)
    try:
        carrier = run_kills(gateway, "sqlite")
    finally:
        gateway.stop()
    assert gateway.starts == KILLS + 1
    assert_nothing_lost(gateway, carrier)


def test_kill_9_mid_webhooks_on_postgresql(tmp_path):
    with private_postgres() as url:
        gateway = GatewayProcess(tmp_path, CONFIG, database_url=url)
        try:
            carrier = run_kills(gateway, "pg")
        finally:
            gateway.stop()
        assert_nothing_lost(gateway, carrier)

