"""The streaming transcription interface. Subclass TranscriptionProvider and its session.

A provider is built from its block in `streaming.providers.<id>`; `create_session()` makes one
session per media stream. A session takes μ-law 8 kHz audio (`send_audio`, never blocking; audio
sent before `connect()` finished is queued) and reports through its listener:

- `on_speech_started()`: the caller started talking (barge-in trigger);
- `on_partial(text)`: interim text of the current utterance;
- `on_final(text)`: the finished utterance;
- `on_error(error)`: the session is gone for good (reconnects exhausted).

Cloud providers speak WebSocket: subclass WebsocketSession and implement `url`, `headers`,
`configure`, `audio_message` and `handle`; connecting with a timeout, a bounded send queue and
reconnects with backoff (5 tries, 1 s × 2^(n−1); docs/compatibility.md, Transcription) are done here once.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, ClassVar, Protocol

from ..settings import ProviderSettings
from ..tls import websocket_ssl

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_RECONNECTS = 5
RECONNECT_BASE_DELAY = 1.0
# Audio held while (re)connecting: 10 s. Older frames are dropped (and counted) beyond that.
MAX_QUEUED_FRAMES = 500
FINAL_RESULTS_WAIT = 1.5
CLOSE_WAIT = 2.0


class TranscriptionError(Exception):
    """A transcription provider could not be set up or used; the message names the provider."""


class TranscriptListener(Protocol):
    def on_speech_started(self) -> None: ...

    def on_partial(self, text: str) -> None: ...

    def on_final(self, text: str) -> None: ...

    def on_error(self, error: Exception) -> None: ...


class TranscriptionProvider(ProviderSettings):
    """Base class: one per configured provider; cheap to build, sessions do the work."""

    name: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""

    def base_url(self) -> str:
        """The provider's WebSocket origin (`baseUrl` in its block, for fakes and proxies)."""
        url = self.setting("baseUrl") or self.default_base_url
        if url.startswith("http://"):
            url = "ws://" + url[len("http://"):]
        elif url.startswith("https://"):
            url = "wss://" + url[len("https://"):]
        return url.rstrip("/")

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        raise NotImplementedError


class TranscriptionSession:
    """One media stream's transcription. Subclasses must implement connect, send_audio and close."""

    def __init__(self, provider: TranscriptionProvider, listener: TranscriptListener, *, language: str | None = None) -> None:
        self.provider = provider
        self.listener = listener
        self.language = language or provider.setting("language")
        self.dropped_frames = 0

    async def connect(self) -> None:
        """Be ready to transcribe; raises TranscriptionError if the provider cannot be reached."""
        raise NotImplementedError

    def send_audio(self, ulaw: bytes) -> None:
        """Queue 8 kHz μ-law audio; must not block."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WebsocketSession(TranscriptionSession):
    """A cloud provider over one WebSocket, with a send queue and reconnects."""

    # Sent as text frames every keepalive_interval seconds when no audio flowed (None: never).
    keepalive_message: ClassVar[str | None] = None
    keepalive_interval: ClassVar[float] = 5.0

    def __init__(self, provider: TranscriptionProvider, listener: TranscriptListener, *, language: str | None = None) -> None:
        super().__init__(provider, listener, language=language)
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._ws: Any = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._draining = False
        self._dispatched = False
        self.reconnects = 0

    # --- what a provider implements -------------------------------------------------------

    def url(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {}

    async def configure(self, ws: Any) -> None:
        """Send the setup message(s) after the socket opened (and wait for an ack if the protocol has one)."""

    def audio_message(self, ulaw: bytes) -> str | bytes:
        """The frame that carries this audio (a binary frame, or JSON text with base64)."""
        raise NotImplementedError

    def handle(self, message: dict[str, Any]) -> None:
        """One JSON message from the provider: call the listener as it says."""
        raise NotImplementedError

    async def finish(self, ws: Any) -> bool:
        """Say goodbye before closing (e.g. CloseStream); True if the provider answers it with last results."""
        return False

    # --- the machinery --------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            self._ws = await self._open()
        except TranscriptionError:
            raise
        except Exception as exc:
            raise TranscriptionError(f"{self.provider.name} transcription: cannot connect ({_describe(exc)})") from exc
        self._task = asyncio.create_task(self._run(), name=f"stt-{self.provider.name}")

    async def _open(self):
        from websockets.asyncio.client import connect

        async def opening():
            url = self.url()
            # Compressing μ-law or PCM saves almost nothing and costs the event loop on every frame.
            ws = await connect(url, additional_headers=self.headers(), max_size=2**22, open_timeout=CONNECT_TIMEOUT,
                               ssl=websocket_ssl(url), compression=None)
            try:
                await self.configure(ws)
            except BaseException:
                await ws.close()
                raise
            return ws

        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races the connection's completion, and close() would then wait on a live session forever.
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await opening()

    def send_audio(self, ulaw: bytes) -> None:
        if self._closing:
            return
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            self._queue.popleft()
            self.dropped_frames += 1
        self._queue.append(ulaw)
        self._wakeup.set()

    async def _run(self) -> None:
        while not self._closing:
            ws = self._ws
            self._dispatched = False
            self._sender = asyncio.create_task(self._send_loop(ws))
            receiver = asyncio.create_task(self._receive_loop(ws))
            done, _ = await asyncio.wait({self._sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            sender_failed = self._sender in done and self._sender.exception() is not None
            if sender_failed:
                log.info("%s transcription: sending failed: %s", self.provider.name, _describe(self._sender.exception()))
                await ws.close()
            closed_cleanly = await receiver
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            if self._closing:
                return
            if self._dispatched:
                self.reconnects = 0  # that connection worked: a later drop gets the full set of retries
            if closed_cleanly and not sender_failed and not self.reconnect_after_clean_close():
                self.listener.on_error(TranscriptionError(f"{self.provider.name} transcription: the provider closed the session"))
                return
            if not await self._reconnect(backoff=not (closed_cleanly and not sender_failed)):
                return

    async def _receive_loop(self, ws) -> bool:
        """Dispatch messages until the socket closes; True when it closed normally (1000)."""
        try:
            async for raw in ws:
                self._dispatched = True
                self._dispatch(raw)
            return getattr(ws, "close_code", None) == 1000
        except Exception as exc:
            log.info("%s transcription socket failed: %s", self.provider.name, _describe(exc))
            return False

    def reconnect_after_clean_close(self) -> bool:
        """Whether a normal close (1000) mid-call should reconnect (providers that end sessions after a turn)."""
        return True

    async def _reconnect(self, *, backoff: bool = True) -> bool:
        while self.reconnects < MAX_RECONNECTS and not self._closing:
            self.reconnects += 1
            delay = RECONNECT_BASE_DELAY * 2 ** (self.reconnects - 1) if backoff else 0.0
            log.info("%s transcription disconnected; reconnect %d/%d in %.1f s",
                     self.provider.name, self.reconnects, MAX_RECONNECTS, delay)
            await asyncio.sleep(delay)
            backoff = True
            try:
                ws = await self._open()
            except Exception as exc:
                log.warning("%s transcription reconnect failed: %s", self.provider.name, _describe(exc))
                continue
            if self._closing:  # close() ran while this connection was opening: it belongs to nobody
                await ws.close()
                return False
            self._ws = ws
            return True
        if not self._closing:
            self.listener.on_error(TranscriptionError(
                f"{self.provider.name} transcription: connection lost after {MAX_RECONNECTS} reconnects"))
        return False

    async def _send_loop(self, ws) -> None:
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._keepalive_due = False
        # One timer per keepalive interval, not one per frame: this loop wakes 50 times a second.
        self._keepalive_timer = loop.call_later(self.keepalive_interval, self._check_keepalive) \
            if self.keepalive_message else None
        try:
            while True:
                while self._queue:
                    # Taken off first: an overflow while this frame is in flight must not drop its neighbour.
                    chunk = self._queue.popleft()
                    try:
                        await ws.send(self.audio_message(chunk))
                    except BaseException:
                        self._queue.appendleft(chunk)  # resent after a reconnect
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

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.info("%s transcription sent a frame that is not JSON; ignored", self.provider.name)
            return
        if not isinstance(message, dict):
            return
        try:
            self.handle(message)
        except Exception:
            log.exception("%s transcription: handling a message failed", self.provider.name)

    async def close(self) -> None:
        """Send what is queued, say goodbye, and give the provider a moment to send its last results."""
        if self._closing:
            return
        ws, task, sender = self._ws, self._task, getattr(self, "_sender", None)
        self._draining = True
        self._wakeup.set()
        if sender is not None and not sender.done():
            await asyncio.wait({sender}, timeout=1.0)
        self._closing = True
        if ws is not None:
            try:
                async with asyncio.timeout(1.0):
                    said_goodbye = await self.finish(ws)
                if said_goodbye:
                    # The last results arrive in reply to the goodbye; _run keeps dispatching meanwhile.
                    async with asyncio.timeout(FINAL_RESULTS_WAIT):
                        await ws.wait_closed()
            except Exception:
                pass
            try:
                await ws.close()
            except Exception:
                pass
        if task is not None:
            task.cancel()
            # Bounded: a session that ignores its cancellation must not hold the media stream's close.
            await asyncio.wait({task}, timeout=CLOSE_WAIT)
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.info("%s transcription ended with %s", self.provider.name, _describe(task.exception()))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
