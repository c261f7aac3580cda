"""The local cluster with real processes: gateways behind the balancer, a Celery worker and beat (calls/cli/cluster.py)."""
from __future__ import annotations

import os

import httpx

from tests.cluster import cluster_running, distributed
from tests.waiting import wait_until

pytestmark = distributed


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_cluster_serves_through_the_balancer_routes_around_a_dead_node_and_leaves_nothing_running(tmp_path):
    with cluster_running(tmp_path, config={"maxConcurrentCalls": 3}) as (cluster, _redis):
        groups = [process.pid for process in cluster.processes()]
        assert len(groups) == 5  # balancer, two gateways, a worker, beat

        for node in (0, 1, None):
            assert cluster.rpc("voicecall.status", {}, node=node)["result"]["found"] is True
        placed = cluster.rpc("voicecall.initiate", {"to": "+15550001111", "message": "Hello", "mode": "notify"})
        call_id = placed["result"]["callId"]
        assert cluster.rows("SELECT count(*) FROM calls_call WHERE id = %s", (call_id,)) == [(1,)]
        assert cluster.rpc("voicecall.status", {}, token="x" * 32)["error"]["message"] == "Unauthorized: invalid token"

        cluster.nodes[0].kill()
        assert group_gone(groups[1])
        # Every connection lands on the live node: none is refused or answered 502.
        for _ in range(6):
            assert httpx.get(cluster.base + "/healthz", timeout=5).status_code == 200
        assert "does not answer" in cluster.balancer.log()

        cluster.nodes[0].start()
        assert httpx.get(cluster.nodes[0].base + "/healthz", timeout=5).status_code == 200
        worker = cluster.add_worker()
        assert worker.alive() and len(cluster.workers) == 2
        groups.append(worker.pid)
        groups.append(cluster.nodes[0].pid)

    for pgid in groups:
        wait_until(lambda: group_gone(pgid), f"process group {pgid} to be gone", timeout=10)
