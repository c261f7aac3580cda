"""Benchmark: one big mock-carrier webhook (about 64 KB, 909 events) over a socket to a real gateway process.

Shapes of the 909 events: `speech` (one inbound call, then final speech results on it), `calls` (909
new inbound calls), `duplicates` (speech results whose ids repeat, so some are duplicates),
`unknown` (events for calls that do not exist). Each body is posted once, after a warm-up body of
the same shape, and the seconds until the answer are printed. With `--conversational` the calls
answer by themselves (a responseModel, whose endpoint is a closed local port: each reply fails
fast after the answer was sent). Embedded mode (SQLite in a temporary data directory) unless
DATABASE_URL is set, then that PostgreSQL database.
Run: `.venv/bin/python bench/webhook_batch.py [--events 909] [--shapes speech,calls,duplicates,unknown] [--conversational]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls.free_ports import free_port  # noqa: E402
from bench.webhook_events import gateway_env, start_gateway  # noqa: E402


LIMIT = 64 * 1024  # the webhook body limit


def body(shape: str, events: int, run: str) -> bytes:
    """The body of `events` events of this shape, fewer if they would not fit the body limit."""
    made = _events(shape, events, run)
    while len(encoded := json.dumps({"events": made}, separators=(",", ":")).encode()) > LIMIT:
        made.pop()
    return encoded


def _events(shape: str, events: int, run: str) -> list[dict]:
    sid = f"m{run}"
    first = {"type": "call.initiated", "callId": sid, "providerCallId": sid, "direction": "inbound", "from": "+15550001234"}
    made = [first, {"type": "call.answered", "callId": sid}] if shape in ("speech", "duplicates") else []
    for n in range(events - len(made)):
        if shape == "speech":
            made.append({"type": "call.speech", "callId": sid, "transcript": f"utterance {n}"})
        elif shape == "duplicates":
            made.append({"type": "call.speech", "callId": sid, "transcript": f"u {n}", "id": f"{run}-{n % 300}"})
        elif shape == "calls":
            made.append({**first, "callId": f"{sid}-{n}", "providerCallId": f"{sid}-{n}"})
        elif shape == "unknown":
            made.append({"type": "call.ringing", "callId": f"{sid}-{n}"})
        else:
            raise SystemExit(f"unknown shape {shape!r}")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=909)
    parser.add_argument("--shapes", default="speech,calls,duplicates,unknown")
    parser.add_argument("--conversational", action="store_true")
    args = parser.parse_args()
    database = "PostgreSQL" if os.environ.get("DATABASE_URL") else "SQLite"
    rows = []
    with tempfile.TemporaryDirectory(prefix="voicecall-bench-batch-") as data_dir:
        env = gateway_env(data_dir, "mock")
        if args.conversational:
            config = Path(env["VOICECALL_CONFIG"])
            config.write_text(json.dumps({**json.loads(config.read_text()), "responseModel": "openai/gpt-4o-mini", "models": {
                "providers": {"openai": {"baseUrl": f"http://127.0.0.1:{free_port()}/v1", "apiKey": "bench-not-a-key"}}}}))
        port = free_port()
        gateway = start_gateway(env, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                for shape in args.shapes.split(","):
                    for warm in (True, False):
                        payload = body(shape, args.events, uuid.uuid4().hex[:8])
                        started = time.perf_counter()
                        response = client.post("/voice/webhook", content=payload, headers={"Content-Type": "application/json"})
                        seconds = time.perf_counter() - started
                        if response.status_code != 200:
                            raise SystemExit(f"{shape}: HTTP {response.status_code}: {response.text[:200]}")
                        if not warm:
                            rows.append((shape, len(json.loads(payload)["events"]), len(payload), seconds))
        finally:
            gateway.terminate()
            gateway.wait(10)
    kind = "conversational" if args.conversational else "listening"
    print(f"mock webhook, one body of up to {args.events} events (at most {LIMIT} bytes), {kind} calls, {database}")
    print("| shape | events | bytes | seconds |")
    print("|---|---:|---:|---:|")
    for shape, count, size, seconds in rows:
        print(f"| {shape} | {count} | {size} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
