"""PostgreSQL connections cut under the gateway (pg_terminate_backend on its private database) while webhooks flow.

Requests during a cut may fail with a 5xx (the carrier retries them); the gateway reconnects by
itself, later webhooks succeed, nothing acknowledged is lost, and the sweeper, whose connection
was cut too, still ends a call at its deadline.
"""
from __future__ import annotations

import pytest

from tests.faults.gateway import GatewayProcess, private_postgres, terminate_backends
from tests.faults.test_kill_mid_webhooks import CONFIG, Carrier, assert_nothing_lost, call_events
from tests.waiting import wait_until

# Real processes: on a machine shared with other work a start alone can take many seconds.
pytestmark = pytest.mark.timeout(240)

CUTS = 3
EVENTS_BETWEEN_CUTS = 6


def test_gateway_recovers_from_cut_postgresql_connections(tmp_path):
    with private_postgres() as url:
        gateway = GatewayProcess(tmp_path, CONFIG, database_url=url)
        gateway.start()
        carrier = Carrier(gateway, "cut")
        try:
            carrier.start()
            cut = 0
            for _ in range(CUTS):
                target = len(carrier.acked) + EVENTS_BETWEEN_CUTS
                wait_until(lambda: len(carrier.acked) >= target or carrier.error, "webhooks acknowledged", timeout=60)
                cut += terminate_backends(url)
            # Webhooks after the last cut are acknowledged: the gateway reconnected by itself.
            target = len(carrier.acked) + EVENTS_BETWEEN_CUTS
            wait_until(lambda: len(carrier.acked) >= target or carrier.error, "webhooks after the last cut", timeout=60)
        finally:
            carrier.stopping.set()
            carrier.join(60)
        try:
            assert carrier.error is None, f"{carrier.error!r}\n{gateway.log()[-3000:]}"
            assert cut >= CUTS, "the gateway held no database connection to cut"
            assert gateway.process.poll() is None, "the gateway died"
            assert_nothing_lost(gateway, carrier)
            assert_sweeper_survives(gateway, url)
        finally:
            gateway.stop()


def assert_sweeper_survives(gateway: GatewayProcess, url: str) -> None:
    """A call answered after a cut, never ended by the carrier, is ended by the sweeper at its max-duration deadline."""
    terminate_backends(url)
    for event in call_events("cut-late", 0)[:2]:
        wait_until(lambda: gateway.post({"event": event}).status_code == 200, f"{event['id']} acknowledged", timeout=20)
    # Move the deadline near (maxDurationSeconds is 300 here) instead of waiting minutes.
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("UPDATE calls_call SET max_duration_deadline = NOW() + interval '1 second' "
                   "WHERE provider_call_id = %s", ("fault-cut-late-0",))
    terminate_backends(url)  # the sweeper's connection too

    def ended() -> bool:
        return gateway.rows("SELECT ended_at IS NOT NULL FROM calls_call WHERE provider_call_id = %s",
                            ("fault-cut-late-0",)) == [(True,)]

    wait_until(ended, "the sweeper to end the call at its deadline", timeout=60, interval=0.2)
