"""Benchmark: carrier webhooks over a socket to a real gateway process, and the SQL statements each kind costs.

Starts `manage.py gateway` (Daphne) pinned to core 0 with `taskset`; this process, the load
generator, pins itself to core 1, so the gateway has one core to itself. Twilio (default): signed
inbound calls, each the ring that creates the call and is answered with the greeting TwiML, three
speech results and the completed callback. Mock: unsigned JSON events for inbound calls (initiated,
ringing, answered, three speech results, ended). Embedded mode (SQLite in a temporary data
directory) unless DATABASE_URL is set, then that PostgreSQL database. Afterwards the statements of
one more call are counted per webhook kind, in this process, through the service entry point.
Run: `make bench` or
`.venv/bin/python bench/webhook_events.py [--carrier twilio|mock] [--calls 200] [--concurrency 8]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import figure, write_summary  # noqa: E402

from bench.gateway_process import wait_serving  # noqa: E402
from calls.free_ports import free_port  # noqa: E402

GATEWAY_CORE, LOAD_CORE = 0, 1
TOKEN = "bench-token"
ACCOUNT = "AC" + "1" * 32
CONFIGS = {
    "twilio": {
        "provider": "twilio",
        "fromNumber": "+15550000001",
        "publicUrl": "https://gw.example.com/voice/webhook",
        "inboundPolicy": "open",
        "maxConcurrentCalls": 100_000,
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN},
    },
    "mock": {"provider": "mock", "inboundPolicy": "open", "maxConcurrentCalls": 100_000},
}


def gateway_env(data_dir: str, carrier: str) -> dict[str, str]:
    # Embedded mode unless DATABASE_URL is set; never the shell's Redis.
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    config = Path(data_dir) / "config.json"
    config.write_text(json.dumps(CONFIGS[carrier]))
    env.update(VOICECALL_DATA_DIR=data_dir, VOICECALL_CONFIG=str(config), VOICECALL_LOG_LEVEL="WARNING")
    return env


SERVERS = {
    "daphne": lambda port: ["manage.py", "gateway", "--port", str(port)],
    # The same ASGI application under another server, to tell the server's share from ours.
    "uvicorn": lambda port: ["-m", "uvicorn", "voicecall_project.asgi:application", "--port", str(port),
                             "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
}


def start_gateway(env: dict[str, str], port: int, server: str = "daphne") -> subprocess.Popen:
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    pin = ["taskset", "-c", str(GATEWAY_CORE)] if shutil.which("taskset") else []
    process = subprocess.Popen(
        [*pin, python, *SERVERS[server](port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return wait_serving(process, port, healthz=True)


# --- the webhooks of one call ---------------------------------------------------------------


def twilio_requests(n: int, run: str, *, public: str | None = None, token: str = TOKEN,
                    account: str = ACCOUNT) -> list[tuple[str, str, dict[str, str], str]]:
    """(kind, path with query, headers, body) of one signed inbound Twilio call, signed for `public` (the webhook URL)."""
    from urllib.parse import urlsplit

    from providers.carriers.twilio.webhook import signature

    public = public or CONFIGS["twilio"]["publicUrl"]
    base = {"CallSid": f"CA{run}{n:024x}", "AccountSid": account, "From": f"+1555{n % 10_000_000:07d}",
            "To": "+15550000001", "Direction": "inbound", "ApiVersion": "2010-04-01"}
    steps = [("ring", "", {**base, "CallStatus": "ringing"})]
    steps += [("speech", "", {**base, "CallStatus": "in-progress", "SpeechResult": f"utterance {t}", "Confidence": "0.9"})
              for t in range(3)]
    steps.append(("completed", "type=status", {**base, "CallStatus": "completed", "CallDuration": "42"}))
    requests = []
    for kind, query, params in steps:
        url = public + (f"?{query}" if query else "")
        headers = {"X-Twilio-Signature": signature(token, url, list(params.items())),
                   "Content-Type": "application/x-www-form-urlencoded", "Host": urlsplit(public).netloc}
        requests.append((kind, f"/voice/webhook?{query}" if query else "/voice/webhook", headers, urlencode(params)))
    return requests


def mock_requests(n: int, run: str) -> list[tuple[str, str, dict[str, str], str]]:
    sid = f"mock-{run}-{n}"
    created = {"type": "call.initiated", "callId": sid, "providerCallId": sid, "direction": "inbound",
               "from": f"+1555{n % 10_000_000:07d}", "to": "+15550000001"}
    steps = [("ring", created), ("ring", {"type": "call.ringing", "callId": sid}),
             ("ring", {"type": "call.answered", "callId": sid})]
    steps += [("speech", {"type": "call.speech", "callId": sid, "transcript": f"utterance {t}"}) for t in range(3)]
    steps.append(("completed", {"type": "call.ended", "callId": sid, "reason": "completed"}))
    return [(kind, "/voice/webhook", {"Content-Type": "application/json"}, json.dumps({"events": [event]}))
            for kind, event in steps]


REQUESTS = {"twilio": twilio_requests, "mock": mock_requests}


# --- load ---------------------------------------------------------------------------------


async def send_calls(bases: list[str], requests_for, calls: int, concurrency: int, warm=None) -> tuple[list[float], float]:
    """`calls` calls of `requests_for(n)`'s requests, `concurrency` in flight, after a warm-up (then `warm()`
    runs, if given). Call n goes to bases[n % len(bases)]: one client per base, since a connection
    stays with one server. Returns each measured request's latency (ms) and the measured seconds."""
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [httpx.AsyncClient(base_url=base, timeout=30, limits=limits) for base in bases]
    try:
        async def one_call(n: int, record: bool) -> None:
            client = clients[n % len(clients)]
            for _, path, headers, body in requests_for(n):
                async with semaphore:
                    started = time.perf_counter()
                    response = await client.post(path, content=body, headers=headers)
                    if record:
                        latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: {response.status_code} {response.text[:200]}")

        # Warm up: connections open, code paths imported, caches filled.
        await asyncio.gather(*(one_call(calls + n, False) for n in range(concurrency)))
        if warm is not None:
            warm()
        started = time.perf_counter()
        await asyncio.gather(*(one_call(n, True) for n in range(calls)))
        return latencies, time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()


async def load(url: str, carrier: str, calls: int, concurrency: int, run: str) -> tuple[list[float], float]:
    return await send_calls([url], lambda n: REQUESTS[carrier](n, run), calls, concurrency)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux), so a busy machine does not hide our cost."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float], elapsed: float) -> dict:
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
    }


# --- statements per webhook kind ----------------------------------------------------------------


def count_statements(env: dict[str, str], carrier: str, run: str) -> dict[str, list[int]]:
    """The statements of one more call's webhooks, through the service entry point, in this process."""
    os.environ.update(env)
    # Jobs on a thread pool, as in the gateway: what a job does after the answer is not the request's.
    os.environ.update(DJANGO_SETTINGS_MODULE="voicecall_project.settings", VOICECALL_BACKGROUND="thread",
                      VOICECALL_EMBEDDED_SCHEDULER="false", VOICECALL_AUTOSTART_SERVICES="false")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from calls.config import use_config
    from calls.services import webhook_process
    from providers.carriers.base import WebhookRequest

    counts: dict[str, list[int]] = {}
    with use_config(CONFIGS[carrier]):
        for kind, path, headers, body in REQUESTS[carrier](10**9, run):
            route, _, query = path.partition("?")
            request = WebhookRequest(
                method="POST", path=route, query_string=query, body=body.encode(), remote_addr="127.0.0.1",
                headers={name.lower(): value for name, value in headers.items()}, scheme="https",
            )
            with CaptureQueriesContext(connection) as queries:
                reply = webhook_process(request=request)
            assert reply.status == 200, reply.body
            counts.setdefault(kind, []).append(len(queries))
    from calls import background

    background.drain()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--carrier", choices=tuple(CONFIGS), default="twilio")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    parser.add_argument("--server", choices=tuple(SERVERS), default="daphne",
                        help="daphne: `manage.py gateway`, as deployed; uvicorn: the same app under uvicorn")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    run = uuid.uuid4().hex[:8]  # fresh carrier ids, so a reused PostgreSQL database is no matter
    database = "PostgreSQL" if os.environ.get("DATABASE_URL") else "SQLite"
    with tempfile.TemporaryDirectory(prefix="voicecall-bench-webhooks-") as data_dir:
        env = gateway_env(data_dir, args.carrier)
        port = free_port()
        load_before = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
        gateway = start_gateway(env, port, args.server)
        try:
            cpu_before = cpu_seconds(gateway.pid)
            latencies, elapsed = asyncio.run(load(f"http://127.0.0.1:{port}", args.carrier, args.calls, args.concurrency, run))
            cpu = cpu_seconds(gateway.pid) - cpu_before
        finally:
            gateway.terminate()
            gateway.wait(10)
        load_after = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
        counts = count_statements(env, args.carrier, run)
    result = summary(latencies, elapsed)
    print(f"server: {args.server}; carrier: {args.carrier}; database: {database}; calls: {args.calls}; concurrent requests: {args.concurrency}; "
          f"gateway on core {GATEWAY_CORE}, load on core {LOAD_CORE}; load average {load_before} → {load_after}")
    print("| requests | seconds | requests/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['requests']} | {result['seconds']:.2f} | {result['per_second']:.0f} "
        f"| {result['p50']:.1f} | {result['p95']:.1f} | {result['p99']:.1f} |"
    )
    # Includes the warm-up's requests (a few dozen) and the gateway's idle sweeps: a slight overestimate.
    print(f"gateway CPU: {cpu * 1000 / result['requests']:.2f} ms per request "
          f"(one core's worth would serve about {result['requests'] / cpu:.0f} per second)")
    print("SQL statements per webhook: " + "; ".join(f"{kind} {max(n)}" for kind, n in counts.items()))
    p99_target = 30 if database == "PostgreSQL" else 50
    write_summary(args.summary, [
        figure(f"{args.carrier} on {database}, {args.concurrency} in flight: requests/s", result["per_second"],
               target=">= 300" if database == "PostgreSQL" else "", met=result["per_second"] >= 300 if database == "PostgreSQL" else None),
        figure(f"{args.carrier} on {database}: p99", result["p99"], unit="ms", target=f"< {p99_target} ms",
               met=result["p99"] < p99_target),
        figure(f"{args.carrier} on {database}: gateway CPU per request", cpu * 1000 / result["requests"], unit="ms"),
        figure("SQL statements per webhook (most of any kind)", max(max(n) for n in counts.values()), target="<= 8",
               met=max(max(n) for n in counts.values()) <= 8),
    ])


if __name__ == "__main__":
    main()
