"""The WebSocket machinery realtime and transcription sessions share: open, send, receive, reconnect."""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

from core import jsonsafe
from core.jsonsafe import JsonInputError
from core.redact import redact

from .tls import websocket_ssl

log = logging.getLogger(__name__)

# Frames sent back to back before the sender yields: a backlog (audio held while the socket was set
# up or reconnected, several seconds of it) would otherwise go out in one callback, as a send does
# not wait while the socket's buffer has room, and hold up every other call on the loop.
SEND_BURST = 8


def websocket_origin(url: str) -> str:
    """A provider origin as a WebSocket URL: config holds http(s) URLs (fakes, proxies) as well as ws(s).

    A trailing /v1 is dropped: the socket endpoints' paths carry it themselves, while the same
    service's HTTP clients (TTS, chat) are configured with it, so either form of baseUrl works.
    """
    if url.startswith("http://"):
        url = "ws://" + url[len("http://"):]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://"):]
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def describe(exc: BaseException) -> str:
    """An exception as a short log line (its message, else its type)."""
    text = redact(str(exc)) or type(exc).__name__  # redacted before it is cut
    return text[:200]


class WebsocketMachinery:
    """One provider socket: opening it, ordered sends, dispatching JSON, reconnecting with backoff.

    Mixed into a provider session, which supplies `label` (e.g. "openai realtime", the prefix of its
    logs and errors), `url`, `headers`, `configure`, `audio_message` and `handle`, and decides when
    to reconnect and how long to wait (each session kind has its own rules and constants).
    """

    label: str
    provider: Any  # the session's provider (its api_key() is kept out of logs)
    max_message_size: ClassVar[int] = 2**22
    max_queued_frames: ClassVar[int] = 500
    # Sent as a text frame every keepalive_interval seconds when nothing else went out (None: never).
    keepalive_message: ClassVar[str | None] = None
    keepalive_interval: ClassVar[float] = 5.0

    def _start_machinery(self) -> None:
        self._audio: deque[bytes] = deque()
        self._control: deque[str | bytes] = deque()
        self._wakeup = asyncio.Event()
        self._ws: Any = None
        self._task: asyncio.Task | None = None
        self._sender: asyncio.Task | None = None
        self._closing = False
        self._draining = False  # close() lets the send loop empty the queue, then stop
        self._dispatched = False  # the current socket delivered at least one message
        self.reconnects = 0
        self.dropped_frames = 0

    # --- what a session implements --------------------------------------------------------

    def url(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {}

    def audio_message(self, ulaw: bytes) -> str | bytes:
        raise NotImplementedError

    def handle(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def redact(self, text: str) -> str:
        """A provider's text (a close reason, an error) as it may be logged: never the key."""
        self.provider.api_key()  # remembers the key, wherever it came from
        return redact(text)

    def describe(self, exc: BaseException) -> str:
        """An exception as a short log line, without the key (close reasons may echo what was sent)."""
        return self.redact(describe(exc))

    # --- queueing -------------------------------------------------------------------------

    def send_audio(self, ulaw: bytes) -> None:
        if self._closing:
            return
        if len(self._audio) >= self.max_queued_frames:
            self._audio.popleft()
            self.dropped_frames += 1
        self._audio.append(ulaw)
        self._wakeup.set()

    def send_json(self, message: dict[str, Any]) -> None:
        """Queue a control message; control messages go out in order, ahead of queued audio."""
        if self._closing:
            return
        self._control.append(json.dumps(message, separators=(",", ":")))
        self._wakeup.set()

    # --- the socket -----------------------------------------------------------------------

    async def open_socket(self, *, timeout: float, configure) -> Any:
        """Connect and run `configure(ws)` within `timeout` seconds in all; the socket is closed if setup fails."""
        from websockets.asyncio.client import connect

        async def opening():
            url = self.url()
            # Compressing μ-law or PCM saves almost nothing and costs the event loop on every frame.
            ws = await connect(url, additional_headers=self.headers(), max_size=self.max_message_size,
                               open_timeout=timeout, ssl=websocket_ssl(url), compression=None)
            try:
                await configure(ws)
            except BaseException:
                await ws.close()
                raise
            return ws

        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races the connection's completion, and close() would then wait on a live session forever.
        async with asyncio.timeout(timeout):
            return await opening()

    async def serve(self, ws: Any) -> tuple[bool, bool]:
        """Send and receive on `ws` until it closes: (closed normally with 1000, sending failed)."""
        self._dispatched = False
        self._sender = sender = asyncio.create_task(self._send_loop(ws))
        receiver = asyncio.create_task(self._receive_loop(ws))
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        sender_failed = sender in done and sender.exception() is not None
        if sender_failed:
            log.info("%s: sending failed: %s", self.label, self.describe(sender.exception()))
            await ws.close()
        closed_cleanly = await receiver
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        return closed_cleanly, sender_failed

    async def _receive_loop(self, ws: Any) -> bool:
        try:
            async for raw in ws:
                self._dispatched = True
                self.dispatch(raw)
            return getattr(ws, "close_code", None) == 1000
        except Exception as exc:
            log.info("%s socket failed: %s", self.label, self.describe(exc))
            return False

    async def _send_loop(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._keepalive_due = False
        # One timer per keepalive interval, not one per frame: this loop wakes 50 times a second.
        self._keepalive_timer = loop.call_later(self.keepalive_interval, self._check_keepalive) \
            if self.keepalive_message else None
        sent = 0
        try:
            while True:
                while self._control or self._audio:
                    sent += 1
                    if sent % SEND_BURST == 0:
                        await asyncio.sleep(0)
                        continue  # the queues may have changed meanwhile
                    if self._control:
                        message = self._control.popleft()
                        try:
                            await ws.send(message)
                        except BaseException:
                            self._control.appendleft(message)
                            raise
                    else:
                        # Taken off first: an overflow while this frame is in flight must not drop its neighbour.
                        chunk = self._audio.popleft()
                        try:
                            await ws.send(self.audio_message(chunk))
                        except BaseException:
                            self._audio.appendleft(chunk)  # resent after a reconnect
                            raise
                    self._last_sent = loop.time()
                if self._draining:
                    return
                if self._keepalive_due:
                    self._keepalive_due = False
                    await ws.send(self.keepalive_message)
                    self._last_sent = loop.time()
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()

    def _check_keepalive(self) -> None:
        """Timer: after keepalive_interval with nothing sent, the send loop sends the keepalive."""
        loop = asyncio.get_running_loop()
        due = self._last_sent + self.keepalive_interval
        if loop.time() >= due:
            self._keepalive_due = True
            self._wakeup.set()
            due = loop.time() + self.keepalive_interval
        self._keepalive_timer = loop.call_at(due, self._check_keepalive)

    def dispatch(self, raw: str | bytes) -> None:
        """One frame from the provider: JSON objects go to `handle`; anything else is logged and ignored."""
        try:
            message = jsonsafe.loads(raw)
        except JsonInputError as exc:
            log.info("%s sent a frame that is not JSON we can use (%s); ignored", self.label, exc)
            return
        if not isinstance(message, dict):
            log.info("%s sent JSON that is not an object; ignored", self.label)
            return
        try:
            self.handle(message)
        except Exception:
            log.exception("%s: handling a message failed", self.label)

    async def reconnect(self, delays: Iterable[float], *, first: int, tries: int, opened, why: str = "") -> bool:
        """After a lost socket, try `opened()` after each delay (attempts numbered from `first` of `tries`).

        True once a new socket is in place; False when the session is closing or every try failed
        (the caller tells its listener).
        """
        for attempt, delay in enumerate(delays, start=first):
            if self._closing:
                return False
            self.reconnects += 1
            log.info("%s disconnected%s; reconnect %d/%d in %.1f s", self.label, why, attempt, tries, delay)
            await asyncio.sleep(delay)
            try:
                ws = await opened()
            except Exception as exc:
                log.warning("%s reconnect failed: %s", self.label, self.describe(exc))
                continue
            if self._closing:  # close() ran while this connection was opening: it belongs to nobody
                await ws.close()
                return False
            self._ws = ws
            return True
        return False
