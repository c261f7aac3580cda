"""Benchmark: carrier webhook events through the real ASGI app into the database.

Mock carrier: places calls, then posts ringing/answered/speech/ended webhooks for each. Twilio:
signed inbound calls (the ring that creates the call and is answered with the greeting TwiML,
three speech results, the completed callback), so signature checks and TwiML answers are in the
measure. Everything goes through the ASGI application (no socket: the cost measured is ours, not
the network's). Run: `make bench` or
`.venv/bin/python bench/webhook_events.py [--carrier mock|twilio] [--calls 200] [--concurrency 8]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(data_dir: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "voicecall_project.settings"
    os.environ["VOICECALL_DATA_DIR"] = data_dir
    os.environ["VOICECALL_CONFIG"] = ""
    os.environ["VOICECALL_BACKGROUND"] = "inline"
    os.environ["VOICECALL_EMBEDDED_SCHEDULER"] = "false"
    os.environ["VOICECALL_AUTOSTART_SERVICES"] = "false"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


TWILIO_CONFIG = {
    "provider": "twilio",
    "fromNumber": "+15550000001",
    "publicUrl": "https://gw.example.com/voice/webhook",
    "inboundPolicy": "open",
    "twilio": {"accountSid": "AC" + "1" * 32, "authToken": "bench-token"},
}


async def run_twilio(calls: int, concurrency: int) -> tuple[list[float], float]:
    import httpx
    from urllib.parse import urlencode

    from calls.config import use_config
    from providers.carriers.twilio.webhook import signature
    from voicecall_project.asgi import application

    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    with use_config(TWILIO_CONFIG):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:

            async def post(query: str, params: dict[str, str]):
                url = TWILIO_CONFIG["publicUrl"] + (f"?{query}" if query else "")
                headers = {
                    "X-Twilio-Signature": signature("bench-token", url, list(params.items())),
                    "Content-Type": "application/x-www-form-urlencoded",
                }
                async with semaphore:
                    started = time.perf_counter()
                    response = await client.post(f"/voice/webhook?{query}", content=urlencode(params), headers=headers)
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text

            async def one_call(n: int):
                base = {"CallSid": f"CA{n:032x}", "AccountSid": "AC" + "1" * 32, "From": f"+1555{n:07d}",
                        "To": "+15550000001", "Direction": "inbound", "ApiVersion": "2010-04-01"}
                await post("", {**base, "CallStatus": "ringing"})
                for turn in range(3):
                    await post("", {**base, "CallStatus": "in-progress", "SpeechResult": f"utterance {turn}", "Confidence": "0.9"})
                await post("type=status", {**base, "CallStatus": "completed", "CallDuration": "42"})

            started = time.perf_counter()
            await asyncio.gather(*(one_call(n) for n in range(calls)))
            return latencies, time.perf_counter() - started


async def run(calls: int, concurrency: int, carrier: str = "mock") -> dict:
    if carrier == "twilio":
        latencies, elapsed = await run_twilio(calls, concurrency)
        return summary(latencies, elapsed)
    return await run_mock(calls, concurrency)


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


async def run_mock(calls: int, concurrency: int) -> dict:
    import httpx
    from asgiref.sync import sync_to_async

    from calls.config import use_config
    from calls.services import call_initiate
    from voicecall_project.asgi import application

    with use_config({"maxConcurrentCalls": calls + 1}):
        ids = [str((await sync_to_async(call_initiate)(to="+15550001111")).pk) for _ in range(calls)]
        transport = httpx.ASGITransport(app=application)
        latencies: list[float] = []
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:

            async def post(events):
                async with semaphore:
                    started = time.perf_counter()
                    response = await client.post("/voice/webhook", content=json.dumps({"events": events}))
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text

            async def one_call(cid):
                await post([{"type": "call.ringing", "callId": cid}])
                await post([{"type": "call.answered", "callId": cid}])
                for n in range(3):
                    await post([{"type": "call.speech", "callId": cid, "transcript": f"utterance {n}"}])
                await post([{"type": "call.ended", "callId": cid, "reason": "completed"}])

            started = time.perf_counter()
            await asyncio.gather(*(one_call(cid) for cid in ids))
            elapsed = time.perf_counter() - started
    return summary(latencies, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--carrier", choices=("mock", "twilio"), default="mock")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        setup_django(data_dir)
        from django.db import connection

        result = asyncio.run(run(args.calls, args.concurrency, args.carrier))
        print(f"carrier: {args.carrier}; database: {connection.vendor}; calls: {args.calls}; concurrent requests: {args.concurrency}")
        print("| requests | seconds | requests/s | p50 ms | p95 ms | p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {result['requests']} | {result['seconds']:.2f} | {result['per_second']:.0f} "
            f"| {result['p50']:.1f} | {result['p95']:.1f} | {result['p99']:.1f} |"
        )


if __name__ == "__main__":
    main()
