"""GET /metrics across real processes: prometheus_client's multiprocess mode sums every gateway's counters in one scrape.

Two plain gateway processes (Daphne and uvicorn) share one PROMETHEUS_MULTIPROC_DIR; and a cluster
(`manage.py voicecall cluster`'s Cluster, distributed mode) gives its gateways and workers a fresh one.
"""
from __future__ import annotations

import httpx

from calls.metrics import multiproc
from tests.cluster import cluster_running, distributed
from tests.faults.gateway import GatewayProcess
from tests.metrics_scrape import parse, value

EMPTY = {"events": []}


def scrape(base: str) -> dict:
    response = httpx.get(base + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def test_one_scrape_sums_both_processes_counters_and_keeps_a_dead_ones(tmp_path):
    shared = multiproc.fresh(tmp_path / "prometheus")
    env = {multiproc.ENV: str(shared)}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with GatewayProcess(tmp_path / "a", {}, env=env) as daphne, \
            GatewayProcess(tmp_path / "b", {}, env=env, server="uvicorn") as uvicorn:
        for gateway, malformed in ((daphne, 1), (uvicorn, 2)):
            assert gateway.post(EMPTY).status_code == 200
            for _ in range(malformed):
                assert gateway.post(b"{not json").status_code == 400
        # An idle-free refusal under each server's own guard: a declared body over the webhook's cap.
        for gateway in (daphne, uvicorn):
            assert httpx.post(gateway.base + "/voice/webhook", content=b"x" * (64 * 1024 + 1), timeout=5).status_code == 413

        for gateway in (daphne, uvicorn):  # the same totals, whichever process answers
            samples = scrape(gateway.base)
            assert value(samples, "voicecall_webhook_requests_total", carrier="mock", status="200") == 2
            assert value(samples, "voicecall_webhook_requests_total", carrier="mock", status="400") == 3
            assert value(samples, "voicecall_webhook_request_duration_seconds_count", carrier="mock") >= 5
            assert value(samples, "voicecall_refused_requests_total", reason="webhook_malformed") == 3
            assert value(samples, "voicecall_refused_requests_total", reason="body_too_large") == 2
        files = sorted(path.name for path in shared.glob("*.db"))
        assert any(str(daphne.process.pid) in name for name in files)
        assert any(str(uvicorn.process.pid) in name for name in files)

        uvicorn.kill()
        multiproc.process_exited(uvicorn.process.pid, shared)
        samples = scrape(daphne.base)  # a process gone: what it counted still counts
        assert value(samples, "voicecall_webhook_requests_total", carrier="mock", status="400") == 3


def test_without_the_directory_each_process_shows_its_own(tmp_path):
    with GatewayProcess(tmp_path, {}) as gateway:
        assert gateway.post(b"{not json").status_code == 400
        samples = scrape(gateway.base)
        assert value(samples, "voicecall_webhook_requests_total", carrier="mock", status="400") == 1
        assert value(samples, "process_resident_memory_bytes") > 0  # prometheus_client's process metrics


def test_fresh_empties_only_the_values_of_an_earlier_run(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old")
    (directory / "README").write_text("kept")
    assert multiproc.fresh(directory) == directory
    assert sorted(path.name for path in directory.iterdir()) == ["README"]
    assert multiproc.fresh(tmp_path / "new").is_dir()


@distributed
def test_a_scrape_through_the_balancer_shows_the_whole_clusters_counters(tmp_path):
    with cluster_running(tmp_path, workers=1, beat=False) as (cluster, _redis):
        assert cluster.metrics_dir.is_dir()
        for node in cluster.nodes:
            assert httpx.post(node.base + "/voice/webhook", content=b"{not json", timeout=5).status_code == 400
        for _ in range(2):  # each lands on a node of the balancer's choosing: the totals are the cluster's
            samples = scrape(cluster.base)
            assert value(samples, "voicecall_webhook_requests_total", carrier="mock", status="400") == 2
            assert value(samples, "voicecall_refused_requests_total", reason="webhook_malformed") == 2
            assert value(samples, "voicecall_gateway_nodes_live") == 2
        written = {int(path.stem.rsplit("_", 1)[1]) for path in cluster.metrics_dir.glob("*.db")}
        assert {node.pid for node in cluster.nodes} <= written  # one set of files per process
