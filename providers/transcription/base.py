"""The streaming transcription interface. Subclass TranscriptionProvider and its session.

A provider is built from its block in `streaming.providers.<id>`; `create_session()` makes one
session per media stream. A session takes μ-law 8 kHz audio (`send_audio`, never blocking; audio
sent before `connect()` finished is queued) and reports through its listener:

- `on_speech_started()`: the caller started talking (barge-in trigger);
- `on_partial(text)`: interim text of the current utterance;
- `on_final(text)`: the finished utterance;
- `on_error(error)`: the session is gone for good (reconnects exhausted).

Cloud providers speak WebSocket: subclass WebsocketSession and implement `url`, `headers`,
`configure`, `audio_message` and `handle`; connecting with a timeout, a bounded send queue
(providers/websocket.py) and reconnects with backoff (5 tries, 1 s × 2^(n−1); docs/compatibility.md,
Transcription) are done once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Protocol

from core.redact import RedactedError

from ..settings import ProviderSettings
from ..websocket import WebsocketMachinery, websocket_origin

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_RECONNECTS = 5
RECONNECT_BASE_DELAY = 1.0
# Audio held while (re)connecting: 10 s. Older frames are dropped (and counted) beyond that.
MAX_QUEUED_FRAMES = 500
FINAL_RESULTS_WAIT = 1.5
CLOSE_WAIT = 2.0


class TranscriptionError(RedactedError):
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
        return websocket_origin(self.setting("baseUrl") or self.default_base_url)

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


class WebsocketSession(WebsocketMachinery, TranscriptionSession):
    """A cloud provider over one WebSocket, with a send queue and reconnects."""

    max_queued_frames = MAX_QUEUED_FRAMES

    def __init__(self, provider: TranscriptionProvider, listener: TranscriptListener, *, language: str | None = None) -> None:
        TranscriptionSession.__init__(self, provider, listener, language=language)
        self._start_machinery()

    @property
    def label(self) -> str:
        return f"{self.provider.name} transcription"

    # --- what a provider implements (and url, headers, audio_message, handle) ---------------

    async def configure(self, ws: Any) -> None:
        """Send the setup message(s) after the socket opened (and wait for an ack if the protocol has one)."""

    async def finish(self, ws: Any) -> bool:
        """Say goodbye before closing (e.g. CloseStream); True if the provider answers it with last results."""
        return False

    def reconnect_after_clean_close(self) -> bool:
        """Whether a normal close (1000) mid-call should reconnect (providers that end sessions after a turn)."""
        return True

    # --- the machinery --------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            self._ws = await self._open()
        except TranscriptionError:
            raise
        except Exception as exc:
            raise TranscriptionError(f"{self.label}: cannot connect ({self.describe(exc)})") from exc
        self._task = asyncio.create_task(self._run(), name=f"stt-{self.provider.name}")

    async def _open(self):
        # The module constant is read at each call so tests can shorten it.
        return await self.open_socket(timeout=CONNECT_TIMEOUT, configure=self.configure)

    async def _run(self) -> None:
        while not self._closing:
            closed_cleanly, sender_failed = await self.serve(self._ws)
            if self._closing:
                return
            if self._dispatched:
                self.reconnects = 0  # that connection worked: a later drop gets the full set of retries
            if closed_cleanly and not sender_failed and not self.reconnect_after_clean_close():
                self.listener.on_error(TranscriptionError(f"{self.label}: the provider closed the session"))
                return
            if not await self._reconnect(backoff=not (closed_cleanly and not sender_failed), why=_close_of(self._ws)):
                return

    async def _reconnect(self, *, backoff: bool = True, why: str = "") -> bool:
        # A clean close reconnects at once the first time; every later try backs off (1 s × 2^(n−1)).
        first = self.reconnects + 1
        delays = [RECONNECT_BASE_DELAY * 2 ** (n - 1) if backoff or n > first else 0.0
                  for n in range(first, MAX_RECONNECTS + 1)]
        if await self.reconnect(delays, first=first, tries=MAX_RECONNECTS, opened=self._open, why=why):
            return True
        if not self._closing:
            self.listener.on_error(TranscriptionError(f"{self.label}: connection lost after {MAX_RECONNECTS} reconnects"))
        return False

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
                log.info("%s ended with %s", self.label, self.describe(task.exception()))


def _close_of(ws) -> str:
    """Why a provider's socket closed, for the reconnect line: " (1011 internal error)"; empty when unknown."""
    code = getattr(ws, "close_code", None)
    if code is None:
        return ""
    reason = (getattr(ws, "close_reason", None) or "")[:120]
    return f" ({code} {reason})" if reason else f" ({code})"
