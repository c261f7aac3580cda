"""One simulated inbound Twilio call: webhook, TwiML, media stream, caller script, playback, ears."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np

from core.audio import FRAME_BYTES, SILENCE_FRAME, Pacer, rms, ulaw_to_samples
from providers.carriers.twilio.webhook import signature


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
    """Where the gateway is and how to sign for it."""

    base_url: str  # http://host:port the simulator connects to
    webhook_url: str  # the public URL the gateway verifies signatures against
    account_sid: str
    auth_token: str
    # Where the media stream connects, when not base_url: in a cluster, another node than the webhook's.
    stream_base_url: str | None = None


class SimulatedCall:
    def __init__(self, gateway: Gateway, *, caller: str, callee: str, lines: list[Line], audio: dict[str, bytes],
                 ears=None, hangup_after_ms: int = 1500, max_seconds: float = 60.0, jitter_ms: int = JITTER_MS) -> None:
        self.gateway = gateway
        self.caller, self.callee = caller, callee
        self.lines = lines
        self.audio = audio  # caller line text → μ-law, made before the call starts
        self.ears = ears  # a transcription provider for what the caller hears, or None
        self.hangup_after_ms = hangup_after_ms
        self.max_seconds = max_seconds
        self.sid = "CA" + secrets.token_hex(16)
        self.report = CallReport(self.sid)
        self.stream_sid = "MZ" + secrets.token_hex(16)
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
            answer = await self._webhook({"CallStatus": "ringing"})
            stream_url, token = parse_stream(answer)
            if not stream_url:
                self.report.outcome = "refused"
                self.report.error = answer[:300]
                return
            target = urlsplit(self.gateway.stream_base_url or self.gateway.base_url)
            path = urlsplit(stream_url)
            ws_url = f"ws://{target.netloc}{path.path}" + (f"?{path.query}" if path.query else "")
            # No permessage-deflate: carriers' media streams are not compressed.
            async with connect(ws_url, max_size=2**20, open_timeout=10, compression=None) as ws:
                self.ws = ws
                await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await ws.send(json.dumps({
                    "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
                    "start": {"accountSid": self.gateway.account_sid, "streamSid": self.stream_sid, "callSid": self.sid,
                              "tracks": ["inbound"], "customParameters": {"token": token},
                              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
                }))
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
                try:
                    await ws.send(json.dumps({"event": "stop", "sequenceNumber": "0", "streamSid": self.stream_sid,
                                              "stop": {"accountSid": self.gateway.account_sid, "callSid": self.sid}}))
                except Exception:
                    pass
            await self._webhook({"CallStatus": "completed", "CallDuration": str(int(self._now()))})
            if self.report.outcome == "pending":
                gateway_ended = self.hung_up_by_gateway.is_set() or self.stream_closed.is_set()
                self.report.outcome = "hangup-bot" if gateway_ended else "completed"

    async def _webhook(self, params: dict[str, str]) -> str:
        body = {
            "CallSid": self.sid, "AccountSid": self.gateway.account_sid, "From": self.caller, "To": self.callee,
            "Caller": self.caller, "Called": self.callee, "Direction": "inbound", "ApiVersion": "2010-04-01", **params,
        }
        sig = signature(self.gateway.auth_token, self.gateway.webhook_url, list(body.items()))
        public = urlsplit(self.gateway.webhook_url)
        target = self.gateway.base_url.rstrip("/") + public.path + (f"?{public.query}" if public.query else "")
        response = await self._http.post(target, content=urlencode(body), headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig,
            "I-Twilio-Idempotency-Token": secrets.token_hex(8),
        })
        if response.status_code >= 400:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")
        return response.text

    # --- 20 ms clock: the caller's mouth and Twilio's playout -----------------------------------

    async def _clock(self, ws) -> None:
        pacer = Pacer()
        pacer.start()
        lines = list(self.lines)
        try:
            await self._speak_and_listen(ws, pacer, lines)
        finally:
            if self._awaiting_reply:
                self._unanswered()  # the call ended while the caller still waited for an answer

    def _unanswered(self) -> None:
        self.report.unanswered_turns += 1
        self._awaiting_reply = False

    async def _speak_and_listen(self, ws, pacer: Pacer, lines: list[Line]) -> None:
        from websockets.exceptions import ConnectionClosed

        sequence = 1
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
            sequence += 1
            timestamp += 20
            if self.stream_closed.is_set():
                return
            try:
                await ws.send('{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound",'
                              '"chunk":"%d","timestamp":"%d","payload":"%s"}}'
                              % (sequence, self.stream_sid, sequence - 1, timestamp,
                                 base64.b64encode(self._sending(frame)).decode()))
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
        try:
            await self.ws.send(json.dumps({"event": "mark", "sequenceNumber": "0", "streamSid": self.stream_sid,
                                           "mark": {"name": name}}))
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
        async for raw in ws:
            message = json.loads(raw)
            event = message.get("event")
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
                frame = base64.b64decode(message["media"]["payload"])
                self._received(frame, arrived)
                self._playout.append(frame)
                self._buffered += 1
                self.report.frames_received += 1
            elif event == "mark":
                self.report.marks_received += 1
                self._playout.append(message["mark"]["name"])
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

    def gateway_hung_up(self) -> None:
        self.hung_up_by_gateway.set()

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


def parse_stream(twiml: str) -> tuple[str | None, str | None]:
    """The <Connect><Stream url> and its token <Parameter>, if the TwiML connects a stream."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None, None
    stream = root.find("./Connect/Stream")
    if stream is None:
        return None, None
    token = None
    for parameter in stream.findall("Parameter"):
        if parameter.get("name") == "token":
            token = parameter.get("value")
    return stream.get("url"), token


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=float), p))
