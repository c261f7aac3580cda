"""The realtime voice interface: a speech-to-speech model session per call. Subclass RealtimeProvider and its session."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from core.redact import RedactedError

from ..settings import ProviderSettings
from ..websocket import WebsocketMachinery, websocket_origin

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_RECONNECTS = 5
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 8.0
# Close codes after which a new connection may help (the OpenAI SDK's list); others are final.
RECOVERABLE_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})
# Caller audio held while (re)connecting: 5 s. Older frames are dropped (and counted) beyond that.
MAX_QUEUED_FRAMES = 250
CLOSE_WAIT = 2.0


class RealtimeError(RedactedError):
    """A realtime provider could not be set up or used; the message names the provider, never a key."""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: its name, what it does, and its arguments as JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """A function call from the model; `arguments` is the JSON text as the model sent it."""

    call_id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class SessionSetup:
    """What a session is opened with."""

    instructions: str
    tools: tuple[ToolSpec, ...] = ()
    language: str | None = None
    voice: str | None = None


class RealtimeListener(Protocol):
    def on_audio(self, ulaw: bytes, item_id: str) -> None: ...

    def on_output_transcript(self, item_id: str, text: str) -> None: ...

    def on_response_done(self, item_id: str | None, status: str) -> None: ...

    def on_speech_started(self) -> None: ...

    def on_speech_stopped(self) -> None: ...

    def on_input_transcript(self, text: str) -> None: ...

    def on_tool_call(self, call: ToolCall) -> None: ...

    def on_closed(self, error: Exception | None) -> None: ...


class RealtimeProvider(ProviderSettings):
    """Base class: one per configured provider; cheap to build, sessions do the work."""

    name: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    default_model: ClassVar[str] = ""
    # The provider's own voice detection interrupts its answer when the caller talks and says so
    # (on_speech_started); when False the bridge's local speech gate decides barge-in.
    handles_barge_in: ClassVar[bool] = True
    # The model may be asked to speak (respond) while one of its tool calls waits for its result:
    # the bridge then has it say it is checking during a consult. False where a text turn would
    # cancel the waiting call.
    speaks_while_tool_runs: ClassVar[bool] = True

    def base_url(self) -> str:
        """The provider's WebSocket origin (`baseUrl` in its block, for fakes and proxies)."""
        return websocket_origin(self.setting("baseUrl") or self.default_base_url)

    def model(self) -> str:
        return self.setting("model") or self.default_model

    def problems(self) -> list[str]:
        """What stops this provider from running, each naming the setting to fix (empty: ready)."""
        if not self.configured():
            where = f"realtime.providers.{self.name}.apiKey"
            return [f"realtime provider {self.name} has no API key ({where}" + (f" or {self.api_key_env})" if self.api_key_env else ")")]
        return []

    def create_session(self, listener: RealtimeListener, setup: SessionSetup) -> RealtimeSession:
        raise NotImplementedError


class RealtimeSession:
    """One call's model session. Subclasses implement every method below.

    A provider is built from its block in `realtime.providers.<id>`; `create_session()` makes one
    session per call. The session takes the caller's 8 kHz μ-law audio (`send_audio`, never
    blocking) and reports to its listener, on the event loop:

    - `on_audio(ulaw, item_id)`: the model's speech, already 8 kHz μ-law, any length; `item_id` names
      the model's output item (one spoken answer) it belongs to;
    - `on_output_transcript(item_id, text)`: the text of that item, once final;
    - `on_response_done(item_id, status)`: the model finished (or cancelled) an answer;
    - `on_speech_started()` / `on_speech_stopped()`: the provider's voice detection heard the caller
      start / stop talking (barge-in; the start of a turn's latency);
    - `on_input_transcript(text)`: what the caller said, once final;
    - `on_tool_call(call)`: the model calls a function; answer with `send_tool_result`;
    - `on_closed(error)`: the session is gone for good (error None: the provider ended it normally).

    Cloud providers speak WebSocket: subclass RealtimeWebsocketSession and implement `url`,
    `headers`, `configure`, `audio_message` and `handle`; connecting with a timeout, ordered sends,
    a bounded audio queue (providers/websocket.py) and reconnects (0.5 s doubling to 8 s, 5 tries,
    only after a close the provider marks as recoverable) are done once.
    """

    def __init__(self, provider: RealtimeProvider, listener: RealtimeListener, setup: SessionSetup) -> None:
        self.provider = provider
        self.listener = listener
        self.setup = setup
        self.dropped_frames = 0

    async def connect(self) -> None:
        """Open and configure the session; raises RealtimeError if the provider cannot be reached."""
        raise NotImplementedError

    def send_audio(self, ulaw: bytes) -> None:
        """Queue 8 kHz μ-law caller audio; must not block."""
        raise NotImplementedError

    async def respond(self, instructions: str) -> None:
        """Make the model speak now, following `instructions` (greeting, injected speech)."""
        raise NotImplementedError

    async def send_tool_result(self, call: ToolCall, output: dict[str, Any]) -> None:
        """Answer a tool call; the model goes on from there."""
        raise NotImplementedError

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Barge-in: the caller heard only the first `played_ms` of item `item_id`."""

    async def cancel_response(self) -> None:
        """Stop the answer in progress (barge-in the provider did not detect itself)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RealtimeWebsocketSession(WebsocketMachinery, RealtimeSession):
    """A cloud model over one WebSocket: ordered sends, a bounded audio queue, reconnects."""

    max_message_size = 2**24
    max_queued_frames = MAX_QUEUED_FRAMES

    def __init__(self, provider: RealtimeProvider, listener: RealtimeListener, setup: SessionSetup) -> None:
        RealtimeSession.__init__(self, provider, listener, setup)
        self._start_machinery()
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def label(self) -> str:
        return f"{self.provider.name} realtime"

    # --- what a provider implements (and url, headers, audio_message, handle) ---------------

    async def configure(self, ws: Any, *, reconnect: bool) -> None:
        """Send the setup message(s) on a new socket and wait for the provider's acknowledgement."""

    def recoverable(self, code: int | None, reason: str) -> bool:
        """Whether a socket closed with `code` is worth a new connection."""
        return code is None or code in RECOVERABLE_CLOSE_CODES

    # --- the machinery --------------------------------------------------------------------

    async def connect(self) -> None:
        try:
            self._ws = await self._open(reconnect=False)
        except RealtimeError:
            raise
        except Exception as exc:
            raise RealtimeError(f"{self.label}: cannot connect ({self.describe(exc)})") from exc
        self._task = asyncio.create_task(self._run(), name=f"realtime-{self.provider.name}")

    async def _open(self, *, reconnect: bool):
        # The module constant is read at each call so tests can shorten it.
        return await self.open_socket(timeout=CONNECT_TIMEOUT, configure=lambda ws: self.configure(ws, reconnect=reconnect))

    async def _run(self) -> None:
        while not self._closing:
            ws = self._ws
            await self.serve(ws)
            if self._closing:
                return
            code, reason = getattr(ws, "close_code", None), getattr(ws, "close_reason", None) or ""
            self.close_code, self.close_reason = code, reason
            if not self.recoverable(code, reason):
                error = None if code == 1000 else RealtimeError(
                    f"{self.label}: the provider closed the session ({code} {self.redact(reason)[:120]})".rstrip())
                self._closing = True
                self.listener.on_closed(error)
                return
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        def delays():
            for attempt in range(1, MAX_RECONNECTS + 1):
                delay = min(RECONNECT_FIRST_DELAY * 2 ** (attempt - 1), RECONNECT_MAX_DELAY)
                yield delay * random.uniform(0.8, 1.2)

        if await self.reconnect(delays(), first=1, tries=MAX_RECONNECTS, why=f" ({self.close_code})",
                                opened=lambda: self._open(reconnect=True)):
            return True
        if not self._closing:
            self._closing = True
            self.listener.on_closed(RealtimeError(f"{self.label}: connection lost after {MAX_RECONNECTS} reconnects"))
        return False

    async def close(self) -> None:
        if self._closing and self._task is None:
            return
        self._closing = True
        ws, task, self._task = self._ws, self._task, None
        if ws is not None:
            try:
                async with asyncio.timeout(1.0):
                    await ws.close()
            except Exception:
                pass
        if task is not None:
            task.cancel()
            # Bounded: a session that ignores its cancellation must not hold the call's end.
            await asyncio.wait({task}, timeout=CLOSE_WAIT)
