"""Benchmark: simultaneous streamed calls against one gateway process (Daphne), fully offline.

Starts `manage.py gateway` in its own process (SQLite, embedded mode, local PocketSphinx STT and
Piper TTS, a scripted responder) and, for each level of --calls, runs the carrier simulator from
this process: every call gets a greeting, speaks two lines in real-time 20 ms μ-law frames, and
hears two replies. Per level it reports, from the gateway's own stream counters, how far behind
real time inbound frames were handled (p50/p99) and how late outbound frames left their 20 ms
slot (p99); from the simulator, turn latency and playback jitter; and the gateway process's CPU
(% of one core, and CPU seconds per call with the decoder workers' share) and RSS growth per call
(its decoder worker processes included). CPU seconds per call depend little on how busy the
machine is, so they compare runs better than the lag figures. A level "breaks" when a call fails
or inbound lag p99 exceeds 100 ms or pacing p99 exceeds 20 ms.
Run: `.venv/bin/python bench/media_streams.py [--levels 1,2,4,8,12,16] [--listen]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCOUNT = "AC" + "b" * 32
TOKEN = "bench-token"
LINES = ["Hello, I would like to book an appointment please.", "Thank you, goodbye."]
BREAK_INBOUND_P99_MS = 100
BREAK_PACING_P99_MS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _family(pid: int) -> list[int]:
    """The gateway and its children (the PocketSphinx worker processes)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the gateway process itself and by its children (the decoders)."""
    own = children = 0
    for member in _family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if member == pid:
            own += ticks
        else:
            children += ticks
    hertz = os.sysconf("SC_CLK_TCK")
    return own / hertz, children / hertz


def proc_rss_mb(pid: int) -> float:
    total = 0.0
    for member in _family(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(len(values) * p / 100) - 1))]


def start_gateway(data_dir: str, port: int, rest_port: int) -> subprocess.Popen:
    config = {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": f"http://127.0.0.1:{rest_port}"},
        "fromNumber": "+15550100000",
        "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "inboundPolicy": "open",
        "maxConcurrentCalls": 1000,
        "inboundGreeting": "Welcome to the clinic, how can I help you?",
        "streaming": {"enabled": True, "provider": "local", "maxConnections": 1000, "maxPendingConnections": 1000,
                      "maxPendingConnectionsPerIp": 1000},
        "tts": {"provider": "local"},
        "agents": {"main": {"responder": {"type": "scripted", "replies": [
            "Your appointment is booked for Monday morning.", "You are welcome, goodbye."]}}},
    }
    path = Path(data_dir) / "voicecall.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "VOICECALL_DATA_DIR": data_dir, "VOICECALL_CONFIG": str(path), "DJANGO_SETTINGS_MODULE": "voicecall_project.settings"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    gateway = subprocess.Popen([python, "manage.py", "gateway"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(Path(data_dir) / "gateway.log", "w"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return gateway
        except OSError:
            time.sleep(0.2)
    gateway.kill()
    raise RuntimeError("the gateway did not start; see gateway.log")


def stream_stats(db: Path, since: float) -> list[dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT stats FROM calls_mediastream WHERE closed_at IS NOT NULL AND opened_at >= ?",
                            (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since)),)).fetchall()
    return [json.loads(row[0]) for row in rows]


async def run_level(calls: int, gateway, rest, listen: bool) -> dict:
    from calls.simulator.call import Line
    from calls.simulator.run import simulate

    report = await simulate(gateway, [Line(text) for text in LINES], calls=calls, ramp_ms=150, listen=listen,
                            rest=rest, max_seconds=90)
    return report.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,2,4,8,12,16", help="Simultaneous calls per level")
    parser.add_argument("--listen", action="store_true", help="Also transcribe what callers hear (costs CPU in this process)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    data_dir = tempfile.mkdtemp(prefix="voicecall-bench-")
    os.environ["VOICECALL_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "voicecall_project.settings"
    os.environ["VOICECALL_CONFIG"] = ""
    import django

    django.setup()
    from calls.simulator.call import Gateway
    from calls.simulator.rest import TwilioRestStub

    port, rest = free_port(), TwilioRestStub(on_hangup=lambda sid: None).start()
    rest_port = int(rest.base_url.rsplit(":", 1)[1])
    process = start_gateway(data_dir, port, rest_port)
    gateway = Gateway(base_url=f"http://127.0.0.1:{port}", webhook_url=f"http://127.0.0.1:{port}/voice/webhook",
                      account_sid=ACCOUNT, auth_token=TOKEN)
    db = Path(data_dir) / "voicecall.sqlite3"
    rows = []
    try:
        asyncio.run(run_level(1, gateway, rest, False))  # warm-up: models loaded, caches filled
        for calls in levels:
            rss_before = proc_rss_mb(process.pid)
            (own_before, decoders_before), wall_before, started = proc_cpu_seconds(process.pid), time.monotonic(), time.time() - 1
            summary = asyncio.run(run_level(calls, gateway, rest, args.listen))
            wall = time.monotonic() - wall_before
            own_after, decoders_after = proc_cpu_seconds(process.pid)
            decoders_cpu = decoders_after - decoders_before
            cpu = own_after - own_before + decoders_cpu
            time.sleep(1.0)
            stats = stream_stats(db, started)
            inbound_p50 = max((s["inboundLagMs"]["p50"] for s in stats), default=0)
            inbound_p99 = max((s["inboundLagMs"]["p99"] for s in stats), default=0)
            pacing_p99 = max((s["pacingLateMs"]["p99"] for s in stats), default=0)
            failed = calls - summary["outcomes"].get("completed", 0)
            row = {
                "calls": calls, "failed": failed,
                "inboundLagP50": inbound_p50, "inboundLagP99": inbound_p99, "pacingP99": pacing_p99,
                "jitterP99": summary["playbackJitterMs"]["p99"], "turnP50": summary["turnLatencyMs"]["p50"],
                "turnP95": summary["turnLatencyMs"]["p95"],
                "cpuPerCall": 100 * cpu / wall / calls, "cpuSecondsPerCall": cpu / calls,
                "decoderSecondsPerCall": decoders_cpu / calls, "rssPerCall": max(0.0, proc_rss_mb(process.pid) - rss_before) / calls,
                "rss": proc_rss_mb(process.pid),
            }
            row["breaks"] = bool(failed or inbound_p99 > BREAK_INBOUND_P99_MS or pacing_p99 > BREAK_PACING_P99_MS)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        process.terminate()
        process.wait(10)
        rest.stop()
    print()
    print("| calls | failed | inbound lag p50 / p99 (ms) | pacing late p99 (ms) | playback jitter p99 (ms) "
          "| turn latency p50 / p95 (ms) | CPU per call (% core) | CPU s per call (decoders) | RSS per call (MB) "
          "| gateway RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " **breaks**" if r["breaks"] else ""
        print(f"| {r['calls']}{mark} | {r['failed']} | {r['inboundLagP50']:.1f} / {r['inboundLagP99']:.1f} | {r['pacingP99']:.1f} "
              f"| {r['jitterP99']:.1f} | {r['turnP50']:.0f} / {r['turnP95']:.0f} | {r['cpuPerCall']:.1f} "
              f"| {r['cpuSecondsPerCall']:.2f} ({r['decoderSecondsPerCall']:.2f}) | {r['rssPerCall']:.1f} | {r['rss']:.0f} |")
    first_break = next((r["calls"] for r in rows if r["breaks"]), None)
    print(f"\nfirst breaks at: {first_break or 'no level tested'}")


if __name__ == "__main__":
    main()
