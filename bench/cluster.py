"""Benchmark: the distributed mode with one gateway process and with two, side by side: signed webhooks per second and media streams held.

Per node count (--nodes 1,2), starts a Cluster (calls/cli/cluster.py: the gateways behind the
balancer, one Celery worker and beat) on a private PostgreSQL database and a private redis-server,
then, through the balancer as a carrier would:

- webhooks: signed Twilio inbound calls (ring, three speech results, completed: the shapes of
  webhook_events.py), `--concurrency` requests in flight, once through the balancer and once
  straight to the nodes (call n to node n mod N), which tells the balancer's share; requests per
  second, latency p50 / p99, the gateways' and the balancer's CPU per request;
- streams: at each --levels, that many simultaneous streamed calls from the carrier simulator
  (signed ring webhook through the balancer, TwiML, the media stream of call n to node n mod N; the greeting, two lines and two scripted replies, the
  replies made by the Celery worker and played by whichever node holds the stream), against the
  instant cloud speech fakes (bench/cloud_fakes.py); failed calls, unanswered turns, and from the
  gateways' own stream counters the worst inbound lag and pacing p99.

Pinning, on a 2-core machine: with one node, the gateway on core 0 and everything else (load,
fakes, balancer, worker, beat) on core 1, as the other benchmarks do. With two nodes, node 0 on
core 0 and node 1 on core 1, the rest unpinned: there is no third core, so the load and the
helpers share the cores with the gateways, and the two-node figures measure what two processes get
out of the same machine, not two machines.
Run: `.venv/bin/python bench/cluster.py [--nodes 1,2] [--calls 100] [--levels 10,25]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import LOAD_CORE, loadavg, on_core, pinned, proc_cpu_seconds, start_helper, stop_helper  # noqa: E402
from bench.report import figure, write_summary  # noqa: E402
from bench.webhook_events import summary as latency_summary  # noqa: E402
from bench.webhook_events import send_calls, twilio_requests  # noqa: E402

ACCOUNT = "AC" + "c" * 32
TOKEN = "bench-cluster-token"
LINES = ["Hello, I would like to book an appointment please.", "Thank you, goodbye."]
GREETING = "Welcome to the clinic, how can I help you?"
REPLIES = ["Your appointment is booked for Monday morning.", "You are welcome, goodbye."]
HELPERS = ("balancer", "beat", "worker-0")
CLINIC = "+15550100000"


def cluster_config(rest_url: str, fakes: dict) -> dict:
    return {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": rest_url},
        "fromNumber": CLINIC,
        "inboundPolicy": "open",
        "maxConcurrentCalls": 100_000,
        "streaming": {"enabled": True, "provider": "deepgram", "maxConnections": 1000, "maxPendingConnections": 1000,
                      "maxPendingConnectionsPerIp": 1000,
                      "providers": {"deepgram": {"apiKey": fakes["sttKey"], "baseUrl": fakes["stt"], "endpointingMs": 300}}},
        "tts": {"provider": "openai", "providers": {"openai": {"apiKey": fakes["ttsKey"], "baseUrl": fakes["tts"] + "/v1"}}},
        # The webhook load's calls (to another number) only listen, as in webhook_events.py; the streamed
        # calls go to the clinic's number, whose agent answers with scripted replies made by the worker.
        "agentId": "main", "agents": {"main": {}, "clinic": {"responder": {"type": "scripted", "replies": REPLIES}}},
        "numbers": {CLINIC: {"inboundGreeting": GREETING, "agentId": "clinic"}},
    }


def pins(nodes: int) -> dict[str, list[str]]:
    if not pinned():
        return {}
    if nodes == 1:
        return {"node-0": on_core(0), **{name: on_core(LOAD_CORE) for name in HELPERS}}
    return {f"node-{i}": on_core(i % 2) for i in range(nodes)}


def worker_args(pool: str) -> list[str] | None:
    if not pool:
        return None
    name, _, size = pool.partition(":")
    return ["--pool", name, "--concurrency", size or "2"]


def cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    own, children = proc_cpu_seconds(pid)
    return own + children


# --- webhooks ---------------------------------------------------------------------------------


async def webhooks(bases: list[str], public: str, calls: int, concurrency: int, warm) -> tuple[list[float], float]:
    """`calls` signed inbound calls, `concurrency` requests in flight, after a warm-up (then `warm()` runs:
    the CPU readings start there). Call n goes to bases[n % len(bases)]: the balancer, or each node directly."""
    run = uuid.uuid4().hex[:8]
    return await send_calls(
        bases, lambda n: twilio_requests(n, run, public=public, token=TOKEN, account=ACCOUNT), calls, concurrency, warm)


def measure_webhooks(cluster, route: str, args) -> dict:
    bases = [cluster.base] if route == "balancer" else [node.base for node in cluster.nodes]
    pids = {"nodes": [node.pid for node in cluster.nodes], "balancer": [cluster.balancer.pid]}
    before: dict[str, float] = {}

    def warm() -> None:
        before.update({kind: sum(cpu(pid) for pid in group) for kind, group in pids.items()})

    load = loadavg()
    latencies, elapsed = asyncio.run(webhooks(bases, f"{cluster.base}/voice/webhook", args.calls, args.concurrency, warm))
    used = {kind: sum(cpu(pid) for pid in group) - before[kind] for kind, group in pids.items()}
    return {**latency_summary(latencies, elapsed), "route": route, "load": load,
            "cpuMsPerRequest": used["nodes"] * 1000 / len(latencies),
            "balancerMsPerRequest": used["balancer"] * 1000 / len(latencies) if route == "balancer" else 0.0}


# --- media streams ----------------------------------------------------------------------------


async def streamed_calls(cluster, rest, calls: int) -> dict:
    """Webhooks through the balancer; call n's media stream straight to node n mod N. (Round robin per
    connection sends every stream to the same node when each call opens its two connections in turn,
    webhook then stream, as calls placed at an even pace do.)"""
    import dataclasses
    import itertools

    from calls.simulator.call import Gateway, Line, SimulatedCall
    from calls.simulator.run import simulate

    turn = itertools.count()
    bases = [node.base for node in cluster.nodes]

    class OnNextNode(SimulatedCall):
        def __init__(self, gateway, **kwargs) -> None:
            super().__init__(dataclasses.replace(gateway, stream_base_url=bases[next(turn) % len(bases)]), **kwargs)

    gateway = Gateway(base_url=cluster.base, webhook_url=f"{cluster.base}/voice/webhook", account_sid=ACCOUNT,
                      auth_token=TOKEN)
    report = await simulate(gateway, [Line(text) for text in LINES], calls=calls, ramp_ms=min(150, 5000 // calls),
                            listen=False, rest=rest, max_seconds=90, callee=CLINIC, call_class=OnNextNode)
    return report.summary()


def stream_rows(cluster, since: str) -> list[dict]:
    rows = cluster.rows("SELECT stats FROM calls_mediastream WHERE closed_at IS NOT NULL AND opened_at >= %s", (since,))
    return [stats if isinstance(stats, dict) else json.loads(stats) for (stats,) in rows]


def worst(stats: list[dict], key: str, p: str) -> float:
    return max((s.get(key, {}).get(p, 0.0) for s in stats), default=0.0)


def streams_per_node(cluster) -> list[int]:
    return [node.log().count("WSCONNECT /voice/stream") for node in cluster.nodes]


def measure_streams(cluster, rest, calls: int) -> dict:
    since = cluster.rows("SELECT now()")[0][0].isoformat()
    before = streams_per_node(cluster)
    load = loadavg()
    summary = asyncio.run(streamed_calls(cluster, rest, calls))
    deadline = time.monotonic() + 20
    stats = stream_rows(cluster, since)
    while len(stats) < calls and time.monotonic() < deadline:  # the last streams are being recorded
        time.sleep(0.2)
        stats = stream_rows(cluster, since)
    handled = sum(s.get("frames_in", 0) for s in stats)
    spread = [after - earlier for after, earlier in zip(streams_per_node(cluster), before)]
    return {
        "calls": calls, "failed": calls - summary["outcomes"].get("completed", 0), "outcomes": summary["outcomes"],
        "errors": summary.get("errors", [])[:3], "unanswered": summary["unansweredTurns"],
        "framesUnhandled": max(0, summary["framesSent"] - handled), "framesSent": summary["framesSent"],
        "inboundLagP99": worst(stats, "inboundLagMs", "p99"), "pacingP99": worst(stats, "pacingLateMs", "p99"),
        "heardTurnP50": summary["turnLatencyMs"]["p50"], "heardTurnP95": summary["turnLatencyMs"]["p95"],
        "simulatorLagP99": summary["callerClockLagMs"]["p99"], "streamsPerNode": spread, "load": load,
    }


# --- one cluster --------------------------------------------------------------------------------


def run_nodes(nodes: int, args, fakes: dict, rest, data_dir: Path) -> dict:
    from calls.cli.cluster import Cluster
    from tests.faults.gateway import private_postgres
    from tests.private_redis import PrivateRedis

    with private_postgres() as database_url, PrivateRedis() as redis:
        cluster = Cluster(data_dir / f"nodes-{nodes}", database_url=database_url, redis_url=redis.url,
                          config=cluster_config(rest.base_url, fakes), nodes=nodes, workers=1, prefix=pins(nodes),
                          worker_args=worker_args(args.worker_pool))
        with cluster.start(timeout=180):
            hooks = []
            for route in ("balancer", "direct"):
                hooks.append(measure_webhooks(cluster, route, args))
                print(f"{nodes} node(s), {route}: {hooks[-1]['per_second']:.0f} webhooks/s, p99 {hooks[-1]['p99']:.1f} ms",
                      flush=True)
            asyncio.run(streamed_calls(cluster, rest, 1))  # warm-up: the worker's and nodes' first call
            levels = []
            for level in args.levels:
                row = measure_streams(cluster, rest, level)
                levels.append(row)
                print(f"{nodes} node(s), {level} streamed calls: failed {row['failed']}, unanswered {row['unanswered']}, "
                      f"inbound p99 {row['inboundLagP99']:.1f} ms, pacing p99 {row['pacingP99']:.1f} ms, "
                      f"streams per node {row['streamsPerNode']}", flush=True)
    return {"nodes": nodes, "webhooks": hooks, "streams": levels}


def print_tables(results: list[dict], args) -> None:
    print(f"\nCelery worker pool: {args.worker_pool or 'threads:32 (the settings)'}; load average {Path('/proc/loadavg').read_text().split()[0]} at the end")
    print(f"\nwebhooks: {args.calls} signed Twilio calls of 5 requests, {args.concurrency} in flight")
    print("| nodes | to | requests | requests/s | p50 ms | p99 ms | gateways' CPU per request (ms) "
          "| balancer's CPU per request (ms) | load |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for w in r["webhooks"]:
            print(f"| {r['nodes']} | {w['route']} | {w['requests']} | {w['per_second']:.0f} | {w['p50']:.1f} | {w['p99']:.1f} "
                  f"| {w['cpuMsPerRequest']:.2f} | {w['balancerMsPerRequest']:.2f} | {w['load']:.1f} |")
    print("\nmedia streams: simultaneous streamed calls (greeting, two lines, two scripted replies); webhooks through "
          "the balancer, call n's stream to node n mod N")
    print("| nodes | calls | streams per node | failed / unanswered turns | frames unhandled | inbound lag p99 (ms) "
          "| pacing late p99 (ms) | heard turn p50 / p95 (ms) | simulator late p99 (ms) | load |")
    print("|---:|---:|---|---|---|---:|---:|---|---:|---:|")
    for r in results:
        for s in r["streams"]:
            print(f"| {r['nodes']} | {s['calls']} | {' / '.join(map(str, s['streamsPerNode']))} "
                  f"| {s['failed']} / {s['unanswered']} | {s['framesUnhandled']} of {s['framesSent']} "
                  f"| {s['inboundLagP99']:.1f} | {s['pacingP99']:.1f} | {s['heardTurnP50']:.0f} / {s['heardTurnP95']:.0f} "
                  f"| {s['simulatorLagP99']:.1f} | {s['load']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1,2", help="Gateway processes per run, comma-separated")
    parser.add_argument("--calls", type=int, default=100, help="Signed webhook calls (5 requests each) per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--levels", default="10,25", help="Simultaneous streamed calls, comma-separated")
    parser.add_argument("--worker-pool", default="", metavar="POOL:N",
                        help="The Celery worker's pool and its size, e.g. threads:64 (default: the settings', 32 threads)")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x]
    counts = [int(x) for x in args.nodes.split(",") if x]

    from tests.faults.gateway import postgres_available

    if not postgres_available() or shutil.which("redis-server") is None:
        print("skipped: the cluster needs PostgreSQL on 127.0.0.1:5432 (user postgres) and redis-server installed")
        return
    if pinned():
        os.sched_setaffinity(0, {LOAD_CORE})
    data_dir = Path(tempfile.mkdtemp(prefix="voicecall-bench-cluster-"))
    os.environ.update(VOICECALL_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="voicecall_project.settings",
                      VOICECALL_CONFIG="")
    for name in ("DATABASE_URL", "REDIS_URL"):  # this process only drives the load: SQLite in data_dir, no Redis
        os.environ.pop(name, None)
    import django

    django.setup()
    from calls.simulator.rest import TwilioRestStub

    fakes_process, fakes = start_helper("cloud_fakes.py")
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    results = []
    try:
        for nodes in counts:
            results.append(run_nodes(nodes, args, fakes, rest, data_dir))
    finally:
        rest.stop()
        stop_helper(fakes_process)
    print_tables(results, args)
    rows = []
    for r in results:
        for w in r["webhooks"]:
            rows.append(figure(f"{r['nodes']} node(s), {w['route']}: signed webhooks/s", w["per_second"]))
            rows.append(figure(f"{r['nodes']} node(s), {w['route']}: webhook p99", w["p99"], unit="ms"))
        for s in r["streams"]:
            rows.append(figure(f"{r['nodes']} node(s), {s['calls']} streamed calls: failed / unanswered / unhandled frames",
                               f"{s['failed']} / {s['unanswered']} / {s['framesUnhandled']}", target="0 / 0 / 0",
                               met=not (s["failed"] or s["unanswered"] or s["framesUnhandled"])))
    write_summary(args.summary, rows)


if __name__ == "__main__":
    main()
