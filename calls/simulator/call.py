"""One simulated call, carrier-neutral: its start (webhooks or a dial), media stream, caller script, playback, ears.

What differs between carriers (signatures, how the stream is handed over, frame shapes, REST) is
the carrier side's (calls/simulator/carrier.py and one module per carrier).
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from core.audio import FRAME_BYTES, SILENCE_FRAME, Pacer, rms, ulaw_to_samples

from .carrier import Dial, Refused
from .rest import carrier_side
from .twilio import parse_stream

__all__ = ["CallReport", "Gateway", "Line", "SimulatedCall", "TimedText", "parse_stream", "percentile"]


SPEECH_RMS = 200.0  # a played frame louder than this is gateway speech, not silence
QUIET_AFTER_MS = 700  # the caller answers once the gateway has been quiet this long
SILENT_GATEWAY_S = 8.0  # with no greeting heard by then, the caller speaks anyway
BARGE_IN_AFTER_MS = 1200  # an interrupting line starts this long after the gateway starts talking
# After a line the caller waits this long for an answer (before going on, or hanging up after the last).
REPLY_TIMEOUT = 10.0
# Twilio's side plays through a jitter buffer, as carriers do: a talkspurt starts playing once this
# much of it has arrived (or its first frame has waited this long). A frame arriving after the
# buffer ran dry mid-speech (an underrun) doubles the depth, up to MAX_JITTER_MS, so a loaded
# gateway's late frames cost some delay instead of gaps in what the caller hears.
JITTER_MS = 60
MAX_JITTER_MS = 1000
UNDERRUN_WINDOW_S = 0.25  # audio arriving this soon after the buffer ran dry continues the same speech
FRAME_S = FRAME_BYTES / 8000  # 20 ms of μ-law
EAR_SETTLE_S = 5.0  # at hang-up, the caller's ears finish transcribing what was heard, this long at most


@dataclass(frozen=True)
class Line:
    """One thing the caller says; `interrupt` lines talk over the gateway's next reply."""

    text: str
    interrupt: bool = False


@dataclass
class TimedText:
    at: float  # seconds since the call started
    who: str  # "caller" or "gateway"
    text: str


@dataclass
class CallReport:
    call_sid: str
    outcome: str = "pending"
    transcript: list[TimedText] = field(default_factory=list)
    turn_latencies_ms: list[float] = field(default_factory=list)
    unanswered_turns: int = 0  # lines after which the gateway said nothing for REPLY_TIMEOUT (or hung up)
    jitter_ms: list[float] = field(default_factory=list)
    frames_sent: int = 0
    # frames_sent when the gateway's first audio frame arrived: the gateway speaks only once its
    # transcription is ready, so every frame sent from then on must reach the recognizer.
    frames_sent_before_gateway_audio: int | None = None
    frames_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    clear_at: list[float] = field(default_factory=list)  # seconds since the call started
    frames_played: int = 0  # media frames the playout played (every frame received is played or cleared)
    speech_frames_played: int = 0
    frames_cleared: int = 0  # media frames a clear dropped from the buffer before they played
    underruns: int = 0  # the buffer ran dry while the gateway was still sending the same speech
    send_lag_ms: list[float] = field(default_factory=list)
    stream_closed_by_gateway: bool = False  # the gateway closed the media socket (the call ends, as on Twilio)
    error: str = ""

    def heard(self) -> str:
        return " ".join(t.text for t in self.transcript if t.who == "gateway")


@dataclass
class Gateway:
    """Where the gateway is, which carrier the simulator plays, and how to sign for it."""

    base_url: str  # http://host:port the simulator connects to
    webhook_url: str  # the public URL the gateway verifies signatures against
    account_sid: str = ""  # Twilio's account SID, Plivo's auth ID, Telnyx's connection id
    auth_token: str = ""  # Twilio's and Plivo's auth token (their webhooks' HMAC key)
    # Where the media stream connects, when not base_url: in a cluster, another node than the webhook's.
    stream_base_url: str | None = None
    carrier: str = "twilio"  # twilio | telnyx | plivo
    telnyx_private_key: Any = None  # Ed25519PrivateKey whose public key is the gateway's telnyx.publicKey


class SimulatedCall:
    """One call: inbound (the carrier's first webhook) or, given the gateway's `dial`, outbound (the callee answers).

    `swap_every` n > 0 sends every n-th media frame after the one following it (a carrier that
    does not keep order).
    """

    def __init__(self, gateway: Gateway, *, caller: str, callee: str, lines: list[Line], audio: dict[str, bytes],
                 ears=None, hangup_after_ms: int = 1500, max_seconds: float = 60.0, jitter_ms: int = JITTER_MS,
                 dial: Dial | None = None, swap_every: int = 0) -> None:
        self.gateway = gateway
        self.side = carrier_side(gateway.carrier, gateway)
        self.dial = dial
        self.swap_every = swap_every
        self.caller, self.callee = caller, callee
        self.lines = lines
        self.audio = audio  # caller line text → μ-law, made before the call starts
        self.ears = ears  # a transcription provider for what the caller hears, or None
        self.hangup_after_ms = hangup_after_ms
        self.max_seconds = max_seconds
        self.sid = dial.sid if dial is not None else self.side.new_sid()
        self.report = CallReport(self.sid)
        self.stream_sid = self.side.new_stream_id()
        self.leg_id = secrets.token_hex(16)
        self._held: str | None = None  # a media frame kept back to go after the next one (swap_every)
        self.sequence = 1  # the stream's message count (the start frame is 1; Telnyx numbers its marks too)
        self.client_state = dial.body.get("client_state") if dial is not None else None  # Telnyx echoes it
        self._commands: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()  # what the gateway asked over REST
        self.hung_up_by_gateway = asyncio.Event()
        self.stream_closed = asyncio.Event()  # the gateway closed the media WebSocket
        self._t0 = time.monotonic()
        # Twilio's side of playback: frames queued in order, with marks between them (a jitter buffer).
        self._playout: deque[bytes | str] = deque()
        self._buffered = 0  # media frames in the playout
        self._jitter_s = jitter_ms / 1000
        self._playing = False  # False while a talkspurt fills the buffer
        self._first_buffered_at: float | None = None
        self._ran_dry_at: float | None = None
        self._bot_talking_since: float | None = None
        self._bot_quiet_since = time.monotonic()
        self._mouth: list[bytes] = []
        self._line_end_at: float | None = None
        self._awaiting_reply = False
        self._heard_speech = False
        self._last_arrival: float | None = None

    def _now(self) -> float:
        return time.monotonic() - self._t0

    # --- the call ---------------------------------------------------------------------------

    async def run(self) -> CallReport:
        try:
            async with asyncio.timeout(self.max_seconds):
                await self._run()
        except TimeoutError:
            self.report.outcome = "timeout"
        except Exception as exc:
            self.report.outcome = "error"
            self.report.error = f"{type(exc).__name__}: {exc}"[:300]
        return self.report

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        async with httpx.AsyncClient(timeout=10) as http:
            self._http = http
            try:
                plan = await (self.side.begin_outbound(self) if self.dial is not None else self.side.begin_inbound(self))
            except Refused as exc:
                self.report.outcome = "refused"
                self.report.error = str(exc)[:300]
                return
            target = urlsplit(self.gateway.stream_base_url or self.gateway.base_url)
            path = urlsplit(plan.url)
            ws_url = f"ws://{target.netloc}{path.path}" + (f"?{path.query}" if path.query else "")
            # No permessage-deflate: carriers' media streams are not compressed.
            async with connect(ws_url, max_size=2**20, open_timeout=10, compression=None,
                               additional_headers=plan.headers or None) as ws:
                self.ws = ws
                for frame in self.side.opening(self, plan):
                    await ws.send(frame)
                self.ear = self._ear = None
                if self.ears is not None:
                    self._ear = _Ear(self)
                    self.ear = self.ears.create_session(self._ear)
                    await self.ear.connect()
                receiver = asyncio.create_task(self._receive_until_closed(ws))
                try:
                    await self._clock(ws)
                    await self._ears_settle()
                finally:
                    receiver.cancel()
                    if self.ear is not None:
                        await self.ear.close()
                stop = self.side.stop(self)
                try:
                    if stop is not None:
                        await ws.send(stop)
                except Exception:
                    pass
            await self.side.end(self, int(self._now()))
            if self.report.outcome == "pending":
                gateway_ended = self.hung_up_by_gateway.is_set() or self.stream_closed.is_set()
                self.report.outcome = "hangup-bot" if gateway_ended else "completed"

    @property
    def http(self) -> httpx.AsyncClient:
        """The call's HTTP client for its webhooks (set while the call runs)."""
        return self._http

    async def _webhook(self, params: dict[str, str]) -> str:
        """A Twilio webhook to the gateway's webhook URL (Twilio's side only); the TwiML it answers."""
        return await self.side.post(self, self.gateway.webhook_url, params)

    async def command(self, *actions: str, timeout: float = 15.0) -> tuple[str, dict]:
        """The next of these REST commands the gateway sent for this call (a hang-up ends the wait too)."""
        async with asyncio.timeout(timeout):
            while True:
                action, body = await self._commands.get()
                if action in actions or action == "hangup":
                    return action, body

    def on_command(self, action: str, body: dict) -> None:
        """The gateway asked something of this call over REST (on the call's loop)."""
        self._commands.put_nowait((action, body))

    # --- 20 ms clock: the caller's mouth and the carrier's playout --------------------------------

    async def _clock(self, ws) -> None:
        pacer = Pacer()
        pacer.start()
        lines = list(self.lines)
        try:
            await self._speak_and_listen(ws, pacer, lines)
        finally:
            if self._held is not None:  # a frame kept back to go out of order still goes
                await self._send(self._held)
                self._held = None
            if self._awaiting_reply:
                self._unanswered()  # the call ended while the caller still waited for an answer

    def _unanswered(self) -> None:
        self.report.unanswered_turns += 1
        self._awaiting_reply = False

    async def _speak_and_listen(self, ws, pacer: Pacer, lines: list[Line]) -> None:
        from websockets.exceptions import ConnectionClosed

        timestamp = 0
        done_at: float | None = None
        while not self.hung_up_by_gateway.is_set() and not self.stream_closed.is_set():
            lag = await pacer.wait()
            self.report.send_lag_ms.append(lag * 1000)
            now = time.monotonic()
            self._play_one(now)
            if not self._mouth and lines and self._ready_for(lines[0], now):
                line = lines.pop(0)
                self._mouth = list(_frames(self.audio[line.text]))
                self.report.transcript.append(TimedText(self._now(), "caller", line.text))
                self._line_end_at = None
            frame = self._mouth.pop(0) if self._mouth else SILENCE_FRAME
            if not self._mouth and self._line_end_at is None and self.report.transcript and frame is not SILENCE_FRAME:
                self._line_end_at = now + 0.02
                self._awaiting_reply = True
            self.sequence += 1
            sequence = self.sequence
            timestamp += 20
            if self.stream_closed.is_set():
                return
            try:
                text = self.side.media(self, sequence, timestamp, base64.b64encode(self._sending(frame)).decode())
                if self.swap_every and sequence % self.swap_every == 0:
                    self._held = text  # sent after the next frame
                else:
                    await ws.send(text)
                    if self._held is not None:
                        held, self._held = self._held, None
                        await ws.send(held)
            except ConnectionClosed:
                return  # the gateway closed the stream between two frames: the receiver notes it
            self.report.frames_sent += 1
            if self._awaiting_reply and self._line_end_at is not None and now - self._line_end_at >= REPLY_TIMEOUT:
                self._unanswered()
            waiting = self._awaiting_reply and self._line_end_at is not None and now - self._line_end_at < REPLY_TIMEOUT
            if not lines and not self._mouth and not waiting and self._bot_quiet_for(now) >= self.hangup_after_ms / 1000 \
                    and not self._playout:
                if done_at is None:
                    done_at = now
                if now - done_at > 0.2:
                    return

    def _sending(self, frame: bytes) -> bytes:
        """The caller's 20 ms frame as it goes out (a benchmark stamps its send time into it)."""
        return frame

    def _received(self, frame: bytes, arrived: float) -> None:
        """A media frame from the gateway arrived (monotonic time), before it is buffered for playout."""

    def _ready_for(self, line: Line, now: float) -> bool:
        if line.interrupt:
            return self._bot_talking_since is not None and now - self._bot_talking_since >= BARGE_IN_AFTER_MS / 1000
        if self._awaiting_reply and self._line_end_at is not None and now - self._line_end_at < REPLY_TIMEOUT:
            return False  # a caller waits for the answer to what they said before going on
        # The first line waits for the greeting: speech heard, not just the silence sent before it
        # (unless the gateway says nothing for a while).
        heard_anything = self._heard_speech or now - self._t0 >= SILENT_GATEWAY_S
        return heard_anything and self._bot_quiet_for(now) >= QUIET_AFTER_MS / 1000 and not self._playout

    def _bot_quiet_for(self, now: float) -> float:
        return 0.0 if self._bot_talking_since is not None else now - self._bot_quiet_since

    def _play_one(self, now: float) -> None:
        """Twilio plays one 20 ms frame from its buffer and echoes marks the playout reached."""
        self._echo_reached_marks()
        if not self._playing and self._buffered and (
                self._buffered * FRAME_S >= self._jitter_s or now - self._first_buffered_at >= self._jitter_s):
            self._playing = True
        frame = None
        if self._playing:
            if self._buffered:
                frame = self._playout.popleft()
                self._buffered -= 1
                self.report.frames_played += 1
                self._echo_reached_marks()
            if not self._buffered:
                self._playing = False
                self._ran_dry_at = now
        speech = frame is not None and rms(ulaw_to_samples(frame)) >= SPEECH_RMS
        if speech:
            self.report.speech_frames_played += 1
            self._heard_speech = True
            if self._bot_talking_since is None:
                self._bot_talking_since = now
                if self._awaiting_reply and self._line_end_at is not None:
                    self.report.turn_latencies_ms.append((now - self._line_end_at) * 1000)
                    self._awaiting_reply = False
            elif self._awaiting_reply:
                # Already talking when the line ended (its first words were answered before the
                # rest was said): answered, with no latency to time.
                self._awaiting_reply = False
        elif self._bot_talking_since is not None and not self._buffered:
            self._bot_talking_since = None
            self._bot_quiet_since = now
        if self.ear is not None:
            self.ear.send_audio(frame if frame is not None else SILENCE_FRAME)

    def _echo_reached_marks(self) -> None:
        while self._playout and isinstance(self._playout[0], str):
            self._echo_mark(self._playout.popleft())

    def _echo_mark(self, name: str) -> None:
        self.report.marks_echoed += 1
        asyncio.ensure_future(self._send_mark(name))

    async def _send_mark(self, name: str) -> None:
        await self._send(self.side.mark_echo(self, name))

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except Exception:
            pass

    async def _receive_until_closed(self, ws) -> None:
        """Twilio ends the call when the gateway closes the media socket (nothing follows <Connect>)."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._receive(ws)
        except ConnectionClosed:
            pass
        self.report.stream_closed_by_gateway = True
        self.stream_closed.set()

    async def _receive(self, ws) -> None:
        events = self.side.outbound_events
        async for raw in ws:
            message = json.loads(raw)
            event = events.get(message.get("event"))
            if event == "media":
                arrived = time.monotonic()
                if self._last_arrival is not None and arrived - self._last_arrival < 0.1:
                    self.report.jitter_ms.append(abs((arrived - self._last_arrival) * 1000 - 20))
                self._last_arrival = arrived
                if not self._buffered:
                    self._first_buffered_at = arrived
                    if not self._playing and self._ran_dry_at is not None and arrived - self._ran_dry_at < UNDERRUN_WINDOW_S:
                        self.report.underruns += 1
                        self._jitter_s = min(2 * self._jitter_s, MAX_JITTER_MS / 1000)
                frame = base64.b64decode(self.side.payload(message))
                self._received(frame, arrived)
                self._playout.append(frame)
                self._buffered += 1
                if not self.report.frames_received:
                    self.report.frames_sent_before_gateway_audio = self.report.frames_sent
                self.report.frames_received += 1
            elif event == "mark":
                self.report.marks_received += 1
                self._playout.append(self.side.mark_name(message))
            elif event == "clear":
                self.report.clears += 1
                self.report.clear_at.append(self._now())
                marks = [item for item in self._playout if isinstance(item, str)]
                self.report.frames_cleared += self._buffered
                self._playout.clear()
                self._buffered = 0
                self._playing = False
                self._ran_dry_at = None
                for name in marks:  # Twilio returns the cleared marks at once
                    self._echo_mark(name)
                cleared = self.side.cleared(self)
                if cleared is not None:
                    asyncio.ensure_future(self._send(cleared))

    def gateway_hung_up(self) -> None:
        self.hung_up_by_gateway.set()
        self._commands.put_nowait(("hangup", {}))

    async def _ears_settle(self) -> None:
        """Before hanging up, the caller's ears finish what they heard (a loaded decoder lags behind)."""
        if self.ear is None:
            return
        try:
            async with asyncio.timeout(EAR_SETTLE_S):
                await self._ear.settled()
        except TimeoutError:
            pass


class _Ear:
    """What the caller heard, as text (the simulator's own transcription listener)."""

    def __init__(self, call: SimulatedCall) -> None:
        self.call = call
        self.started = 0  # utterances the transcriber began
        self.finished = 0  # and reported
        self._changed = asyncio.Event()

    async def settled(self) -> None:
        """Every utterance begun has its final transcript (or the transcriber failed)."""
        while self.finished < self.started and not self.call.report.error:
            self._changed.clear()
            await self._changed.wait()

    def on_speech_started(self) -> None:
        self.started += 1

    def on_partial(self, text: str) -> None:
        pass

    def on_final(self, text: str) -> None:
        self.call.report.transcript.append(TimedText(self.call._now(), "gateway", text))
        self.finished += 1
        self._changed.set()

    def on_error(self, error: Exception) -> None:
        self.call.report.error = str(error)
        self._changed.set()


def _frames(audio: bytes):
    for start in range(0, len(audio), FRAME_BYTES):
        yield audio[start:start + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=float), p))
