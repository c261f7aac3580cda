"""Benchmark: the gateway process's memory after many complete streamed calls (does anything grow per call?).

Starts `manage.py gateway` in its own process (SQLite, embedded mode, Twilio carrier pointed at a
loopback REST stub, local PocketSphinx STT and Piper TTS, a scripted responder) and runs --calls
simulated inbound calls through it, --concurrency at a time. Every call is the ringing webhook
answered with TwiML, a media stream (start, real-time 20 ms μ-law frames, stop) and the completed
webhook; the first 10 calls and every --turn-every-th call after them also hear the greeting, say
one line and hear the reply (a turn: transcription, the responder, synthesis, playback), the others
hang up within a second, as the greeting starts. The first 10 are all turns so that every path a
call takes has run once (libraries paged in, the voice model loaded) before the first reading:
what grows after that grows per call. It reads the gateway process's own RSS
(VmRSS; the decoder worker processes are not counted) once the first 10 calls are complete and
recorded, and again after all of them, and prints the growth per call.
With --trace, the gateway runs with tracemalloc (VOICECALL_TRACEMALLOC) and the largest growth by
allocation site between the two points is printed too.
Run: `.venv/bin/python bench/memory.py [--calls 1000] [--concurrency 8] [--turn-every 10] [--trace]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import GATEWAY_CORE, on_core, wait_serving  # noqa: E402
from calls.free_ports import free_port  # noqa: E402
from bench.report import figure, write_summary  # noqa: E402

ACCOUNT = "AC" + "c" * 32
TOKEN = "bench-token"
LINE = "Hello, I would like an appointment."
WARM_CALLS = 10
TARGET_KB_PER_CALL = 50


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_gateway(data_dir: Path, port: int, rest_port: int, trace: bool) -> subprocess.Popen:
    config = {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": f"http://127.0.0.1:{rest_port}"},
        "fromNumber": "+15550100000",
        "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "inboundPolicy": "open",
        "maxConcurrentCalls": 1000,
        "inboundGreeting": "Hello, how can I help?",
        "streaming": {"enabled": True, "provider": "local", "maxConnections": 1000, "maxPendingConnections": 1000,
                      "maxPendingConnectionsPerIp": 1000},
        "tts": {"provider": "local"},
        "agents": {"main": {"responder": {"type": "scripted", "replies": ["It is booked, goodbye."]}}},
    }
    path = data_dir / "voicecall.json"
    path.write_text(json.dumps(config))
    # Embedded mode (SQLite in the data directory), whatever this shell points at.
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(VOICECALL_DATA_DIR=str(data_dir), VOICECALL_CONFIG=str(path), VOICECALL_LOG_LEVEL="WARNING",
               DJANGO_SETTINGS_MODULE="voicecall_project.settings")
    if trace:
        env["VOICECALL_TRACEMALLOC"] = str(data_dir / "heap")
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    gateway = subprocess.Popen([*on_core(GATEWAY_CORE), python, "manage.py", "gateway"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=open(data_dir / "gateway.log", "w"))
    return wait_serving(gateway, port, log=str(data_dir / "gateway.log"))


def start_run(prefix: str, trace: bool = False):
    """Django set up here on a new data directory, the Twilio REST stub, and the gateway process serving:
    (data_dir, rest, process, the simulator's Gateway)."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(VOICECALL_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="voicecall_project.settings",
                      VOICECALL_CONFIG="")
    import django

    django.setup()
    from calls.simulator.call import Gateway
    from calls.simulator.rest import TwilioRestStub

    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    port = free_port()
    process = start_gateway(data_dir, port, int(rest.base_url.rsplit(":", 1)[1]), trace)
    gateway = Gateway(base_url=f"http://127.0.0.1:{port}", webhook_url=f"http://127.0.0.1:{port}/voice/webhook",
                      account_sid=ACCOUNT, auth_token=TOKEN)
    return data_dir, rest, process, gateway


def all_recorded(db: Path, calls: int) -> bool:
    """`calls` calls ended and every media stream closed, as the gateway recorded them."""
    with sqlite3.connect(db) as conn:
        ended = conn.execute("SELECT COUNT(*) FROM calls_call WHERE ended_at IS NOT NULL").fetchone()[0]
        open_streams = conn.execute("SELECT COUNT(*) FROM calls_mediastream WHERE closed_at IS NULL").fetchone()[0]
    return ended >= calls and open_streams == 0


def wait_recorded(db: Path, calls: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all_recorded(db, calls):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not record the end of {calls} calls in {timeout:.0f} s")
        time.sleep(0.2)


def heap_snapshot(pid: int, heap_dir: Path, name: str, timeout: float = 60) -> Path:
    """Ask the gateway (SIGUSR1) for a tracemalloc snapshot and wait for the file."""
    before = set(heap_dir.glob("*.snapshot")) if heap_dir.exists() else set()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = (set(heap_dir.glob("*.snapshot")) if heap_dir.exists() else set()) - before
        if new:
            path = new.pop()
            target = heap_dir / f"{name}.snap"
            path.rename(target)
            path.with_suffix(".types.json").rename(heap_dir / f"{name}.types.json")
            return target
        time.sleep(0.2)
    raise RuntimeError("the gateway wrote no heap snapshot (was it started with VOICECALL_TRACEMALLOC?)")


class Driver:
    """Places simulated calls, `concurrency` at a time, and counts the completed ones."""

    def __init__(self, gateway, rest, audio, concurrency: int, turn_every: int, pid: int) -> None:
        self.pid = pid
        self.gateway, self.rest, self.audio = gateway, rest, audio
        self.concurrency = concurrency
        self.turn_every = turn_every
        self.placed = 0
        self.outcomes: dict[str, int] = {}
        self.errors: list[str] = []
        self.live: dict[str, object] = {}

    def completed(self) -> int:
        """Calls the simulator took to the end (the completed webhook sent)."""
        return self.outcomes.get("completed", 0) + self.outcomes.get("hangup-bot", 0)

    def hung_up(self, sid: str) -> None:  # on the REST stub's thread
        sim = self.live.get(sid)
        if sim is not None:
            self.loop.call_soon_threadsafe(sim.gateway_hung_up)

    async def run(self, calls: int) -> None:
        from calls.simulator.call import Line, SimulatedCall

        self.loop = asyncio.get_running_loop()
        self.rest.on_hangup = self.hung_up
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one() -> None:
            async with semaphore:
                turn = self.placed < WARM_CALLS or self.placed % self.turn_every == 0
                self.placed += 1
                # Without a line to say, the caller hangs up once the gateway has been quiet for 300 ms.
                sim = SimulatedCall(self.gateway, caller="+15550100001", callee="+15550100000",
                                    lines=[Line(LINE)] if turn else [], audio=self.audio, hangup_after_ms=300,
                                    max_seconds=60)
                self.rest.status[sim.sid] = "in-progress"
                self.live[sim.sid] = sim
                try:
                    report = await sim.run()
                finally:
                    self.live.pop(sim.sid, None)
                    self.rest.status.pop(sim.sid, None)
                self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1
                done = sum(self.outcomes.values())
                if done % 100 == 0:  # progress, and whether growth levels off (calls may still be ending)
                    print(json.dumps({"done": done, "rssKb": rss_kb(self.pid)}), flush=True)
                if report.error and len(self.errors) < 5:
                    self.errors.append(report.error)

        await asyncio.gather(*(one() for _ in range(calls)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--turn-every", type=int, default=10, help="Every n-th call says a line and hears the reply")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the gateway; print the top growth")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    args = parser.parse_args()

    data_dir, rest, process, gateway = start_run("voicecall-bench-memory-", args.trace)
    from calls.simulator.call import Line
    from calls.simulator.run import caller_audio

    db = data_dir / "voicecall.sqlite3"
    heap = data_dir / "heap"
    try:
        audio = asyncio.run(caller_audio([Line(LINE)]))
        driver = Driver(gateway, rest, audio, args.concurrency, args.turn_every, process.pid)
        started = time.monotonic()
        asyncio.run(driver.run(WARM_CALLS))
        print(json.dumps({"calls": WARM_CALLS, "outcomes": driver.outcomes, "errors": driver.errors}), flush=True)
        wait_recorded(db, driver.completed())
        rss_warm = rss_kb(process.pid)
        if args.trace:
            heap_snapshot(process.pid, heap, "warm")
        print(json.dumps({"calls": WARM_CALLS, "rssKb": rss_warm, "seconds": round(time.monotonic() - started)}), flush=True)
        asyncio.run(driver.run(args.calls - WARM_CALLS))
        wait_recorded(db, driver.completed())
        rss_end = rss_kb(process.pid)
        seconds = time.monotonic() - started
        print(json.dumps({"calls": args.calls, "outcomes": driver.outcomes, "rssKb": rss_end, "seconds": round(seconds)}),
              flush=True)
        if args.trace:
            print_growth(heap / "warm.snap", heap_snapshot(process.pid, heap, "end"), args.calls - WARM_CALLS)
    finally:
        process.terminate()
        process.wait(10)
        rest.stop()
    per_call = (rss_end - rss_warm) / (args.calls - WARM_CALLS)
    print()
    print("| calls | with a turn | concurrency | outcomes | RSS after 10 (MB) | RSS after all (MB) | growth per call (KB) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(driver.outcomes.items()))
    turns = WARM_CALLS + sum(1 for index in range(WARM_CALLS, args.calls) if index % args.turn_every == 0)
    print(f"| {args.calls} | {turns} | {args.concurrency} | {outcomes} | {rss_warm / 1024:.1f} | {rss_end / 1024:.1f} "
          f"| {per_call:.1f} | {seconds:.0f} |")
    for error in driver.errors:
        print(f"error: {error}")
    verdict = "within" if per_call <= TARGET_KB_PER_CALL else "OVER"
    # The target is over 1,000 calls: the allocator's pools fill during the first couple of hundred.
    full = args.calls >= 1000
    write_summary(args.summary, [figure(f"RSS growth per call, after 10 to after {args.calls}", per_call, unit="KB",
                                        target=f"<= {TARGET_KB_PER_CALL} KB over 1,000 calls",
                                        met=per_call <= TARGET_KB_PER_CALL if full else None)])
    if full:
        print(f"\n{verdict} the target of {TARGET_KB_PER_CALL} KB per call")
    else:
        print(f"\n{verdict} {TARGET_KB_PER_CALL} KB per call; the target is judged over 1,000 calls")


def print_growth(before: Path, after: Path, calls: int, top: int = 15) -> None:
    import tracemalloc

    types_before = json.loads(before.with_suffix(".types.json").read_text())
    types_after = json.loads(after.with_suffix(".types.json").read_text())
    growth = sorted(((count - types_before.get(name, 0), name) for name, count in types_after.items()), reverse=True)
    print(f"\nlive objects growing most over {calls} calls:")
    for count, name in growth[:top]:
        print(f"{count:+8d} {name}")
    diff = tracemalloc.Snapshot.load(str(after)).compare_to(tracemalloc.Snapshot.load(str(before)), "traceback")
    print(f"\nlargest growth by allocation site over {calls} calls:")
    for stat in diff[:top]:
        print(f"{stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-6:]:
            print("    " + line)


if __name__ == "__main__":
    main()
