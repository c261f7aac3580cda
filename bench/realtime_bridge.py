"""Benchmark: the realtime bridge's own cost per frame and per call, with an OpenAI Realtime fake that answers at once.

Starts `manage.py gateway` (SQLite, embedded mode, realtime on with provider openai, its baseUrl
the fake) pinned to core 0, per level and ASGI server, and bench/realtime_fake.py in a process of
its own on core 1, where this process runs the simulated Twilio callers. Every call is the signed
ringing webhook answered with TwiML, a realtime media stream on which the caller hears the model's
greeting, says two lines (1.5 s of loud tone each), each answered with 2 s of model audio, then
hangs up (stop frame, completed webhook). The fake streams its audio at real time in 20 ms deltas.

Every caller frame carries its send time and every frame of the model's audio the time the fake
sent it (bench/stamps.py), so each direction is timed frame by frame across processes:
inbound, carrier frame sent → the fake received it as input_audio_buffer.append; outbound, the
fake sent the delta → the caller received it as a media frame, for the first frame of each answer
(the playback idle: the bridge's cost alone) and for the frames after it (paced at 20 ms, so up to
one frame slot of waiting is by design). Also, from the gateway: turn latency (the provider's
speech stop → first answer frame sent, its `realtime.turn` events), pacing lateness and drops
(its stream stats), and its CPU per live call while every call is live, and RSS.
Run: `.venv/bin/python bench/realtime_bridge.py [--levels 1,10,50] [--server daphne,uvicorn]
[--profile LEVEL] [--wait-quiet SECONDS] [--summary FILE]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import (  # noqa: E402
    LOAD_CORE,
    loadavg,
    pinned,
    proc_cpu_seconds,
    proc_rss_mb,
    run_queue_seconds,
    start_gateway,
    start_helper,
    stop_gateway,
    stop_helper,
    stream_stats,
    thread_cpu_seconds,
    wait_quiet,
    worst,
)
from bench.report import figure, write_summary  # noqa: E402
from bench.stamps import CALLER, FIRST, read_stamp, stamp  # noqa: E402
from calls.free_ports import free_port  # noqa: E402

ACCOUNT = "AC" + "c" * 32
TOKEN = "bench-token"
GREETING = "Welcome to the clinic, how can I help you?"
LINES = ["I would like to book an appointment please.", "Thank you, goodbye."]
LINE_MS = 1500


def caller_audio() -> dict[str, bytes]:
    """What each line "says": a loud 300 Hz tone (the fake's voice detection hears energy, not words)."""
    from core.audio import samples_to_ulaw

    t = np.arange(8 * LINE_MS) / 8000
    tone = samples_to_ulaw((8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16))
    return {line: tone for line in LINES}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    data = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": float(np.percentile(data, 50)), "p99": float(np.percentile(data, 99)),
            "max": float(data.max())}


class Level:
    """The calls of one level and what their callers timed."""

    def __init__(self) -> None:
        self.calls: list = []
        self.first_ms: list[float] = []  # fake sent an answer's first frame → the caller received it
        self.greeting_first_ms: list[float] = []  # the same, of the greetings alone
        self.steady_ms: list[float] = []  # the same for the answer's later frames

    def all_streaming(self, calls: int) -> bool:
        return len(self.calls) == calls and all(call.streaming_at is not None for call in self.calls)

    def any_ended(self) -> bool:
        return any(call.ended_at is not None for call in self.calls)


def timed_call_class(level: Level):
    from calls.simulator.call import SimulatedCall

    class TimedCall(SimulatedCall):
        """A simulated caller that stamps its frames and times the model's."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.streaming_at: float | None = None
            self.ended_at: float | None = None
            level.calls.append(self)

        def _sending(self, frame: bytes) -> bytes:
            now = time.monotonic()
            if self.streaming_at is None:
                self.streaming_at = now
            return stamp(frame, CALLER, now)

        def _received(self, frame: bytes, arrived: float) -> None:
            found = read_stamp(frame, arrived)
            if found is not None:
                kind, sent = found
                (level.first_ms if kind == FIRST else level.steady_ms).append((arrived - sent) * 1000)
                if kind == FIRST and not self._heard_speech:
                    level.greeting_first_ms.append((arrived - sent) * 1000)

        async def run(self):
            try:
                return await super().run()
            finally:
                self.ended_at = time.monotonic()

    return TimedCall


async def steady_cpu(level: Level, calls: int, pid: int) -> dict[str, float]:
    """The gateway's CPU from the moment every call streams until the first one hangs up."""
    while not level.all_streaming(calls) and not level.any_ended():
        await asyncio.sleep(0.02)
    cpu_before, wall_before = proc_cpu_seconds(pid)[0], time.monotonic()
    while not level.any_ended():
        await asyncio.sleep(0.02)
    return {"cpu": proc_cpu_seconds(pid)[0] - cpu_before, "wall": time.monotonic() - wall_before}


async def run_level(calls: int, gateway, rest, pid: int, lines: list[str] = LINES) -> tuple[dict, Level, dict]:
    from calls.simulator.call import Line
    from calls.simulator.run import simulate

    level = Level()
    # Every call is live at once: the arrivals spread over at most 5 s of a call lasting about 13 s.
    simulation = simulate(gateway, [Line(text) for text in lines], calls=calls, ramp_ms=min(150, 5000 // calls),
                          listen=False, rest=rest, max_seconds=90, audio=caller_audio(),
                          call_class=timed_call_class(level))
    report, steady = await asyncio.gather(simulation, steady_cpu(level, calls, pid))
    return report.summary(), level, steady


def collect(fake) -> dict:
    fake.stdin.write("collect\n")
    fake.stdin.flush()
    return json.loads(fake.stdout.readline())


def turn_latencies(db: Path, since: float) -> list[float]:
    """The turns the gateway recorded since `since` (epoch seconds; the warm-up call's are older)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM calls_callevent WHERE type = 'realtime.turn' AND received_at >= ?",
                            (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since)),)).fetchall()
    return [float(json.loads(row[0]).get("latencyMs", 0)) for row in rows]


def gateway_config(port: int, rest_port: int, fake_info: dict) -> dict:
    caps = {"maxConnections": 1000, "maxPendingConnections": 1000, "maxPendingConnectionsPerIp": 1000}
    return {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": f"http://127.0.0.1:{rest_port}"},
        "fromNumber": "+15550100000",
        "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "inboundPolicy": "open",
        "maxConcurrentCalls": 1000,
        "inboundGreeting": GREETING,
        "streaming": {"enabled": False, **caps},
        "realtime": {"enabled": True, "provider": "openai", "providers": {"openai": {
            "apiKey": fake_info["apiKey"], "baseUrl": fake_info["url"]}}},
    }


def wait_streams(db: Path, since: float, calls: int) -> list[dict]:
    deadline = time.monotonic() + 15
    stats = stream_stats(db, since)
    while len(stats) < calls and time.monotonic() < deadline:  # the last streams are being recorded
        time.sleep(0.2)
        stats = stream_stats(db, since)
    return stats


def measure(calls: int, server: str, process, gateway, rest, fake, db: Path) -> dict:
    rss_before = proc_rss_mb(process.pid)
    load = loadavg()
    started = time.time() - 1
    cpu_before, wall_before = proc_cpu_seconds(process.pid)[0], time.monotonic()
    threads_before = thread_cpu_seconds(process.pid)
    waited_before = run_queue_seconds(process.pid)
    # The load core's work: this process (the callers) and the fake's.
    load_before = proc_cpu_seconds(os.getpid())[0] + proc_cpu_seconds(fake.pid)[0]
    summary, level, steady = asyncio.run(run_level(calls, gateway, rest, process.pid))
    wall = time.monotonic() - wall_before
    cpu = proc_cpu_seconds(process.pid)[0] - cpu_before
    waited = run_queue_seconds(process.pid) - waited_before
    load_core = proc_cpu_seconds(os.getpid())[0] + proc_cpu_seconds(fake.pid)[0] - load_before
    threads = {kind: round(seconds - threads_before.get(kind, 0.0), 2)
               for kind, seconds in thread_cpu_seconds(process.pid).items()}
    stats = wait_streams(db, started, calls)
    seen = collect(fake)
    inbound, first, steady_frames = percentiles(seen["inboundMs"]), percentiles(level.first_ms), percentiles(level.steady_ms)
    turns = percentiles(turn_latencies(db, started))
    received = len(level.first_ms) + len(level.steady_ms)
    failed = calls - summary["outcomes"].get("completed", 0)
    return {
        "server": server, "calls": calls, "failed": failed, "outcomes": summary["outcomes"],
        "errors": (summary.get("errors", []) + seen["errors"])[:5], "unanswered": summary["unansweredTurns"],
        "answers": seen["answers"],
        "inbound": inbound, "first": first, "steady": steady_frames, "turn": turns,
        "greetingFirst": percentiles(level.greeting_first_ms),
        "pacingP99": worst(stats, "pacingLateMs", "p99"),
        # Frames that never made it: sent by the callers, not received by the fake, and the other way.
        "framesIn": summary["framesSent"], "lostIn": max(0, summary["framesSent"] - seen["framesIn"]),
        "earlyIn": seen["earlyFrames"],
        "framesOut": seen["framesOut"], "lostOut": max(0, seen["framesOut"] - received),
        "dropped": sum(s.get("dropped", 0) + s.get("model_audio_dropped", 0) for s in stats),
        "simulatorLagP99": summary["callerClockLagMs"]["p99"], "fakeLateP99": percentiles(seen["loopLateMs"])["p99"],
        # % of one core each live call costs, while all of them are live.
        "cpuPerCall": 100 * steady["cpu"] / max(1e-9, steady["wall"]) / calls, "steadySeconds": steady["wall"],
        "cpuSeconds": cpu, "cpuSecondsPerCall": cpu / calls, "cpuByThread": threads, "wall": wall,
        "rss": proc_rss_mb(process.pid), "rssPerCall": max(0.0, proc_rss_mb(process.pid) - rss_before) / calls,
        # Seconds the gateway was ready to run and waited for its core: other processes in its way.
        "waitedForCpu": waited,
        "loadCoreBusy": 100 * load_core / wall,
        "load": load, "streams": len(stats),
    }


def print_table(rows: list[dict]) -> None:
    print("\n| server | calls | failed / unanswered | frames lost in / out (dropped) | inbound p50 / p99 (ms) "
          "| first frame p50 / p99 (ms) (answers) | steady frames p50 / p99 (ms) | pacing late p99 (ms) | turn p50 / p99 (ms) "
          "| simulator / fake late p99 (ms) | CPU per live call (% core) | CPU loop / threads (s) | waited for CPU (s) "
          "| load core busy (%) | RSS (MB) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        threads = r["cpuByThread"]
        print(f"| {r['server']} | {r['calls']} | {r['failed']} / {r['unanswered']} "
              f"| {r['lostIn']} of {r['framesIn']} / {r['lostOut']} of {r['framesOut']} ({r['dropped']}) "
              f"| {r['inbound']['p50']:.2f} / {r['inbound']['p99']:.2f} | {r['first']['p50']:.2f} / {r['first']['p99']:.2f} ({r['first']['n']}) "
              f"| {r['steady']['p50']:.2f} / {r['steady']['p99']:.2f} | {r['pacingP99']:.1f} "
              f"| {r['turn']['p50']:.0f} / {r['turn']['p99']:.0f} "
              f"| {r['simulatorLagP99']:.1f} / {r['fakeLateP99']:.1f} | {r['cpuPerCall']:.2f} "
              f"| {threads.get('loop', 0):.2f} / {threads.get('threads', 0):.2f} | {r['waitedForCpu']:.2f} "
              f"| {r['loadCoreBusy']:.0f} | {r['rss']:.0f} | {r['load']:.2f} |")


def summary_rows(rows: list[dict]) -> list[dict]:
    figures = []
    for r in rows:
        where = f"{r['server']}, {r['calls']} calls"
        figures.append(figure(f"{where}: inbound frame p50 / p99", f"{r['inbound']['p50']:.2f} / {r['inbound']['p99']:.2f}",
                              unit="ms"))
        figures.append(figure(f"{where}: first answer frame p50 / p99", f"{r['first']['p50']:.2f} / {r['first']['p99']:.2f}",
                              unit="ms"))
        figures.append(figure(f"{where}: turn latency p99", r["turn"]["p99"], unit="ms"))
        figures.append(figure(f"{where}: failed calls / unanswered lines / frames lost", f"{r['failed']} / {r['unanswered']} / "
                              f"{r['lostIn'] + r['lostOut']}", target="0 / 0 / 0",
                              met=not (r["failed"] or r["unanswered"] or r["lostIn"] or r["lostOut"])))
        figures.append(figure(f"{where}: CPU per live call", r["cpuPerCall"], unit="% of a core"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,10,50", help="Simultaneous calls per level")
    parser.add_argument("--server", default="daphne", help="ASGI servers to compare, comma-separated (daphne,uvicorn)")
    parser.add_argument("--profile", type=int, metavar="LEVEL",
                        help="Also run this level once more with the gateway under pyinstrument; print its profile")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per level instead of progress lines")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="On a shared machine, before each measured level wait up to SECONDS for the other work to pause")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    servers = [s.strip() for s in args.server.split(",") if s.strip()]

    if pinned():
        os.sched_setaffinity(0, {LOAD_CORE})
    data_dir = tempfile.mkdtemp(prefix="voicecall-bench-")
    os.environ["VOICECALL_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "voicecall_project.settings"
    os.environ["VOICECALL_CONFIG"] = ""
    import django

    django.setup()
    from calls.simulator.call import Gateway
    from calls.simulator.rest import TwilioRestStub

    fake, fake_info = start_helper("realtime_fake.py")
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    rest_port = int(rest.base_url.rsplit(":", 1)[1])
    rows: list[dict] = []
    try:
        for server in servers:
            runs = [(level, None) for level in levels]
            if args.profile:
                runs.append((args.profile, Path(data_dir) / f"profile-{server}-{args.profile}.txt"))
            for calls, profile in runs:
                port = free_port()
                server_dir = tempfile.mkdtemp(prefix=f"{server}-", dir=data_dir)
                process = start_gateway(server_dir, gateway_config(port, rest_port, fake_info), server, profile)
                gateway = Gateway(base_url=f"http://127.0.0.1:{port}", webhook_url=f"http://127.0.0.1:{port}/voice/webhook",
                                  account_sid=ACCOUNT, auth_token=TOKEN)
                try:
                    asyncio.run(run_level(1, gateway, rest, process.pid, lines=LINES[:1]))  # warm-up: imports, caches
                    collect(fake)
                    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else 0.0
                    row = measure(calls, server, process, gateway, rest, fake, Path(server_dir) / "voicecall.sqlite3")
                finally:
                    stop_gateway(process)
                if profile is not None:
                    if os.environ.get("BENCH_CPROFILE"):
                        import pstats

                        print(f"\n--- cProfile of {server} at {calls} calls (own time) ---")
                        pstats.Stats(str(profile) + ".pstats").sort_stats("tottime").print_stats(45)
                    else:
                        print(f"\n--- profile of {server} at {calls} calls ---\n{profile.read_text()}")
                    continue
                row["waitedForQuiet"] = waited
                rows.append(row)
                print(json.dumps(row) if args.json else
                      f"{server} {calls} calls: inbound p99 {row['inbound']['p99']:.2f} ms, first frame p99 "
                      f"{row['first']['p99']:.2f} ms, steady p99 {row['steady']['p99']:.2f} ms, CPU per call "
                      f"{row['cpuPerCall']:.2f} %, failed {row['failed']}, unanswered {row['unanswered']}"
                      f"{' errors: ' + '; '.join(row['errors']) if row['errors'] else ''}", flush=True)
    finally:
        rest.stop()
        stop_helper(fake)
    print_table(rows)
    write_summary(args.summary, summary_rows(rows))


if __name__ == "__main__":
    main()
