"""A simulated Twilio caller for realtime calls: tone lines the fake model hears, lines held until the test says go."""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np

from calls.simulator.call import Gateway, Line, SimulatedCall
from calls.simulator.rest import TwilioRestStub
from core.audio import samples_to_ulaw


def tone(ms: int, amplitude: float = 0.3) -> bytes:
    """A loud 300 Hz tone: the fake's voice detection hears it as speech (its text comes from the script)."""
    t = np.arange(ms * 8) / 8000
    return samples_to_ulaw((np.sin(2 * np.pi * 300 * t) * amplitude * 32767).astype(np.int16))


class RealtimeCaller(SimulatedCall):
    """A SimulatedCall whose lines are tones, some held back until the test releases them (`go`), and
    which notes how many frames its playout had played when each line started and at each clear."""

    def __init__(self, gateway: Gateway, lines: list[Line], *, held: tuple[str, ...] = (), line_ms: int = 400,
                 caller: str = "+15550100001", callee: str = "+15550100000", **kwargs) -> None:
        super().__init__(gateway, caller=caller, callee=callee, lines=lines,
                         audio={line.text: tone(line_ms) for line in lines}, **kwargs)
        self.gates = {text: asyncio.Event() for text in held}
        self.played_at_line: dict[str, int] = {}  # line text → frames_played when it started
        self.played_at_clear: list[int] = []  # frames_played when each clear arrived
        self._clears_seen = 0
        self.frame_sizes: set[int] = set()  # sizes of the media payloads the gateway sent
        # Set to hold back the carrier's "completed" status callback after the stream stopped (the
        # call stays up, in its disconnect grace) until the test releases it.
        self.completed_gate: asyncio.Event | None = None

    def go(self, text: str) -> None:
        """Let the held line `text` be said (once the caller would say it anyway)."""
        self.gates[text].set()

    def _ready_for(self, line: Line, now: float) -> bool:
        gate = self.gates.get(line.text)
        if gate is not None and not gate.is_set():
            return False
        ready = super()._ready_for(line, now)
        if ready:
            self.played_at_line[line.text] = self.report.frames_played
        return ready

    async def _webhook(self, params: dict[str, str]) -> str:
        if params.get("CallStatus") == "completed" and self.completed_gate is not None:
            self.stream_stopped = True
            await self.completed_gate.wait()
        return await super()._webhook(params)

    stream_stopped = False  # the caller sent stop and holds back its "completed" callback

    async def _receive(self, ws) -> None:
        await super()._receive(_Noting(ws, self.frame_sizes))

    def _play_one(self, now: float) -> None:
        # A clear empties the playout between two ticks, so the count now is the count at the clear.
        while self._clears_seen < self.report.clears:
            self._clears_seen += 1
            self.played_at_clear.append(self.report.frames_played)
        super()._play_one(now)


class _Noting:
    """The media socket as the receiver iterates it, noting each media payload's size on the way."""

    def __init__(self, ws, sizes: set[int]) -> None:
        self.ws, self.sizes = ws, sizes

    async def __aiter__(self):
        async for raw in self.ws:
            if '"media"' in raw:
                message = json.loads(raw)
                if message.get("event") == "media":
                    self.sizes.add(len(base64.b64decode(message["media"]["payload"])))
            yield raw


def start_call(gateway: Gateway, lines: list[Line], *, rest: TwilioRestStub, **kwargs) -> tuple[RealtimeCaller, asyncio.Task]:
    """Place the call in a task (as calls/simulator/run.py does, with the REST stub's hang-ups wired in)."""
    sim = RealtimeCaller(gateway, lines, **kwargs)
    loop = asyncio.get_running_loop()

    def hung_up(sid: str) -> None:
        if sid == sim.sid:
            loop.call_soon_threadsafe(sim.gateway_hung_up)

    rest.on_hangup = hung_up
    rest.status[sim.sid] = "in-progress"
    return sim, asyncio.create_task(sim.run())
