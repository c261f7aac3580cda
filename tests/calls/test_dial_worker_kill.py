"""kill -9 of the Celery worker while dial jobs run: each call is dialed exactly once (real processes, distributed).

The cluster (a gateway, the balancer, a worker, beat) dials through the fake Twilio, whose REST log
is the outbox. Two dials are caught mid-way when the worker dies: one whose request the carrier is
holding open (it may have placed the call: never sent again; the carrier's webhooks link it), and
one waiting for its rate-limit slot (not sent yet: resumed on the next worker once its claim expires).
"""
from __future__ import annotations

import re
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.cluster import distributed, make_cluster  # noqa: F401 (a fixture)
from tests.fakes.base import Recorded, Reply
from tests.fakes.twilio import FakeTwilio
from tests.waiting import stays, wait_until

pytestmark = [distributed, pytest.mark.timeout(360)]

CREATE = r"/Calls\.json$"
# One dial every 20 s: the second call waits its slot long enough to be caught waiting.
CALLS_PER_SECOND = 0.05


class HoldingTwilio(FakeTwilio):
    """Fake Twilio that holds the first create-call request open until `release` (a dial in flight on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()
        self._held_one = False

    def _dispatch(self, record: Recorded) -> Reply:
        if record.method == "POST" and re.search(CREATE, record.path) and not self._held_one:
            self._held_one = True
            self.holding.set()
            self.release.wait(120)
        return super()._dispatch(record)


def call_id_of(record: Recorded) -> str | None:
    """Our call id, from the StatusCallback URL the dial request carried."""
    callback = (record.form or {}).get("StatusCallback", [""])[0]
    return parse_qs(urlsplit(callback).query).get("callId", [None])[0]


def dials_of(twilio: FakeTwilio, call_id: str) -> int:
    return sum(1 for record in twilio.requests_to("POST", CREATE) if call_id_of(record) == call_id)


def test_a_killed_worker_dials_nothing_twice(make_cluster):
    with HoldingTwilio() as twilio:
        cluster = make_cluster(
            nodes=1, workers=1,
            config={
                "provider": "twilio", "fromNumber": "+15550000000", "maxConcurrentCalls": 5,
                "outbound": {"defaultMode": "notify"},
                "twilio": {"accountSid": twilio.account_sid, "authToken": twilio.auth_token, "baseUrl": twilio.base_url,
                           "callsPerSecond": CALLS_PER_SECOND},
            },
            env={"VOICECALL_DIAL_WAIT_SECONDS": "1"},
        )

        def place(to: str) -> dict:
            reply = cluster.rpc("voicecall.initiate", {"to": to, "message": "Your order is ready"})
            assert "result" in reply, reply
            return reply["result"]

        in_flight = place("+15550001111")
        assert in_flight["initiated"] is False and in_flight["queued"] is True  # the carrier holds its request
        wait_until(twilio.holding.is_set, "the first dial request held open by the carrier")
        waiting = place("+15550002222")

        def claimed(call_id: str) -> bool:
            return bool(cluster.rows("SELECT 1 FROM calls_call WHERE id = %s AND dial_claimed_at IS NOT NULL", (call_id,)))

        wait_until(lambda: claimed(waiting["callId"]), "the second dial claimed, waiting for its rate-limit slot")
        rows = cluster.rows("SELECT id::text, dial_attempts, dial_requested_at IS NOT NULL FROM calls_call ORDER BY started_at")
        assert rows == [(in_flight["callId"], 1, True), (waiting["callId"], 0, False)]

        cluster.workers[0].kill()  # the worker and its pool processes, mid-job
        # The carrier finishes the first dial for nobody: the call exists there, and its webhooks carry our id.
        twilio.release.set()
        sid = wait_until(lambda: next((c.sid for c in twilio.calls.values() if c.to == "+15550001111"), None),
                         "the carrier's call for the first dial")
        twilio.ring(sid)
        wait_until(lambda: cluster.rows("SELECT provider_call_id FROM calls_call WHERE id = %s",
                                        (in_flight["callId"],)) == [(sid,)],
                   "the first call linked to the carrier's call by its webhook")

        cluster.add_worker()
        # Beat's resume finds the second dial's claim abandoned (no longer renewed) and queues it again.
        wait_until(lambda: dials_of(twilio, waiting["callId"]) == 1, "the second call dialed by the new worker",
                   timeout=150, interval=0.5)
        wait_until(lambda: cluster.rows("SELECT provider_call_id IS NOT NULL, dialed_at IS NOT NULL, state FROM calls_call "
                                        "WHERE id = %s", (waiting["callId"],)) == [(True, True, "initiated")],
                   "the second call placed")
        # The resume that redialed the second call saw the first one's dead claim too: never sent again.
        stays(lambda: dials_of(twilio, in_flight["callId"]) == 1 and dials_of(twilio, waiting["callId"]) == 1,
                     "one dial request per call", seconds=3)
        assert len(twilio.requests_to("POST", CREATE)) == 2
        assert cluster.rows("SELECT state FROM calls_call WHERE id = %s", (in_flight["callId"],)) == [("ringing",)]
        assert "its dial was claimed by a process that is gone before it asked the carrier" in cluster.workers[1].log()
