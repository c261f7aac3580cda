"""Benchmark: JSON-RPC round trips to a real gateway process (Daphne, SQLite, mock carrier) over a socket.

Measures `voicecall.status` (a read), `voicecall.start` + `voicecall.end` (a call placed and hung
up: admission lock, record, carrier request, finalize) and a 20-request batch of status reads, each
at the given concurrency. Run:
`.venv/bin/python bench/rpc.py [--requests 400] [--concurrency 1,8]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.rpc_tokens import local_token  # noqa: E402  (standard library only)
from bench.gateway_process import wait_serving  # noqa: E402
from calls.free_ports import free_port  # noqa: E402


def start_gateway(data_dir: str, port: int) -> subprocess.Popen:
    # Embedded mode (SQLite in the data directory), whatever this shell points at.
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(VOICECALL_DATA_DIR=data_dir, VOICECALL_CONFIG=str(Path(data_dir) / "config.json"), VOICECALL_LOG_LEVEL="WARNING")
    # Enough room for every concurrent call the benchmark places.
    (Path(data_dir) / "config.json").write_text(json.dumps({"maxConcurrentCalls": 1000}))
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    process = subprocess.Popen(
        [python, "manage.py", "gateway", "--port", str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return wait_serving(process, port, healthz=True)


async def measure(client: httpx.AsyncClient, name: str, one, requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def timed(index: int) -> None:
        async with semaphore:
            started = time.perf_counter()
            await one(client, index)
            latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(timed(i) for i in range(requests)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "case": name, "concurrency": concurrency, "requests": requests,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "per_s": round(requests / elapsed, 1),
    }


def rpc_body(method: str, params: dict | None = None, request_id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}


async def call(client: httpx.AsyncClient, method: str, params: dict | None = None):
    reply = (await client.post("/voice/rpc", json=rpc_body(method, params))).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


async def status(client, index):
    await call(client, "voicecall.status")


async def start_and_end(client, index):
    result = await call(client, "voicecall.start", {"to": f"+1555{index % 10_000_000:07d}", "message": "Hi"})
    await call(client, "voicecall.end", {"callId": result["callId"]})


async def batch_of_status(client, index):
    replies = (await client.post("/voice/rpc", json=[rpc_body("voicecall.status", request_id=i) for i in range(20)])).json()
    if len(replies) != 20 or any("error" in reply for reply in replies):
        raise RuntimeError(f"batch failed: {replies[:1]}")


async def run(url: str, token: str, requests: int, levels: list[int]) -> list[dict]:
    rows = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=max(levels))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:
        await call(client, "voicecall.status")  # warm up
        for level in levels:
            rows.append(await measure(client, "status", status, requests, level))
            rows.append(await measure(client, "start+end", start_and_end, requests // 4, level))
            rows.append(await measure(client, "batch of 20 status", batch_of_status, requests // 8, level))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="voicecall-bench-rpc-") as data_dir:
        port = free_port()
        gateway = start_gateway(data_dir, port)
        try:
            token = local_token(Path(data_dir)).token  # the gateway accepts it, as the CLI relies on
            rows = asyncio.run(run(f"http://127.0.0.1:{port}", token, args.requests, levels))
        finally:
            gateway.terminate()
            gateway.wait(10)
    print("| case | concurrency | requests | p50 (ms) | p95 (ms) | per second |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['concurrency']} | {row['requests']} | {row['p50_ms']} | {row['p95_ms']} | {row['per_s']} |")


if __name__ == "__main__":
    main()
