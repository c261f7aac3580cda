"""A greeting is never lost: kill -9 while it is in flight, restart, and it is spoken once; a carrier's 5xx is retried.

Real gateway processes (SQLite file, and PostgreSQL when reachable) against the fake Telnyx, whose
REST log is the outbox: every `speak` command the carrier received is in it.
"""
from __future__ import annotations

import re
import threading

import httpx
import pytest

from tests.fakes.base import Recorded, Reply
from tests.fakes.telnyx import FakeTelnyx
from tests.faults.restore_process import Database, GatewayProcess, free_port
from tests.waiting import wait_until

GREETING = "Thanks for calling the clinic."
CALLER, CLINIC = "+15550002222", "+15550001111"
SPEAK = r"/actions/speak$"
TOKEN = "faults-greeting-token"



class StallingTelnyx(FakeTelnyx):
    """Fake Telnyx whose commands matching `action` hang while `stall` is set (a greeting in flight on demand).

    A stalled command never reaches the call: once released it is answered 503 (its sender is gone).
    """

    def __init__(self, action: str = SPEAK) -> None:
        super().__init__()
        self.action = action
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def _dispatch(self, record: Recorded) -> Reply:
        if self.stall.is_set() and re.search(self.action, record.path):
            self.stalled.set()
            self.release.wait(30)
            record.status = 503
            return Reply(503, self.error_body("10011", "Service unavailable"))
        return super()._dispatch(record)


def telnyx_config(telnyx: FakeTelnyx, port: int) -> dict:
    return {
        "provider": "telnyx", "fromNumber": CLINIC, "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
        "inboundPolicy": "open", "inboundGreeting": GREETING,
        "telnyx": {"apiKey": telnyx.api_key, "connectionId": "conn-faults", "publicKey": telnyx.public_key_b64,
                   "baseUrl": telnyx.api_url},
    }


def greetings_said(telnyx: FakeTelnyx, control_id: str) -> list[str]:
    return [body["payload"] for body in telnyx.call(control_id).spoken if body.get("payload") == GREETING]


def call_row(database: Database) -> tuple:
    rows = database.rows("SELECT state, initial_message, greeting_claimed_at IS NOT NULL FROM calls_call")
    assert len(rows) == 1, rows
    return tuple(rows[0])


def wait_greeted(database: Database, gateway: GatewayProcess) -> None:
    """The greeting recorded as said: its message cleared and its claim released on a live call.

    (Listening, or speaking again: Telnyx's call.speak.started may arrive after the gateway moved on.)
    """
    seen: list[tuple] = []

    def greeted() -> bool:
        seen.append(call_row(database))
        return seen[-1][0] in ("listening", "speaking") and tuple(seen[-1][1:]) == ("", False)

    try:
        wait_until(greeted, "the greeting to be recorded as said", timeout=10, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last row {seen[-1]}\n{gateway.log()}") from None


def bot_lines(database: Database) -> list[str]:
    return [row[0] for row in database.rows("SELECT text FROM calls_transcriptentry WHERE speaker = 'bot' ORDER BY id")]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    with Database(request.param, tmp_path) as db:
        yield db


def test_kill_during_the_greeting_then_restart_speaks_it_once(database, tmp_path):
    with StallingTelnyx() as telnyx:
        port = free_port()
        gateway = GatewayProcess(tmp_path, database, telnyx_config(telnyx, port), port=port)
        gateway.migrate()
        try:
            gateway.start()
            telnyx.stall.set()
            call = telnyx.ring_inbound(CALLER, CLINIC, f"{gateway.base}/voice/webhook", wait=False)
            wait_until(telnyx.stalled.is_set, "the greeting's speak command to be in flight", timeout=20, interval=0.02)
            # Acknowledged answer, greeting claimed and not said: what a crash leaves.
            state, message, claimed = call_row(database)
            assert (message, claimed) == (GREETING, True) and state in ("answered", "speaking"), (state, message)
            gateway.kill()
            telnyx.stall.clear()
            telnyx.release.set()

            gateway.start()
            wait_until(lambda: greetings_said(telnyx, call.call_control_id) == [GREETING],
                       "the restarted gateway to speak the greeting", timeout=20, interval=0.05)
            wait_greeted(database, gateway)
            assert bot_lines(database) == [GREETING]
            # Once: nothing else speaks it again (the sweeper, a late restore).
            telnyx.wait_idle()
            assert greetings_said(telnyx, call.call_control_id) == [GREETING]
            assert "its greeting was claimed by a process that is gone" in gateway.log()
            assert gateway.restore_state() == "done"
        finally:
            gateway.stop()
        assert not telnyx.errors


def test_kill_right_after_the_answer_before_the_greeting_began_then_restart_greets(database, tmp_path):
    """The answer's job is lost before it claimed the greeting (it was sending the dial digits first)."""
    with StallingTelnyx(action=r"/actions/send_dtmf$") as telnyx:
        port = free_port()
        gateway = GatewayProcess(tmp_path, database, telnyx_config(telnyx, port), port=port,
                                 env={"VOICECALL_RPC_TOKENS": f"write:{TOKEN}"})
        gateway.migrate()
        try:
            gateway.start()
            placed = httpx.post(f"{gateway.base}/voice/rpc", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, json={
                "jsonrpc": "2.0", "id": 1, "method": "voicecall.initiate",
                "params": {"to": CALLER, "message": GREETING, "mode": "conversation", "dtmfSequence": "1234"}}).json()
            assert "result" in placed, placed
            control_id = telnyx.last_call.call_control_id
            telnyx.stall.set()
            telnyx.answer(control_id, wait=False)
            wait_until(telnyx.stalled.is_set, "the answer's job to be sending the digits", timeout=20, interval=0.02)
            state, message, claimed = call_row(database)
            assert (state, message, claimed) == ("answered", GREETING, False), (state, message, claimed)
            gateway.kill()
            telnyx.stall.clear()
            telnyx.release.set()

            gateway.start()
            wait_until(lambda: greetings_said(telnyx, control_id) == [GREETING],
                       "the restarted gateway to greet the answered call", timeout=20, interval=0.05)
            wait_greeted(database, gateway)
            assert bot_lines(database) == [GREETING]
            assert "answered but never greeted" in gateway.log()
            telnyx.wait_idle()
            assert greetings_said(telnyx, control_id) == [GREETING]
        finally:
            gateway.stop()
        assert not telnyx.errors


def test_a_greeting_the_carrier_refuses_with_5xx_is_spoken_once_it_recovers(database, tmp_path):
    with FakeTelnyx() as telnyx:
        port = free_port()
        gateway = GatewayProcess(tmp_path, database, telnyx_config(telnyx, port), port=port,
                                 env={"VOICECALL_RESUME_SECONDS": "1"})
        gateway.migrate()
        # The carrier is down for the first two speak commands, then back.
        telnyx.fail_next("POST", SPEAK, 500, telnyx.error_body("10011", "Internal server error"), times=2)
        try:
            gateway.start()
            call = telnyx.ring_inbound(CALLER, CLINIC, f"{gateway.base}/voice/webhook", wait=False)
            wait_until(lambda: greetings_said(telnyx, call.call_control_id) == [GREETING],
                       "the greeting to be spoken after the carrier recovers", timeout=20, interval=0.05)
            statuses = [r.status for r in telnyx.requests_to("POST", SPEAK)]
            assert statuses[:2] == [500, 500] and statuses[2:] == [200], statuses
            wait_greeted(database, gateway)
            assert bot_lines(database) == [GREETING]
            assert "kept for a retry" in gateway.log()
        finally:
            gateway.stop()
