"""Benchmark: simultaneous streamed calls against one gateway process, level by level until it breaks.

Starts `manage.py gateway` in its own process (SQLite, embedded mode, a scripted responder) and,
for each level of --calls, runs the carrier simulator from this process: every call gets a
greeting, speaks two lines in real-time 20 ms μ-law frames and waits for two replies.

Engines: `cloud` (the default) uses instant local fakes of the cloud speech services (Deepgram
streaming STT and OpenAI TTS, in their own process: bench/cloud_fakes.py), so what is measured is
the gateway's own media path; `local` is the fully offline mode (PocketSphinx STT in worker
processes, Piper TTS), where the recognizer's CPU is part of the cost.

On a machine with two or more cores the gateway is pinned to core 0 (`taskset`) and this process
and the fakes to core 1. --server runs the same levels under each ASGI server named (daphne,
uvicorn). Per level it reports, from the gateway's own stream counters, how far behind the
carrier's clock inbound frames were handled, how late outbound frames left their 20 ms slot, the
gateway-added turn latency (final transcript to the first reply audio frame sent) and the frames
the gateway never handled; from the simulator, failed calls, unanswered turns, the caller-heard
turn latency and the simulator's own clock lag; and the gateway's CPU and RSS.
Run: `.venv/bin/python bench/media_streams.py [--engine cloud|local] [--levels 10,25,50,100]
[--server daphne,uvicorn] [--profile LEVEL]`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_process import (  # noqa: E402
    LOAD_CORE,
    loadavg,
    pinned,
    proc_cpu_seconds,
    proc_rss_mb,
    start_gateway,
    start_helper,
    stop_gateway,
    stop_helper,
    stream_stats,
    thread_cpu_seconds,
    worst,
)
from bench.report import figure, write_summary  # noqa: E402
from calls.free_ports import free_port  # noqa: E402

ACCOUNT = "AC" + "b" * 32
TOKEN = "bench-token"
LINES = ["Hello, I would like to book an appointment please.", "Thank you, goodbye."]
GREETING = "Welcome to the clinic, how can I help you?"
REPLIES = ["Your appointment is booked for Monday morning.", "You are welcome, goodbye."]
# When a level breaks, per engine: inbound lag p99 and pacing late p99 (ms). Any failed call,
# unanswered turn or unhandled frame breaks a level too.
BREAK = {"cloud": (20.0, 5.0), "local": (100.0, 20.0)}


def gateway_config(engine: str, port: int, rest_port: int, fakes: dict | None) -> dict:
    config = {
        "provider": "twilio",
        "twilio": {"accountSid": ACCOUNT, "authToken": TOKEN, "baseUrl": f"http://127.0.0.1:{rest_port}"},
        "fromNumber": "+15550100000",
        "publicUrl": f"http://127.0.0.1:{port}",
        "serve": {"port": port},
        "inboundPolicy": "open",
        "maxConcurrentCalls": 1000,
        "inboundGreeting": GREETING,
        "streaming": {"enabled": True, "provider": "local", "maxConnections": 1000, "maxPendingConnections": 1000,
                      "maxPendingConnectionsPerIp": 1000},
        "tts": {"provider": "local"},
        "agents": {"main": {"responder": {"type": "scripted", "replies": REPLIES}}},
    }
    if engine == "cloud":
        config["streaming"].update(provider="deepgram", providers={"deepgram": {
            "apiKey": fakes["sttKey"], "baseUrl": fakes["stt"], "endpointingMs": 300}})
        config["tts"] = {"provider": "openai", "providers": {"openai": {
            "apiKey": fakes["ttsKey"], "baseUrl": fakes["tts"] + "/v1"}}}
    return config


GARBAGE = [
    "not json at all {", "[1, 2, 3]", '"a string"', '{"event": "media"}', '{"event": "media", "media": 5}',
    '{"event": "media", "media": {"payload": "%%% not base64 %%%"}}', '{"event": "mark", "mark": {}}',
    '{"event": "dtmf", "dtmf": {"digit": 7}}', '{"event": "no-such-event"}',
    '{"event": "media", "media": {"payload": "", "timestamp": "soon"}}',
]


async def send_garbage(gateway, frames: int) -> int:
    """One more call whose stream, once started, sends `frames` malformed frames in a burst, then hangs up.

    Returns how many the gateway took without closing the stream.
    """
    import httpx
    from websockets.asyncio.client import connect

    from calls.simulator.call import SimulatedCall, parse_stream

    sim = SimulatedCall(gateway, caller="+15550100666", callee="+15550100000", lines=[], audio={})
    async with httpx.AsyncClient(timeout=10) as http:
        sim._http = http
        stream_url, token = parse_stream(await sim._webhook({"CallStatus": "ringing"}))
        target, path = urlsplit(gateway.base_url), urlsplit(stream_url)
        sent = 0
        async with connect(f"ws://{target.netloc}{path.path}" + (f"?{path.query}" if path.query else ""),
                           compression=None) as ws:
            await ws.send(json.dumps({"event": "start", "streamSid": sim.stream_sid, "start": {
                "accountSid": gateway.account_sid, "streamSid": sim.stream_sid, "callSid": sim.sid,
                "customParameters": {"token": token}}}))
            await asyncio.sleep(2.0)  # the other calls are under way by then
            for index in range(frames):
                await ws.send(GARBAGE[index % len(GARBAGE)] if index % 7 else bytes(range(64)))
                sent += 1
                if index % 50 == 49:
                    await asyncio.sleep(0)  # a burst, but the socket's other traffic moves too
            await ws.send(json.dumps({"event": "stop", "streamSid": sim.stream_sid}))
        await sim._webhook({"CallStatus": "completed", "CallDuration": "3"})
        return sent


async def run_level(calls: int, gateway, rest, garbage: int = 0) -> dict:
    from calls.simulator.call import Line
    from calls.simulator.run import simulate

    # Every call is live at once: the arrivals spread over at most 5 s of a call lasting about 15 s.
    simulation = simulate(gateway, [Line(text) for text in LINES], calls=calls, ramp_ms=min(150, 5000 // calls),
                          listen=False, rest=rest, max_seconds=90)
    if not garbage:
        return (await simulation).summary()
    # From a process of its own: a burst from this one would make the simulated callers late too.
    sender = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--send-garbage", str(garbage), "--gateway", json.dumps(gateway.__dict__), cwd=ROOT)
    report, _ = await asyncio.gather(simulation, sender.wait())
    return report.summary()


def measure(calls: int, engine: str, server: str, process, gateway, rest, db: Path, garbage: int = 0) -> dict:
    rss_before = proc_rss_mb(process.pid)
    load = loadavg()
    (own_before, decoders_before), wall_before, started = proc_cpu_seconds(process.pid), time.monotonic(), time.time() - 1
    threads_before = thread_cpu_seconds(process.pid)
    summary = asyncio.run(run_level(calls, gateway, rest, garbage))
    wall = time.monotonic() - wall_before
    own_after, decoders_after = proc_cpu_seconds(process.pid)
    decoders = decoders_after - decoders_before
    cpu = own_after - own_before + decoders
    threads = {kind: round(seconds - threads_before.get(kind, 0.0), 2)
               for kind, seconds in thread_cpu_seconds(process.pid).items()}
    deadline = time.monotonic() + 15
    stats = stream_stats(db, started)
    while len(stats) < calls + bool(garbage) and time.monotonic() < deadline:  # the last streams are being recorded
        time.sleep(0.2)
        stats = stream_stats(db, started)
    dropped = 0
    if garbage and stats:  # the garbage stream's own numbers are not a call's
        junk = max(stats, key=lambda s: s.get("dropped", 0))
        dropped = junk.get("dropped", 0)
        stats.remove(junk)
    handled = sum(s.get("frames_in", 0) for s in stats)
    failed = calls - summary["outcomes"].get("completed", 0)
    inbound_limit, pacing_limit = BREAK[engine]
    row = {
        "server": server, "calls": calls, "failed": failed, "outcomes": summary["outcomes"],
        "errors": summary.get("errors", [])[:5], "unanswered": summary["unansweredTurns"],
        "framesSent": summary["framesSent"], "framesUnhandled": max(0, summary["framesSent"] - handled),
        "inboundLagP50": worst(stats, "inboundLagMs", "p50"), "inboundLagP99": worst(stats, "inboundLagMs", "p99"),
        "pacingP99": worst(stats, "pacingLateMs", "p99"),
        "gatewayTurnP50": worst(stats, "turnLatencyMs", "p50"), "gatewayTurnP99": worst(stats, "turnLatencyMs", "p99"),
        # The same less the wait for the TTS fake's first audio (the fakes share a core with the load).
        "ownTurnP50": worst(stats, "turnOwnLatencyMs", "p50"), "ownTurnP99": worst(stats, "turnOwnLatencyMs", "p99"),
        "heardTurnP50": summary["turnLatencyMs"]["p50"], "heardTurnP95": summary["turnLatencyMs"]["p95"],
        "simulatorLagP99": summary["callerClockLagMs"]["p99"],
        # CPU per second of call (the caller's frames are that clock): % of one core each live call costs.
        "cpuPerCall": 100 * cpu / max(1e-9, summary["framesSent"] * 0.020), "cpuSeconds": cpu, "wall": wall,
        # Depends little on how busy the machine is, so it compares runs better than the lag figures.
        "cpuSecondsPerCall": cpu / calls, "decoderSecondsPerCall": decoders / calls,
        "cpuByThread": threads, "rssPerCall": max(0.0, proc_rss_mb(process.pid) - rss_before) / calls,
        "rss": proc_rss_mb(process.pid), "load": load, "streams": len(stats), "garbageDropped": dropped,
    }
    row["breaks"] = bool(failed or row["unanswered"] or row["framesUnhandled"] or len(stats) < calls
                         or row["inboundLagP99"] > inbound_limit or row["pacingP99"] > pacing_limit)
    return row


def print_table(rows: list[dict], engine: str) -> None:
    inbound_limit, pacing_limit = BREAK[engine]
    print(f"\nengine {engine}; a level breaks on a failed call, an unanswered turn, an unhandled frame, "
          f"inbound lag p99 > {inbound_limit:g} ms or pacing late p99 > {pacing_limit:g} ms\n")
    print("| server | calls | failed / unanswered turns | frames unhandled | inbound lag p50 / p99 (ms) "
          "| pacing late p99 (ms) | gateway turn p50 / p99 (ms) | without TTS wait p50 / p99 (ms) | heard turn p50 / p95 (ms) "
          "| simulator lag p99 (ms) | CPU per live call (% core) | CPU s per call (decoders) | RSS per call (MB) "
          "| gateway RSS (MB) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = " **breaks**" if r["breaks"] else ""
        print(f"| {r['server']} | {r['calls']}{mark} | {r['failed']} / {r['unanswered']} "
              f"| {r['framesUnhandled']} of {r['framesSent']} "
              f"| {r['inboundLagP50']:.1f} / {r['inboundLagP99']:.1f} | {r['pacingP99']:.1f} "
              f"| {r['gatewayTurnP50']:.1f} / {r['gatewayTurnP99']:.1f} | {r['ownTurnP50']:.1f} / {r['ownTurnP99']:.1f} "
              f"| {r['heardTurnP50']:.0f} / {r['heardTurnP95']:.0f} "
              f"| {r['simulatorLagP99']:.1f} | {r['cpuPerCall']:.2f} | {r['cpuSecondsPerCall']:.2f} ({r['decoderSecondsPerCall']:.2f}) "
              f"| {r['rssPerCall']:.2f} | {r['rss']:.0f} "
              f"| {r['load']:.2f} |")
    for server in dict.fromkeys(r["server"] for r in rows):
        first_break = next((r["calls"] for r in rows if r["server"] == server and r["breaks"]), None)
        print(f"{server}: first breaks at {first_break or 'no level tested'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=sorted(BREAK), default="cloud")
    parser.add_argument("--levels", default=None, help="Simultaneous calls per level (default: cloud 10,25,50,100; "
                                                        "local 1,4,8,12)")
    parser.add_argument("--server", default="daphne", help="ASGI servers to compare, comma-separated (daphne,uvicorn)")
    parser.add_argument("--profile", type=int, metavar="LEVEL",
                        help="Also run this level once more with the gateway under pyinstrument; print its profile")
    parser.add_argument("--garbage", type=int, default=0, metavar="N",
                        help="One more stream per level sends N malformed frames in a burst, to show they cost the others nothing")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    parser.add_argument("--send-garbage", type=int, help=argparse.SUPPRESS)  # the garbage stream's own process
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="Print one JSON object per level instead of progress lines")
    args = parser.parse_args()
    levels = [int(x) for x in (args.levels or ("10,25,50,100" if args.engine == "cloud" else "1,4,8,12")).split(",")]
    servers = [s.strip() for s in args.server.split(",") if s.strip()]

    if pinned():
        os.sched_setaffinity(0, {LOAD_CORE})
    if args.send_garbage:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicecall_project.settings")
        import django

        django.setup()
        from calls.simulator.call import Gateway

        asyncio.run(send_garbage(Gateway(**json.loads(args.gateway)), args.send_garbage))
        return
    data_dir = tempfile.mkdtemp(prefix="voicecall-bench-")
    os.environ["VOICECALL_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "voicecall_project.settings"
    os.environ["VOICECALL_CONFIG"] = ""
    import django

    django.setup()
    from calls.simulator.call import Gateway
    from calls.simulator.rest import TwilioRestStub

    fakes_process, fakes = start_helper("cloud_fakes.py") if args.engine == "cloud" else (None, None)
    rest = TwilioRestStub(on_hangup=lambda sid: None).start()
    rest_port = int(rest.base_url.rsplit(":", 1)[1])
    rows: list[dict] = []
    try:
        for server in servers:
            runs = [(level, None) for level in levels]
            if args.profile:
                runs.append((args.profile, Path(data_dir) / f"profile-{server}-{args.profile}.txt"))
            for level, profile in runs:
                port = free_port()
                server_dir = tempfile.mkdtemp(prefix=f"{server}-", dir=data_dir)
                process = start_gateway(server_dir, gateway_config(args.engine, port, rest_port, fakes), server, profile)
                gateway = Gateway(base_url=f"http://127.0.0.1:{port}", webhook_url=f"http://127.0.0.1:{port}/voice/webhook",
                                  account_sid=ACCOUNT, auth_token=TOKEN)
                try:
                    asyncio.run(run_level(1, gateway, rest))  # warm-up: models loaded, caches filled
                    row = measure(level, args.engine, server, process, gateway, rest, Path(server_dir) / "voicecall.sqlite3",
                                  args.garbage)
                finally:
                    stop_gateway(process)
                if profile is not None and os.environ.get("BENCH_CPROFILE"):
                    import pstats

                    print(f"\n--- cProfile of {server} at {level} calls (own time) ---")
                    pstats.Stats(str(profile) + ".pstats").sort_stats("tottime").print_stats(45)
                    continue
                if profile is not None:
                    print(f"\n--- profile of {server} at {level} calls ---\n{profile.read_text()}")
                    continue
                rows.append(row)
                junk = f" (+ a stream whose {row['garbageDropped']} garbage frames were dropped)" if args.garbage else ""
                print(json.dumps(row) if args.json else
                      f"{server} {level} calls{junk}: inbound p99 {row['inboundLagP99']:.1f} ms, pacing p99 "
                      f"{row['pacingP99']:.1f} ms, failed {row['failed']}, unanswered {row['unanswered']}"
                      f"{' (breaks)' if row['breaks'] else ''}", flush=True)
    finally:
        rest.stop()
        if fakes_process is not None:
            stop_helper(fakes_process)
    print_table(rows, args.engine)
    write_summary(args.summary, summary_rows(rows, args.engine))


def summary_rows(rows: list[dict], engine: str) -> list[dict]:
    inbound_limit, pacing_limit = BREAK[engine]
    figures = []
    for r in rows:
        where = f"{r['server']}, {r['calls']} calls"
        figures.append(figure(f"{where}: inbound lag p99", r["inboundLagP99"], unit="ms", target=f"< {inbound_limit:g} ms",
                              met=r["inboundLagP99"] < inbound_limit))
        figures.append(figure(f"{where}: pacing late p99", r["pacingP99"], unit="ms", target=f"< {pacing_limit:g} ms",
                              met=r["pacingP99"] < pacing_limit))
        figures.append(figure(f"{where}: failed calls / unanswered turns / unhandled frames",
                              f"{r['failed']} / {r['unanswered']} / {r['framesUnhandled']}", target="0 / 0 / 0",
                              met=not (r["failed"] or r["unanswered"] or r["framesUnhandled"])))
        if engine == "cloud":
            figures.append(figure(f"{where}: gateway turn latency p99 (less the TTS fake's wait)", r["ownTurnP99"],
                                  unit="ms", target="< 10 ms", met=r["ownTurnP99"] < 10))
        figures.append(figure(f"{where}: CPU per live call", r["cpuPerCall"], unit="% of a core"))
    for server in dict.fromkeys(r["server"] for r in rows):
        held = [r["calls"] for r in rows if r["server"] == server and not r["breaks"]]
        target = "100" if engine == "cloud" else "12"
        figures.append(figure(f"{server}: most calls held of the levels run", max(held, default=0), target=f">= {target}",
                              met=max(held, default=0) >= int(target)))
    return figures


if __name__ == "__main__":
    main()
