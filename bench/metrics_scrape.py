"""Benchmark: GET /metrics on a real gateway process whose database holds many calls.

The database is seeded with `--live` calls in progress (spread over the live states, each with an
open media stream), `--ended` ended calls started within the last hour and `--old` ended calls
started days ago (the history the scrape must not read), plus queued dials; then the gateway
(`manage.py gateway`, pinned to core 0 with taskset) is scraped `--scrapes` times from this
process (pinned to core 1) and the time per scrape is printed with the gateway's CPU per scrape (from /proc) and the body's size.
Embedded mode (SQLite in a temporary data directory) unless DATABASE_URL is set, then that
PostgreSQL database (emptied of calls first: use a database of its own).
Run: `.venv/bin/python bench/metrics_scrape.py [--live 1000] [--ended 10000] [--old 100000] [--scrapes 50]`.
"""
from __future__ import annotations

import argparse
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

from bench.gateway_process import proc_cpu_seconds  # noqa: E402
from calls.free_ports import free_port  # noqa: E402
from bench.webhook_events import LOAD_CORE, gateway_env, start_gateway  # noqa: E402

SEED = """
import random, uuid
from datetime import timedelta
from django.utils import timezone
from calls.models import Call, MediaStream, PendingDial
live_states = ["initiated", "ringing", "answered", "active", "speaking", "listening"]
ended_states = ["completed", "hangup-user", "hangup-bot", "no-answer", "busy", "failed"]
MediaStream.objects.all().delete(); PendingDial.objects.all().delete(); Call.objects.all().delete()
now = timezone.now()
def calls(count, states, started):
    made = []
    for n in range(count):
        made.append(Call(provider="mock", direction="inbound", state=states[n % len(states)], from_number="+15550100001",
                         to_number="+15550100000", started_at=started(n)))
        if len(made) == 5000:
            Call.objects.bulk_create(made); made = []
    Call.objects.bulk_create(made)
calls({old}, ended_states, lambda n: now - timedelta(days=2 + n % 300))
calls({ended}, ended_states, lambda n: now - timedelta(seconds=n % 3000))
calls({live}, live_states, lambda n: now - timedelta(seconds=n % 600))
live = Call.objects.filter(state__in=live_states).values_list("pk", flat=True)
MediaStream.objects.bulk_create([MediaStream(call_id=pk, stream_id=f"MZ{{n}}", carrier="twilio") for n, pk in enumerate(live)])
PendingDial.objects.bulk_create([PendingDial(idempotency_key=str(uuid.uuid4()), to_number="+15550100009") for _ in range(200)])
print(Call.objects.count(), "calls,", MediaStream.objects.count(), "streams")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--ended", type=int, default=10_000)
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="voicecall-bench-") as data_dir:
        env = gateway_env(data_dir, "mock")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        seeded = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                                 SEED.format(live=args.live, ended=args.ended, old=args.old)],
                                cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        print("seeded:", seeded.stdout.strip().splitlines()[-1])
        port = free_port()
        gateway = start_gateway(env, port)
        try:
            os.sched_setaffinity(0, {LOAD_CORE})
            times = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                client.get("/metrics")  # warm: the first scrape loads the view and the connection
                cpu_before = sum(proc_cpu_seconds(gateway.pid))
                for _ in range(args.scrapes):
                    started = time.perf_counter()
                    response = client.get("/metrics")
                    times.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
            cpu_ms = (sum(proc_cpu_seconds(gateway.pid)) - cpu_before) * 1000 / args.scrapes
            times.sort()
            load = os.getloadavg()[0]
            print("| database | live calls | ended (1 h) | older calls | load avg | scrape p50 ms | p95 ms | max ms | gateway CPU ms/scrape | body bytes |")
            print(f"| {'PostgreSQL' if os.environ.get('DATABASE_URL') else 'SQLite'} | {args.live} | {args.ended} | {args.old} "
                  f"| {load:.1f} | {statistics.median(times):.1f} | {times[int(len(times) * 0.95) - 1]:.1f} "
                  f"| {times[-1]:.1f} | {cpu_ms:.1f} | {len(response.content)} |")
        finally:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()


if __name__ == "__main__":
    main()
