"""Run simulated calls (one or many at once) and summarize what they measured."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.transcription.local import LocalTranscription
from providers.tts.base import TtsChain
from providers.tts.local import LocalTts

from .call import JITTER_MS, CallReport, Gateway, Line, SimulatedCall, percentile
from .carrier import Dial
from .rest import RestStub


@dataclass
class SimulationReport:
    calls: list[CallReport] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        latencies = [v for c in self.calls for v in c.turn_latencies_ms]
        jitter = [v for c in self.calls for v in c.jitter_ms]
        lag = [v for c in self.calls for v in c.send_lag_ms]
        outcomes: dict[str, int] = {}
        for call in self.calls:
            outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
        return {
            "calls": len(self.calls),
            "outcomes": outcomes,
            "seconds": round(self.seconds, 2),
            "errors": sorted({c.error for c in self.calls if c.error}),
            "unansweredTurns": sum(c.unanswered_turns for c in self.calls),
            "turnLatencyMs": {"n": len(latencies), "p50": round(percentile(latencies, 50)), "p95": round(percentile(latencies, 95))},
            "playbackJitterMs": {"n": len(jitter), "p50": round(percentile(jitter, 50), 2), "p99": round(percentile(jitter, 99), 2)},
            "callerClockLagMs": {"p99": round(percentile(lag, 99), 2)},
            "clears": sum(c.clears for c in self.calls),
            "playoutUnderruns": sum(c.underruns for c in self.calls),
            "framesSent": sum(c.frames_sent for c in self.calls),
            "framesReceived": sum(c.frames_received for c in self.calls),
        }


async def caller_audio(lines: list[Line]) -> dict[str, bytes]:
    """Each distinct caller line spoken once by the offline voice, as μ-law 8 kHz."""
    chain = TtsChain([LocalTts()])
    audio: dict[str, bytes] = {}
    for line in lines:
        if line.text not in audio:
            audio[line.text] = b"".join([chunk async for chunk in chain.synthesize(line.text)])
    return audio


async def simulate(gateway: Gateway, lines: list[Line], *, calls: int = 1, ramp_ms: int = 200, listen: bool = True,
                   rest: RestStub | None = None, caller: str = "+15550100001", callee: str = "+15550100000",
                   hangup_after_ms: int = 1500, max_seconds: float = 60.0, jitter_ms: int = JITTER_MS,
                   audio: dict[str, bytes] | None = None, call_class: type[SimulatedCall] = SimulatedCall,
                   outbound: bool = False, place: Callable[[int], Any] | None = None, swap_every: int = 0,
                   dial_timeout: float = 30.0) -> SimulationReport:
    """Play `calls` simulated calls, `ramp_ms` apart, each speaking `lines`; each caller's playout
    starts `jitter_ms` into a talkspurt (a carrier's jitter buffer, deepened by underruns).

    Inbound, the carrier calls the gateway. `outbound`: the gateway dials (its carrier's baseUrl is
    `rest`, the simulated carrier's REST API) and the callee answers and speaks `lines`; `place(n)`
    (run on a thread, `ramp_ms` apart) asks the gateway for the n-th call, or, without it, the
    calls placed some other way are awaited (`dial_timeout` seconds for each to arrive).
    `audio` (line text → μ-law) replaces the offline voice; `call_class` a SimulatedCall subclass;
    `swap_every` sends every n-th media frame out of order.
    """
    audio = audio if audio is not None else await caller_audio(lines)
    ears = LocalTranscription({"silenceDurationMs": 600}) if listen else None
    loop = asyncio.get_running_loop()
    by_sid: dict[str, SimulatedCall] = {}
    extra = {"swap_every": swap_every} if swap_every else {}

    def make(dial: Dial | None = None) -> SimulatedCall:
        ends = {"caller": dial.from_, "callee": dial.to, "dial": dial} if dial is not None else {"caller": caller, "callee": callee}
        sim = call_class(gateway, lines=lines, audio=audio, ears=ears, hangup_after_ms=hangup_after_ms,
                         max_seconds=max_seconds, jitter_ms=jitter_ms, **ends, **extra)
        by_sid[sim.sid] = sim
        return sim

    def hung_up(sid: str) -> None:
        sim = by_sid.get(sid)
        if sim is not None:
            sim.gateway_hung_up()

    def commanded(sid: str, action: str, body: dict) -> None:
        sim = by_sid.get(sid)
        if sim is not None:
            sim.on_command(action, body)

    if rest is not None:
        rest.on_hangup = lambda sid: loop.call_soon_threadsafe(hung_up, sid)
        rest.on_command = lambda sid, action, body: loop.call_soon_threadsafe(commanded, sid, action, body)
    started = time.monotonic()
    if outbound:
        if rest is None:
            raise ValueError("outbound calls need the simulated carrier's REST API (rest) for the gateway to dial")
        return await _outbound(rest, make, calls=calls, ramp_ms=ramp_ms, place=place, dial_timeout=dial_timeout,
                               started=started)
    sims = [make() for _ in range(calls)]
    if rest is not None:
        for sid in by_sid:
            rest.status[sid] = "in-progress"

    async def staggered(index: int, sim: SimulatedCall) -> CallReport:
        await asyncio.sleep(index * ramp_ms / 1000)
        return await sim.run()

    reports = await asyncio.gather(*(staggered(i, sim) for i, sim in enumerate(sims)))
    return SimulationReport(calls=list(reports), seconds=time.monotonic() - started)


async def _outbound(rest: RestStub, make: Callable[..., SimulatedCall], *, calls: int, ramp_ms: int,
                    place: Callable[[int], Any] | None, dial_timeout: float, started: float) -> SimulationReport:
    """Answer the gateway's dials as their callees; place them first when `place` is given."""
    loop = asyncio.get_running_loop()
    runs: list[asyncio.Task[CallReport]] = []
    arrived = asyncio.Event()

    def dialled(dial: Dial) -> None:  # on the loop, before any later request for the call is handed over
        runs.append(asyncio.create_task(make(dial).run()))
        arrived.set()

    rest.on_dial = lambda dial: loop.call_soon_threadsafe(dialled, dial)
    failures: list[str] = []

    async def placing(index: int) -> None:
        await asyncio.sleep(index * ramp_ms / 1000)
        try:
            await asyncio.to_thread(place, index)
        except Exception as exc:  # reported with the calls, not raised past the ones that did start
            failures.append(f"placing call {index + 1} failed: {exc}")
            arrived.set()

    placers = [asyncio.create_task(placing(i)) for i in range(calls)] if place is not None else []
    try:
        while len(runs) < calls:
            arrived.clear()
            if placers and all(p.done() for p in placers) and len(runs) + len(failures) >= calls:
                break
            try:
                async with asyncio.timeout(dial_timeout):
                    await arrived.wait()
            except TimeoutError:
                failures.append(f"the gateway dialled {len(runs)} of {calls} calls within {dial_timeout:g} s "
                                f"(is its carrier baseUrl {rest.base_url}?)")
                break
        await asyncio.gather(*placers)
        reports = list(await asyncio.gather(*runs))
    finally:
        rest.on_dial = None
    for failure in failures:
        reports.append(CallReport(call_sid="", outcome="error", error=failure))
    return SimulationReport(calls=reports, seconds=time.monotonic() - started)
