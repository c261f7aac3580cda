"""Restore under faults, with real gateway processes: a carrier that never answers never keeps the port closed.

32 live calls on the database and a carrier REST API that accepts connections and never replies:
the gateway answers /healthz while restore is still running, restore gives up at its bound and
/readyz says so; a dial to that carrier fails cleanly while the gateway keeps serving. A carrier
answering 5xx to the status checks leaves every call kept with its deadlines.
"""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.fakes.telnyx import FakeTelnyx
from tests.faults.restore_process import Database, GatewayProcess, free_port
from tests.waiting import wait_until

LIVE_CALLS = 32
RESTORE_SECONDS = 8.0
TOKEN = "faults-write-token"

# Run in the gateway's own environment (manage.py shell): live answered calls with their deadlines on the rows.
SEED = f"""
from datetime import timedelta
from calls.models import Call
from calls.clock import now
at = now()
Call.objects.bulk_create([
    Call(provider="telnyx", provider_call_id=f"v3:live-{{n}}", direction="inbound", state="listening",
         from_number="+15550002222", to_number="+15550001111", started_at=at - timedelta(seconds=30),
         answered_at=at - timedelta(seconds=25), max_duration_deadline=at + timedelta(seconds=275))
    for n in range({LIVE_CALLS})
])
"""


class BlackHole:
    """A TCP port that accepts connections and never answers a byte (a carrier that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v2"

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)


def telnyx_config(base_url: str, port: int) -> dict:
    return {
        "provider": "telnyx", "fromNumber": "+15550001111", "publicUrl": f"http://127.0.0.1:{port}/voice/webhook",
        "inboundPolicy": "open", "maxConcurrentCalls": LIVE_CALLS + 8,
        # The webhook key is never used here: no carrier sends webhooks in these tests.
        "telnyx": {"apiKey": "KEY-faults", "connectionId": "conn-faults", "baseUrl": base_url,
                   "publicKey": FakeTelnyx().public_key_b64},
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    with Database(request.param, tmp_path) as db:
        yield db


def live_calls(database: Database) -> list[tuple]:
    return database.rows("SELECT state, max_duration_deadline IS NOT NULL FROM calls_call WHERE provider_call_id LIKE %s",
                         ("v3:live-%",))


def test_a_carrier_that_never_answers_keeps_neither_the_port_nor_the_gateway_waiting(database, tmp_path):
    with BlackHole() as carrier:
        port = free_port()
        gateway = GatewayProcess(tmp_path, database, telnyx_config(carrier.url, port), port=port, env={
            "VOICECALL_RESTORE_SECONDS": str(RESTORE_SECONDS), "VOICECALL_RPC_TOKENS": f"write:{TOKEN}"})
        gateway.migrate()
        gateway.manage("shell", "-c", SEED)
        try:
            to_healthz = gateway.start()
            # The port answered while restore was still asking the carrier (which it does for RESTORE_SECONDS
            # whatever happens): it did not wait for it. Restore starts just before the server does; on an
            # idle machine the port answers within 1 s of it (printed), RESTORE_SECONDS leaves room for a
            # loaded one.
            first = gateway.readyz()
            assert first["restore"]["state"] == "running", first
            assert first["ready"] is True and first["restore"]["limitSeconds"] == RESTORE_SECONDS
            print(f"launch to /healthz {to_healthz:.2f} s; restore had run {first['restore']['seconds']:.2f} s")
            wait_until(lambda: carrier.accepted, "restore to ask the carrier", timeout=5, interval=0.02)

            # A dial through the hanging carrier (REST) fails on its own timeout; meanwhile the gateway serves.
            answers: list[httpx.Response] = []
            dial = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{gateway.base}/voice/rpc", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                json={"jsonrpc": "2.0", "id": 1, "method": "voicecall.initiate",
                      "params": {"to": "+15550003333", "message": "Your order is ready.", "mode": "notify"}})))
            dial.start()
            began = time.monotonic()
            while dial.is_alive() and time.monotonic() - began < 3:
                asked = time.monotonic()
                assert httpx.get(f"{gateway.base}/healthz", timeout=2).status_code == 200
                # Well under the dial's 10 s wait on the carrier (the margin is for a loaded machine).
                assert time.monotonic() - asked < 3.0

            # Restore gives up at its bound and says so; every call it could not check is kept with its deadline.
            state = wait_until(lambda: (s := gateway.readyz()["restore"])["state"] != "running" and s,
                               "restore to end", timeout=RESTORE_SECONDS + 5, interval=0.1)
            assert state["state"] == "timed out", state
            print(f"restore {state['state']} after {state['seconds']:.2f} s (bound {RESTORE_SECONDS:g} s)")
            assert f"{LIVE_CALLS} not checked in time" in state["detail"], state
            assert RESTORE_SECONDS - 0.5 <= state["seconds"] <= RESTORE_SECONDS + 4, state
            assert gateway.readyz()["ready"] is True
            assert live_calls(database) == [("listening", True)] * LIVE_CALLS
            assert "restore stopped after" in gateway.log()

            dial.join(30)
            assert answers, "the dial never answered"
            body = answers[0].json()
            assert answers[0].status_code < 500 and "error" in body, body
            assert database.rows("SELECT state FROM calls_call WHERE to_number = %s", ("+15550003333",)) == [("failed",)], body
        finally:
            gateway.stop()


def test_a_carrier_answering_5xx_to_restore_leaves_every_call_kept(database, tmp_path):
    with FakeTelnyx() as telnyx:
        port = free_port()
        config = telnyx_config(telnyx.api_url, port)
        config["telnyx"]["publicKey"] = telnyx.public_key_b64
        gateway = GatewayProcess(tmp_path, database, config, port=port)
        gateway.migrate()
        gateway.manage("shell", "-c", SEED)
        telnyx.fail_next("GET", r"^/v2/calls/", 503, telnyx.error_body("10011", "Service unavailable"), times=LIVE_CALLS)
        try:
            gateway.start()
            state = wait_until(lambda: (s := gateway.readyz()["restore"])["state"] != "running" and s,
                               "restore to end", timeout=20, interval=0.1)
            assert state["state"] == "done", state
            assert f"kept {LIVE_CALLS}," in state["detail"], state
            assert len(telnyx.requests_to("GET", r"^/v2/calls/")) == LIVE_CALLS
            assert live_calls(database) == [("listening", True)] * LIVE_CALLS
        finally:
            gateway.stop()
