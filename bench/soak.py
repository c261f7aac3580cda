"""Benchmark: 1,000 short calls against one gateway process; do RSS, open files, threads and open stream rows stay flat?

The gateway is bench/memory.py's (SQLite, embedded mode, Twilio carrier on a loopback REST stub,
local STT and TTS, a scripted responder), pinned to core 0; the simulated callers run here, on
core 1. Calls go in rounds of --every (100): each round's calls run --concurrency at a time, the
round waits until the gateway has recorded every call ended and every media stream closed, then
reads the gateway process: RSS (VmRSS), open file descriptors (/proc/PID/fd), threads
(/proc/PID/status) and media stream rows still open in the database. Readings: at start (no call
yet), after the first 10 calls (every path run once), after each round, at the end.

Pass rule (flat): at the end, RSS within +10 % of the reading after the warm-up (the first 10
calls and the first round: the allocator's pools and the caches fill during the first hundred
or two calls, then RSS levels off), open file descriptors and threads no more than after the
warm-up (+2 for a pool thread or socket that happens to be alive at the reading), no open
stream row and no call left unended (but those whose simulated caller failed, which must
have a deadline the sweeper acts on). The run passes when it is flat and every call completed.
Run: `.venv/bin/python bench/soak.py [--calls 1000] [--every 100] [--concurrency 8] [--turn-every 10]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import LOAD_CORE, pinned  # noqa: E402
from bench.memory import LINE, WARM_CALLS, Driver, start_run, wait_recorded  # noqa: E402
from bench.report import figure, write_summary  # noqa: E402

RSS_GROWTH_LIMIT = 0.10  # end RSS within +10 % of the reading after the warm-up
SLACK = 2  # fds / threads: a pool thread or a keep-alive socket alive at the moment of a reading


def reading(pid: int, db: Path, calls: int) -> dict:
    """One look at the gateway process and its database."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    with sqlite3.connect(db) as conn:
        open_streams = conn.execute("SELECT COUNT(*) FROM calls_mediastream WHERE closed_at IS NULL").fetchone()[0]
        live_calls, without_deadline = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(max_duration_deadline IS NULL AND stream_grace_deadline IS NULL), 0) "
            "FROM calls_call WHERE ended_at IS NULL").fetchone()
    return {"calls": calls, "rssMb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"]),
            "openStreams": open_streams, "liveCalls": live_calls, "noDeadline": without_deadline}


def verdict(warm: dict, end: dict, failed: int) -> list[str]:
    """What is not flat at the end against the reading after the warm-up (empty: flat).

    A call whose simulated caller failed (its stream never connected, say) is never ended by its
    carrier: it may still be live, waiting for its max-duration deadline.
    """
    problems = []
    if end["rssMb"] > warm["rssMb"] * (1 + RSS_GROWTH_LIMIT):
        problems.append(f"RSS {warm['rssMb']} -> {end['rssMb']} MB (over +{RSS_GROWTH_LIMIT:.0%})")
    for key in ("fds", "threads"):
        if end[key] > warm[key] + SLACK:
            problems.append(f"{key} {warm[key]} -> {end[key]}")
    if end["openStreams"]:
        problems.append(f"{end['openStreams']} open stream rows left")
    if end["liveCalls"] > failed or end["noDeadline"]:
        problems.append(f"{end['liveCalls']} calls unended ({end['noDeadline']} without a deadline)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100, help="Calls per round (a reading after each)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--turn-every", type=int, default=10, help="Every n-th call says a line and hears the reply")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    args = parser.parse_args()

    data_dir, rest, process, gateway = start_run("voicecall-bench-soak-")
    if pinned():
        os.sched_setaffinity(0, {LOAD_CORE})  # the callers beside the gateway, not on its core
    from calls.simulator.call import Line
    from calls.simulator.run import caller_audio

    db = data_dir / "voicecall.sqlite3"
    readings = [reading(process.pid, db, 0)]
    print(json.dumps(readings[-1]), flush=True)
    started = time.monotonic()
    try:
        audio = asyncio.run(caller_audio([Line(LINE)]))
        driver = Driver(gateway, rest, audio, args.concurrency, args.turn_every, process.pid)
        placed = 0
        for size in [WARM_CALLS] + [args.every] * ((args.calls - WARM_CALLS) // args.every) + \
                [(args.calls - WARM_CALLS) % args.every]:
            if size <= 0:
                continue
            asyncio.run(driver.run(size))
            placed += size
            wait_recorded(db, driver.completed())
            readings.append(reading(process.pid, db, placed))
            print(json.dumps({**readings[-1], "outcomes": driver.outcomes}), flush=True)
    finally:
        process.terminate()
        process.wait(10)
        rest.stop()
    seconds = time.monotonic() - started
    start, end = readings[0], readings[-1]
    warm = readings[2] if len(readings) > 3 else readings[1]  # after the first round, when there are several
    print(f"\n{args.calls} calls, {args.concurrency} at a time, in {seconds:.0f} s; outcomes: "
          + ", ".join(f"{name} {count}" for name, count in sorted(driver.outcomes.items())))
    print("\n| after calls | RSS (MB) | open fds | threads | open stream rows | unended calls |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in readings:
        print(f"| {row['calls']} | {row['rssMb']} | {row['fds']} | {row['threads']} | {row['openStreams']} "
              f"| {row['liveCalls']} |")
    for error in driver.errors:
        print(f"error: {error}")
    failed = args.calls - driver.completed()
    problems = verdict(warm, end, failed)
    leftovers = [problem for problem in problems if not problem.startswith("RSS")]
    growth = (end["rssMb"] - warm["rssMb"]) / warm["rssMb"] * 100
    write_summary(args.summary, [
        # RSS is judged over 1,000 calls (the allocator's pools still fill over a short run); the rest at any length.
        figure(f"RSS growth, after {warm['calls']} calls to after {args.calls}", growth, unit="%",
               target="<= +10 % over 1,000 calls", met=growth <= RSS_GROWTH_LIMIT * 100 if args.calls >= 1000 else None),
        figure("fds / threads / open streams, warm-up -> end",
               f"{warm['fds']}/{warm['threads']}/{warm['openStreams']} -> {end['fds']}/{end['threads']}/{end['openStreams']}",
               target="back to the warm-up reading", met=not leftovers),
    ])
    print(f"\nstart: {start['rssMb']} MB, {start['fds']} fds, {start['threads']} threads; after the warm-up "
          f"({warm['calls']} calls): {warm['rssMb']} MB, {warm['fds']} fds, {warm['threads']} threads; "
          f"RSS {growth:+.1f} % to the end")
    print("FLAT" if not problems else "NOT FLAT: " + "; ".join(problems))
    if failed:  # not a leak, but a soak passes only with every call completed
        print(f"{failed} of {args.calls} calls did not complete (see the errors above)")
    return 0 if not problems and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
