"""Run simulated calls (one or many at once) and summarize what they measured."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from providers.transcription.local import LocalTranscription
from providers.tts.base import TtsChain
from providers.tts.local import LocalTts

from .call import JITTER_MS, CallReport, Gateway, Line, SimulatedCall, percentile
from .rest import TwilioRestStub


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
                   rest: TwilioRestStub | None = None, caller: str = "+15550100001", callee: str = "+15550100000",
                   hangup_after_ms: int = 1500, max_seconds: float = 60.0, jitter_ms: int = JITTER_MS,
                   audio: dict[str, bytes] | None = None, call_class: type[SimulatedCall] = SimulatedCall) -> SimulationReport:
    """Place `calls` simulated inbound calls, `ramp_ms` apart, each speaking `lines`; each caller's
    playout starts `jitter_ms` into a talkspurt (a carrier's jitter buffer, deepened by underruns).

    `audio` (line text → μ-law) replaces the offline voice; `call_class` a SimulatedCall subclass.
    """
    audio = audio if audio is not None else await caller_audio(lines)
    ears = LocalTranscription({"silenceDurationMs": 600}) if listen else None
    loop = asyncio.get_running_loop()
    sims = [call_class(gateway, caller=caller, callee=callee, lines=lines, audio=audio, ears=ears,
                          hangup_after_ms=hangup_after_ms, max_seconds=max_seconds, jitter_ms=jitter_ms) for _ in range(calls)]
    by_sid = {sim.sid: sim for sim in sims}
    if rest is not None:
        def hung_up(sid: str) -> None:
            sim = by_sid.get(sid)
            if sim is not None:
                loop.call_soon_threadsafe(sim.gateway_hung_up)

        rest.on_hangup = hung_up
        for sid in by_sid:
            rest.status[sid] = "in-progress"

    async def staggered(index: int, sim: SimulatedCall) -> CallReport:
        await asyncio.sleep(index * ramp_ms / 1000)
        return await sim.run()

    started = time.monotonic()
    reports = await asyncio.gather(*(staggered(i, sim) for i, sim in enumerate(sims)))
    return SimulationReport(calls=list(reports), seconds=time.monotonic() - started)
