"""The local cluster with real processes: gateways behind the balancer, a Celery worker and beat (calls/cli/cluster.py)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import psycopg
import pytest

from calls.cli.cluster import NOT_INHERITED
from calls.free_ports import free_port
from tests.cluster import cluster_running, distributed
from tests.faults.gateway import private_postgres
from tests.paths import ROOT
from tests.private_redis import PrivateRedis
from tests.waiting import wait_until


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@distributed
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
        cluster.beat.kill()
        cluster.beat.start()  # ready again: it wrote its schedule since this start
        assert cluster.beat.alive() and cluster.beat.starts == 2
        worker = cluster.add_worker()
        assert worker.alive() and len(cluster.workers) == 2
        groups.append(worker.pid)
        groups += [cluster.nodes[0].pid, cluster.beat.pid]

    for pgid in groups:
        wait_until(lambda: group_gone(pgid), f"process group {pgid} to be gone", timeout=10)


@distributed
def test_the_cluster_command_runs_a_working_cluster_and_stops_every_child_on_ctrl_c(tmp_path):
    """`manage.py voicecall cluster` as an operator runs it: a call placed by the CLI through the balancer is dialed by the worker."""
    port = free_port(count=3)
    (tmp_path / "voicecall.json").write_text(json.dumps({"serve": {"port": port}, "maxConcurrentCalls": 2}))
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED and not key.startswith("PYTEST_")}
    env.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(tmp_path / "data"),
               VOICECALL_CONFIG=str(tmp_path / "voicecall.json"), PYTHONUNBUFFERED="1")
    output = tmp_path / "cluster.out"
    with private_postgres() as database_url, PrivateRedis() as redis, open(output, "w") as out:
        command = subprocess.Popen(
            [sys.executable, "manage.py", "voicecall", "cluster", "--database-url", database_url, "--redis-url", redis.url],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        pids: dict[str, int] = {}
        try:
            wait_until(lambda: "Cluster ready:" in output.read_text() or command.poll() is not None,
                       "the cluster command to say it is ready", timeout=120, interval=0.1)
            text = output.read_text()
            assert "Cluster ready:" in text, text
            pids = {name: int(pid) for name, pid in re.findall(r"^  (\S+) .* pid (\d+) ", text, re.MULTILINE)}
            assert set(pids) == {"balancer", "node-0", "node-1", "worker-0", "beat"}, text
            assert f"balancer   http://127.0.0.1:{port} " in text
            assert f"Gateway at http://127.0.0.1:{port} (Ctrl-C stops everything)" in text

            # The CLI on this machine finds the gateway at serve.port (the balancer) with the data directory's token.
            placed = subprocess.run([sys.executable, "manage.py", "voicecall", "call", "-t", "+15550001111", "-m", "Hello",
                                     "--mode", "conversation"], cwd=ROOT, env={**env, "VOICECALL_GATEWAY_URL": ""},
                                    capture_output=True, text=True, timeout=60)
            assert placed.returncode == 0, placed.stderr
            assert "running standalone" not in placed.stderr
            call_id = json.loads(placed.stdout)["callId"]

            def dialed() -> bool:
                with psycopg.connect(database_url) as db:
                    return db.execute("SELECT provider_call_id FROM calls_call WHERE id = %s", (call_id,)).fetchall() == [
                        (f"mock-{call_id}",)]

            wait_until(dialed, "the call to be dialed", timeout=30)
            logs = tmp_path / "data" / "cluster"
            placed_line = f"outbound call {call_id} to +15550001111 placed (mock-{call_id}, conversation)"
            wait_until(lambda: placed_line in (logs / "worker-0.log").read_text(), "the worker to log the dial", timeout=10)
            assert not any(placed_line in (logs / f"node-{i}.log").read_text() for i in (0, 1))
            answered = httpx.post(f"http://127.0.0.1:{port}/voice/webhook", timeout=10,
                                  json={"event": {"type": "call.answered", "callId": call_id}})
            assert answered.status_code == 200
            greeted = f"call {call_id} answered; greeting: conversation"
            wait_until(lambda: greeted in (logs / "worker-0.log").read_text(), "the worker to run the greeting", timeout=30)

            os.kill(pids["node-1"], signal.SIGKILL)  # a child that dies is reported; the rest keep serving
            wait_until(lambda: f"node-1 (pid {pids['node-1']}) exited with code -9; the rest keep running." in
                       output.read_text(), "the command to report the dead node", timeout=10)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            command.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                code = command.wait(60)
            finally:
                command.kill()
            for name, pid in pids.items():
                wait_until(lambda: group_gone(pid), f"{name}'s process group to be gone", timeout=10)
    text = output.read_text()
    assert code == 0, text
    assert text.rstrip().endswith("Cluster stopped."), text


@distributed
def test_the_cluster_command_says_what_is_missing(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED and not key.startswith("PYTEST_")}
    env.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_DATA_DIR=str(tmp_path), VOICECALL_CONFIG="")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", "voicecall", "cluster", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    refused = run()
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("A cluster needs PostgreSQL and Redis: give --database-url (or DATABASE_URL) and "
                                      "--redis-url (or REDIS_URL) (`make cluster` sets both)")
    sqlite = run("--database-url", f"sqlite:///{tmp_path}/db.sqlite3", "--redis-url", "redis://127.0.0.1:1/0")
    assert sqlite.returncode == 1
    assert "DATABASE_URL must point at PostgreSQL (postgresql://…) for a cluster, got a sqlite URL" in sqlite.stderr
    dead = free_port()
    no_postgres = run("--database-url", f"postgresql://postgres@127.0.0.1:{dead}/voicecall", "--redis-url", "redis://127.0.0.1:1/0")
    assert no_postgres.returncode == 1
    assert f"PostgreSQL at 127.0.0.1:{dead} does not answer for DATABASE_URL (" in no_postgres.stderr
    assert "start it, or point DATABASE_URL at one that runs" in no_postgres.stderr
    with private_postgres() as database_url:
        no_redis = run("--database-url", database_url, "--redis-url", f"redis://127.0.0.1:{dead}/0")
    assert no_redis.returncode == 1
    assert f"Redis at 127.0.0.1:{dead} does not answer for REDIS_URL (" in no_redis.stderr
    assert not (tmp_path / "cluster").exists() or not any((tmp_path / "cluster").glob("*.log"))


def test_a_cluster_refuses_ports_in_use_naming_them(tmp_path):
    from calls.cli.cluster import Cluster, ClusterError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = Cluster(tmp_path, database_url="postgresql://postgres@127.0.0.1:1/none", redis_url="redis://127.0.0.1:1/0",
                          node_ports=[port, free_port()], workers=0, beat=False)
        with pytest.raises(ClusterError) as refused:
            cluster.start()
    assert str(refused.value) == (f"port in use, for node-0 127.0.0.1:{port}: stop what listens there, or choose "
                                  "another serve.port (the gateways take the ports after it)")
    assert all(process.process is None for process in cluster.processes())
