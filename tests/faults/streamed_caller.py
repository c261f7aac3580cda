"""A Twilio caller with a live media stream against a real gateway process: the signed webhook, the stream, 20 ms frames, marks echoed.

Lighter than the carrier simulator (calls/simulator/): no voices, no ears. It sends silence every
20 ms, counts the frames each way (and the loud ones it gets: the gateway's speech) and echoes marks
as Twilio does, so a test can see whether the stream still flows and whether playback reached it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from urllib.parse import urlencode, urlsplit

import httpx

from calls.simulator.call import parse_stream
from core.audio import SILENCE_FRAME, rms, ulaw_to_samples
from providers.carriers.twilio.webhook import signature

LOUD_RMS = 1000.0


class StreamedCaller:
    """One inbound Twilio call to `base` (signing for `webhook_url`) whose stream stays open until `hang_up()` or the gateway closes it.

    The stream goes to `stream_base` when given (another node than the webhook's), else to `base`.
    """

    def __init__(self, base: str, webhook_url: str, *, account_sid: str, auth_token: str,
                 caller: str = "+15550100001", callee: str = "+15550100000", stream_base: str | None = None) -> None:
        self.base, self.webhook_url = base.rstrip("/"), webhook_url
        self.stream_base = (stream_base or base).rstrip("/")
        self.account_sid, self.auth_token = account_sid, auth_token
        self.caller, self.callee = caller, callee
        self.sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.frames_sent = 0
        self.frames_received = 0
        self.speech_frames_received = 0
        self.marks_echoed = 0
        self.closed_by_gateway = asyncio.Event()
        self.close_code: int | None = None
        self.send_error: str = ""
        self._ws = None
        self._tasks: list[asyncio.Task] = []

    async def webhook(self, params: dict[str, str]) -> str:
        body = {"CallSid": self.sid, "AccountSid": self.account_sid, "From": self.caller, "To": self.callee,
                "Caller": self.caller, "Called": self.callee, "Direction": "inbound", "ApiVersion": "2010-04-01",
                **params}
        public = urlsplit(self.webhook_url)
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                self.base + public.path + (f"?{public.query}" if public.query else ""), content=urlencode(body),
                headers={"Content-Type": "application/x-www-form-urlencoded",
                         "X-Twilio-Signature": signature(self.auth_token, self.webhook_url, list(body.items())),
                         "I-Twilio-Idempotency-Token": secrets.token_hex(8)})
        if response.status_code >= 400:
            raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")
        return response.text

    async def connect(self) -> "StreamedCaller":
        """Ring (the webhook), open the stream the TwiML names, send its start, and start the 20 ms clock."""
        from websockets.asyncio.client import connect

        answer = await self.webhook({"CallStatus": "ringing"})
        stream_url, token = parse_stream(answer)
        if not stream_url:
            raise AssertionError(f"the gateway answered without a media stream: {answer[:300]}")
        path = urlsplit(stream_url)
        target = urlsplit(self.stream_base).netloc
        self._ws = await connect(f"ws://{target}{path.path}" + (f"?{path.query}" if path.query else ""),
                                 max_size=2**20, open_timeout=10, compression=None)
        await self._ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self._ws.send(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.sid,
                      "tracks": ["inbound"], "customParameters": {"token": token},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        }))
        self._tasks = [asyncio.ensure_future(self._clock()), asyncio.ensure_future(self._receive())]
        return self

    async def _clock(self) -> None:
        from websockets.exceptions import ConnectionClosed

        sequence, started = 1, time.monotonic()
        while not self.closed_by_gateway.is_set():
            sequence += 1
            frame = SILENCE_FRAME
            try:
                await self._ws.send('{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound",'
                                    '"chunk":"%d","timestamp":"%d","payload":"%s"}}'
                                    % (sequence, self.stream_sid, sequence - 1, (sequence - 1) * 20,
                                       base64.b64encode(frame).decode()))
            except ConnectionClosed:
                return
            except Exception as exc:
                self.send_error = f"{type(exc).__name__}: {exc}"
                return
            self.frames_sent += 1
            await asyncio.sleep(max(0.0, started + self.frames_sent * 0.02 - time.monotonic()))

    async def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if message.get("event") == "media":
                    self.frames_received += 1
                    if rms(ulaw_to_samples(base64.b64decode(message["media"]["payload"]))) >= LOUD_RMS:
                        self.speech_frames_received += 1
                elif message.get("event") == "mark":
                    self.marks_echoed += 1
                    await self._ws.send(json.dumps({"event": "mark", "sequenceNumber": "0", "streamSid": self.stream_sid,
                                                    "mark": message["mark"]}))
        except ConnectionClosed:
            pass
        self.close_code = self._ws.close_code
        self.closed_by_gateway.set()

    async def hang_up(self) -> None:
        """Stop the stream (Twilio's stop frame, then close) and post the completed status."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            try:
                await self._ws.send(json.dumps({"event": "stop", "sequenceNumber": "0", "streamSid": self.stream_sid,
                                                "stop": {"accountSid": self.account_sid, "callSid": self.sid}}))
                await asyncio.wait_for(self._ws.close(), 3)
            except Exception:
                pass
