"""A loopback fake of the OpenAI Realtime API (GA protocol) at /v1/realtime, for offline tests."""
from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.audio import rms, samples_to_ulaw, ulaw_to_samples
from tests.waiting import await_until

from .server import FakeWebsocketServer

__all__ = ["FakeOpenAIRealtime", "RealtimeConnection", "ResponseRecord", "Script", "ToolScript", "Turn"]

LOUD_RMS = 1000.0
FORMATS = {"audio/pcm", "audio/pcmu", "audio/pcma"}
VOICES = {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
SESSION_KEYS = {"type", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
                "truncation", "include", "tracing", "prompt", "model", "reasoning", "parallel_tool_calls"}
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TONE_HZ = 440
MS_PER_CHAR = 40


@dataclass
class ToolScript:
    """A function call the model makes: `arguments` is a dict (sent as JSON) or the raw text to send."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None  # None: made up per call


@dataclass
class Turn:
    """What happens after one caller utterance."""

    transcript: str = "hello there"  # the input transcription of what the caller said
    # The model's spoken answer; with `tool`, what it says after the function output and response.create
    # (a callable gets the output text; without `tool` it gets "").
    reply: str | Callable[[str], str] = "Sure, I can help with that."
    tool: ToolScript | None = None  # a function call the model makes instead of answering at once
    say_first: str | None = None  # with `tool`: words spoken in the same response, before the call
    reply_ms: int | None = None  # length of the answer's audio (None: MS_PER_CHAR per character)


@dataclass
class Script:
    """The whole conversation: caller turns in order (the last one repeats), and the instructed answers."""

    turns: list[Turn] = field(default_factory=lambda: [Turn()])
    # What the model says for response.create with instructions (greeting, injected speech); a callable
    # gets the instructions.
    instructed_reply: str | Callable[[str], str] = "Hello, thanks for calling. How can I help?"
    # What it says for response.create without instructions and with no function output pending.
    default_reply: str = "Is there anything else?"


@dataclass
class ResponseRecord:
    """One response the fake produced."""

    id: str
    cause: str  # "turn", "instructed", "tool_answer", "default"
    item_id: str | None = None  # the audio message item, if it spoke
    text: str = ""
    audio_ms_sent: int = 0
    status: str = "in_progress"
    reason: str | None = None
    call_id: str | None = None  # the function call it made, if any
    instructions: str | None = None
    output: list[dict[str, Any]] = field(default_factory=list)  # the output items, as response.done lists them


@dataclass
class RealtimeConnection:
    """One WebSocket a client opened, as the fake saw it."""

    ws: ServerConnection
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)  # every parsed client event, in order
    bad_frames: list[str | bytes] = field(default_factory=list)  # frames that were not JSON objects
    sent: list[dict[str, Any]] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)  # the effective session config
    updates: int = 0  # session.update events accepted
    audio: bytearray = field(default_factory=bytearray)  # all appended input audio, decoded
    responses: list[ResponseRecord] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)  # response.create instructions, in order
    tool_outputs: list[tuple[str, str]] = field(default_factory=list)  # (call_id, output) as received
    truncations: list[dict[str, Any]] = field(default_factory=list)  # each truncate, with "ok" and "sent_ms"
    input_transcripts: list[str] = field(default_factory=list)
    closed_with: int | None = None  # the code the fake closed with
    # internal state
    speaking: bool = False
    loud_frames: int = 0
    quiet_ms: int = 0
    uncommitted: int = 0  # bytes since the last commit
    current_turn: Turn | None = None
    active: ResponseRecord | None = None
    streaming: asyncio.Task | None = None
    pending_calls: dict[str, Turn] = field(default_factory=dict)  # call_id → the turn that made it
    answered_call: Turn | None = None  # a function output arrived: the next response.create answers it
    answered_output: str = ""
    items: dict[str, ResponseRecord] = field(default_factory=dict)  # assistant audio items by id
    last_item: str | None = None

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The client's events, optionally of one type."""
        return [m for m in list(self.received) if kind is None or m.get("type") == kind]

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The events the fake sent, of one type."""
        return [m for m in list(self.sent) if m.get("type") == kind]

    @property
    def audio_ms(self) -> int:
        return len(self.audio) // self._bytes_per_ms()

    def _bytes_per_ms(self) -> int:
        fmt = self.session.get("audio", {}).get("input", {}).get("format", {})
        return 48 if fmt.get("type") == "audio/pcm" else 8


class FakeOpenAIRealtime(FakeWebsocketServer):
    """The service on 127.0.0.1:<free port>.

    It checks what a client sends the way the real service does (the Authorization header, no
    OpenAI-Beta header, the GA session.update shape, audio formats, tools, truncation bounds) and
    answers with the real event sequence, streaming a μ-law tone faster than real time.

    The caller's side is scripted: `Script.turns` holds one `Turn` per caller utterance (what the
    input transcription says, what the model answers, optionally a function call first). The fake
    hears an utterance by the energy of the decoded μ-law (`start_frames` loud 20 ms frames), and
    ends it after the session's `silence_duration_ms` of quiet, counted in audio time, so tests may
    feed frames as fast as they like. Speech during a response interrupts it (server VAD with
    interrupt_response), after which the client's `conversation.item.truncate` is checked against
    the audio actually sent for that item.

    Run it in the test's event loop (`async with FakeOpenAIRealtime(...) as fake`) or in a thread of
    its own (`with FakeOpenAIRealtime(...) as fake`), e.g. for a gateway served on another thread.
    Recorded state (`connections`, each a `RealtimeConnection`) is plain lists a test may read from
    any thread; actions (`send_event`, `close`) run on the fake's loop whichever loop awaits them.

    Failure knobs (attributes, changeable mid-test): `close_after_events` + `close_code` + `closes`
    close a connection after that many client events; `never_answer` accepts the socket and says
    nothing; `beta_names` sends the beta event names; `refuse_status` refuses upgrades. Pace:
    `delta_ms` of audio per delta every `delta_gap` seconds (delta_gap = delta_ms / 1000 is real
    time). From synchronous code, run an action with `fake.submit(fake.close(1000)).result()`.
    """

    path = "/v1/realtime"
    serve_options = {"max_size": 2**24, "compression": None}
    thread_name = "fake-openai-realtime"

    def __init__(self, *, api_key: str = "test-key", script: Script | None = None) -> None:
        self.api_key = api_key
        self.script = script or Script()
        self.connections: list[RealtimeConnection] = []
        self.utterances = 0  # caller utterances heard, over all connections (the script's position)
        self.refused = 0
        self.errors: list[str] = []  # crashes in the fake itself
        # knobs
        self.start_frames = 2  # loud 20 ms frames that start an utterance
        self.delta_ms = 100  # audio per output delta
        self.delta_gap = 0.002  # seconds between deltas: 50× faster than real time
        self.close_after_events: int | None = None
        self.close_code = 1011
        self.close_reason = "internal error"
        self.closes = 1  # how many connections the close knob closes
        self.never_answer = False
        self.beta_names = False
        self.refuse_status: int | None = None
        self._init_server()
        self._ids = itertools.count(1)

    async def wait_connections(self, count: int) -> None:
        await await_until(lambda: len(self.connections) >= count, f"{count} connections to the fake")

    # --- actions a test may take (from any loop or thread) ------------------------------------

    async def send_event(self, message: dict[str, Any], conn: RealtimeConnection | None = None) -> None:
        """Send any event (or, given a str/bytes, any frame) on a connection (default: the newest)."""
        await self._on_loop(self._send_any(conn or self.last, message))

    async def close(self, code: int = 1011, reason: str = "", conn: RealtimeConnection | None = None) -> None:
        await self._on_loop(self._close(conn or self.last, code, reason))

    async def _on_loop(self, coro) -> Any:
        assert self._loop is not None
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _send_any(self, conn: RealtimeConnection, message: Any) -> None:
        if isinstance(message, dict):
            await self._emit(conn, message)
        else:
            await conn.ws.send(message)

    async def _close(self, conn: RealtimeConnection, code: int, reason: str) -> None:
        self._hang_up(conn, code, reason)

    # --- the upgrade and the socket -------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if self.refuse_status is not None:
            self.refused += 1
            return connection.respond(self.refuse_status, "refused by the fake\n")
        if parts.path != self.path:
            return connection.respond(404, f"no such path {parts.path}\n")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.refused += 1
            return connection.respond(401, "missing or wrong credentials\n")
        query = dict(parse_qsl(parts.query))
        if not query.get("model"):
            return connection.respond(400, "a conversation session needs ?model=\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        conn = RealtimeConnection(ws=ws, path=parts.path, query=dict(parse_qsl(parts.query)),
                                  headers={k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(conn)
        try:
            if "openai-beta" in conn.headers:
                await self._emit(conn, self._error("beta_api_shape_disabled",
                                                   "The Realtime Beta API is no longer supported.", kind="invalid_request_error"))
                self._hang_up(conn, 1000, "")
                return
            if not self.never_answer:
                conn.session = default_session(conn.query.get("model", ""))
                await self._emit(conn, {"type": "session.created", "session": conn.session})
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    conn.bad_frames.append(raw)
                    if not self.never_answer:
                        await self._emit(conn, self._error("invalid_json", "The frame is not a JSON object."))
                    continue
                conn.received.append(message)
                if self.never_answer:
                    continue
                try:
                    await self._on_event(conn, message)
                except ConnectionClosed:
                    raise
                except Exception as exc:  # a bug in the fake: recorded for the test, the socket lives on
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                if (self.close_after_events is not None and self.closes > 0
                        and len(conn.received) == self.close_after_events):
                    self.closes -= 1
                    self._hang_up(conn, self.close_code, self.close_reason)
        except ConnectionClosed:
            pass
        finally:
            if conn.streaming is not None:
                conn.streaming.cancel()

    def _hang_up(self, conn: RealtimeConnection, code: int, reason: str) -> None:
        """Close without awaiting the handshake inline, so the handler keeps reading meanwhile."""
        if conn.closed_with is None:
            conn.closed_with = code
            self._spawn(conn.ws.close(code, reason))

    async def _emit(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        message.setdefault("event_id", f"event_{next(self._ids)}")
        conn.sent.append(message)
        try:
            await conn.ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _error(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
        return {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                           "event_id": event_id}}

    # --- client events ----------------------------------------------------------------------------

    async def _on_event(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        kind = message.get("type")
        event_id = message.get("event_id")
        handler = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }.get(kind)
        if handler is None:
            await self._emit(conn, self._error("invalid_value", f"Invalid value: '{kind}'. Unknown client event type.",
                                               param="type", event_id=event_id))
            return
        await handler(conn, message)

    async def _session_update(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        session = message.get("session")
        problem = validate_session(session)
        if problem is not None:
            param, text = problem
            await self._emit(conn, self._error("invalid_value" if "Unknown" not in text else "unknown_parameter", text,
                                               param=param, event_id=message.get("event_id")))
            return
        merge(conn.session, session)
        conn.updates += 1
        await self._emit(conn, {"type": "session.updated", "session": json.loads(json.dumps(conn.session))})

    def _input(self, conn: RealtimeConnection) -> dict[str, Any]:
        return conn.session.get("audio", {}).get("input", {})

    async def _append(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        audio = message.get("audio")
        try:
            data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            await self._emit(conn, self._error("invalid_value", "audio must be base64 text", param="audio",
                                               event_id=message.get("event_id")))
            return
        conn.audio += data
        conn.uncommitted += len(data)
        fmt = self._input(conn).get("format", {}).get("type")
        frame = 960 if fmt == "audio/pcm" else 160
        for start in range(0, len(data), frame):
            await self._hear(conn, data[start:start + frame], fmt)

    async def _hear(self, conn: RealtimeConnection, chunk: bytes, fmt: str | None) -> None:
        if fmt == "audio/pcmu":
            samples = ulaw_to_samples(chunk)
        elif fmt == "audio/pcm":
            samples = np.frombuffer(chunk[: len(chunk) // 2 * 2], dtype="<i2")
        else:
            return  # A-law: the fake does not listen to it
        detection = self._input(conn).get("turn_detection")
        if not isinstance(detection, dict):
            return
        chunk_ms = len(chunk) // conn._bytes_per_ms()
        if rms(samples) >= LOUD_RMS:
            conn.loud_frames += 1
            conn.quiet_ms = 0
            if not conn.speaking and conn.loud_frames >= self.start_frames:
                await self._speech_started(conn, detection)
        else:
            conn.loud_frames = 0
            if conn.speaking:
                conn.quiet_ms += chunk_ms
                if conn.quiet_ms >= int(detection.get("silence_duration_ms", 500)):
                    await self._speech_stopped(conn, detection)

    async def _speech_started(self, conn: RealtimeConnection, detection: dict[str, Any]) -> None:
        conn.speaking = True
        conn.current_turn = self.script.turns[min(self.utterances, len(self.script.turns) - 1)]
        self.utterances += 1
        await self._emit(conn, {"type": "input_audio_buffer.speech_started", "audio_start_ms": conn.audio_ms,
                                "item_id": self._id("item")})
        if conn.active is not None and detection.get("interrupt_response", True):
            await self._finish_response(conn, "cancelled", "turn_detected")

    async def _speech_stopped(self, conn: RealtimeConnection, detection: dict[str, Any]) -> None:
        conn.speaking = False
        conn.uncommitted = 0
        item = self._id("item")
        await self._emit(conn, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": conn.audio_ms, "item_id": item})
        await self._commit_item(conn, item, conn.current_turn or Turn())
        if detection.get("create_response", True) and conn.active is None:
            await self._start_response(conn, "turn", turn=conn.current_turn or Turn())

    async def _commit_item(self, conn: RealtimeConnection, item: str, turn: Turn) -> None:
        await self._emit(conn, {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": conn.last_item})
        user_item = {"id": item, "type": "message", "role": "user", "status": "completed",
                     "content": [{"type": "input_audio", "transcript": None}]}
        await self._item_events(conn, user_item)
        if self._input(conn).get("transcription"):
            conn.input_transcripts.append(turn.transcript)
            await self._emit(conn, {"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                                    "content_index": 0, "transcript": turn.transcript,
                                    "usage": {"type": "duration", "seconds": 1}})

    async def _item_events(self, conn: RealtimeConnection, item: dict[str, Any]) -> None:
        if self.beta_names:
            await self._emit(conn, {"type": "conversation.item.created", "previous_item_id": conn.last_item, "item": item})
        else:
            await self._emit(conn, {"type": "conversation.item.added", "previous_item_id": conn.last_item, "item": item})
            await self._emit(conn, {"type": "conversation.item.done", "previous_item_id": conn.last_item, "item": item})
        conn.last_item = item["id"]

    async def _commit(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        if not conn.uncommitted:
            await self._emit(conn, self._error("input_audio_buffer_commit_empty", "Error committing input audio buffer: "
                                               "buffer too small.", event_id=message.get("event_id")))
            return
        conn.uncommitted = 0
        conn.speaking = False
        turn = self.script.turns[min(self.utterances, len(self.script.turns) - 1)]
        self.utterances += 1
        await self._commit_item(conn, self._id("item"), turn)

    async def _clear(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        conn.uncommitted = 0
        await self._emit(conn, {"type": "input_audio_buffer.cleared"})

    async def _item_create(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        item = message.get("item")
        event_id = message.get("event_id")
        if not isinstance(item, dict):
            await self._emit(conn, self._error("missing_required_parameter", "Missing required parameter: 'item'.",
                                               param="item", event_id=event_id))
            return
        kind = item.get("type")
        if kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(output, str):
                await self._emit(conn, self._error("invalid_type", "item.output must be a string.", param="item.output",
                                                   event_id=event_id))
                return
            if call_id not in conn.pending_calls:
                await self._emit(conn, self._error("invalid_value", f"No function call with call_id '{call_id}'.",
                                                   param="item.call_id", event_id=event_id))
                return
            conn.tool_outputs.append((call_id, output))
            conn.answered_call = conn.pending_calls.pop(call_id)
            conn.answered_output = output
            await self._item_events(conn, {"id": self._id("item"), "type": "function_call_output", "call_id": call_id,
                                           "output": output, "status": "completed"})
        elif kind == "message" and item.get("role") in ("user", "assistant", "system") and isinstance(item.get("content"), list):
            await self._item_events(conn, {"id": self._id("item"), **item, "status": "completed"})
        else:
            await self._emit(conn, self._error("invalid_value", f"Unsupported item type '{kind}'.", param="item.type",
                                               event_id=event_id))

    async def _truncate(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        item_id, index, end = message.get("item_id"), message.get("content_index"), message.get("audio_end_ms")
        record = conn.items.get(item_id) if isinstance(item_id, str) else None
        sent_ms = record.audio_ms_sent if record else None
        entry = {"item_id": item_id, "content_index": index, "audio_end_ms": end, "sent_ms": sent_ms, "ok": False}
        conn.truncations.append(entry)
        event_id = message.get("event_id")
        if record is None:
            problem = self._error("item_not_found", f"Item '{item_id}' not found.", param="item_id", event_id=event_id)
        elif index != 0:
            problem = self._error("invalid_value", "content_index must be 0.", param="content_index", event_id=event_id)
        elif not isinstance(end, int) or isinstance(end, bool) or end < 0:
            problem = self._error("invalid_value", "audio_end_ms must be a non-negative integer.", param="audio_end_ms",
                                  event_id=event_id)
        elif end > record.audio_ms_sent:
            problem = self._error("invalid_value", f"audio_end_ms {end} is beyond the item's audio "
                                  f"({record.audio_ms_sent} ms).", param="audio_end_ms", event_id=event_id)
        else:
            entry["ok"] = True
            await self._emit(conn, {"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                                    "audio_end_ms": end})
            return
        await self._emit(conn, problem)

    async def _response_create(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        body = message.get("response")
        event_id = message.get("event_id")
        if body is not None and not isinstance(body, dict):
            await self._emit(conn, self._error("invalid_type", "response must be an object.", param="response",
                                               event_id=event_id))
            return
        if conn.active is not None:
            await self._emit(conn, self._error("conversation_already_has_active_response",
                                               f"Conversation already has an active response in progress: {conn.active.id}.",
                                               event_id=event_id))
            return
        instructions = (body or {}).get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            await self._emit(conn, self._error("invalid_type", "response.instructions must be a string.",
                                               param="response.instructions", event_id=event_id))
            return
        if instructions is not None:
            conn.instructions.append(instructions)
            text = self.script.instructed_reply
            await self._start_response(conn, "instructed", text=text(instructions) if callable(text) else text,
                                       instructions=instructions)
        elif conn.answered_call is not None:
            turn, output = conn.answered_call, conn.answered_output
            conn.answered_call = None
            await self._start_response(conn, "tool_answer", text=turn.reply(output) if callable(turn.reply) else turn.reply,
                                       ms=turn.reply_ms)
        else:
            await self._start_response(conn, "default", text=self.script.default_reply)

    async def _response_cancel(self, conn: RealtimeConnection, message: dict[str, Any]) -> None:
        if conn.active is None:
            await self._emit(conn, self._error("response_cancel_not_active", "Cancellation failed: no active response found.",
                                               event_id=message.get("event_id")))
            return
        await self._finish_response(conn, "cancelled", "client_cancelled")

    # --- responses ----------------------------------------------------------------------------------

    async def _start_response(self, conn: RealtimeConnection, cause: str, *, turn: Turn | None = None, text: str = "",
                              ms: int | None = None, instructions: str | None = None) -> None:
        record = ResponseRecord(id=self._id("resp"), cause=cause, instructions=instructions)
        conn.responses.append(record)
        conn.active = record
        await self._emit(conn, {"type": "response.created", "response": {
            "id": record.id, "object": "realtime.response", "status": "in_progress", "output": []}})
        # The rest streams from a task, so caller audio (and barge-in) is heard while the model talks.
        conn.streaming = self._spawn(self._guarded(lambda: self._stream(conn, record, turn, text, ms)))

    async def _guarded(self, make) -> None:
        # The coroutine is made here, in the task: a task cancelled before its first step (the fake
        # stopping) would otherwise leave it never awaited, and Python warns about that.
        try:
            await make()
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in the fake: recorded for the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def _stream(self, conn: RealtimeConnection, record: ResponseRecord, turn: Turn | None, text: str,
                      ms: int | None) -> None:
        output = record.output
        if turn is not None and turn.tool is not None:
            if turn.say_first:
                output.append(await self._speak(conn, record, turn.say_first, None, len(output)))
            output.append(await self._function_call(conn, record, turn, len(output)))
        else:
            if turn is not None:
                text, ms = (turn.reply if isinstance(turn.reply, str) else turn.reply("")), turn.reply_ms
            output.append(await self._speak(conn, record, text, ms, len(output)))
        conn.streaming = None
        await self._finish_response(conn, "completed", None)

    async def _speak(self, conn: RealtimeConnection, record: ResponseRecord, text: str, ms: int | None,
                     index: int) -> dict[str, Any]:
        item_id = self._id("item")
        record.item_id, record.text = item_id, text
        conn.items[item_id] = record
        part = "audio" if self.beta_names else "output_audio"
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress",
                "content": []}
        base = {"response_id": record.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self._emit(conn, {"type": "response.output_item.added", "response_id": record.id, "output_index": index,
                                "item": item})
        await self._item_events(conn, dict(item))
        await self._emit(conn, {"type": "response.content_part.added", **base, "part": {"type": part, "transcript": ""}})
        audio = self._audio(conn, ms if ms is not None else max(400, MS_PER_CHAR * len(text)))
        words = text.split()
        step = self.delta_ms * self._out_bytes_per_ms(conn)
        chunks = [audio[i:i + step] for i in range(0, len(audio), step)] or [b""]
        audio_delta = "response.audio.delta" if self.beta_names else "response.output_audio.delta"
        transcript_delta = "response.audio_transcript.delta" if self.beta_names else "response.output_audio_transcript.delta"
        for number, chunk in enumerate(chunks):
            record.audio_ms_sent += len(chunk) // self._out_bytes_per_ms(conn)
            await self._emit(conn, {"type": audio_delta, **base, "delta": base64.b64encode(chunk).decode("ascii")})
            # Transcript words spread over the audio, as the service interleaves them.
            upto = len(words) * (number + 1) // len(chunks)
            spoken = len(words) * number // len(chunks)
            if upto > spoken:
                delta = " ".join(words[spoken:upto])
                await self._emit(conn, {"type": transcript_delta, **base, "delta": delta if spoken == 0 else " " + delta})
            await asyncio.sleep(self.delta_gap)
        await self._emit(conn, {"type": "response.audio.done" if self.beta_names else "response.output_audio.done", **base})
        await self._emit(conn, {"type": "response.audio_transcript.done" if self.beta_names
                                else "response.output_audio_transcript.done", **base, "transcript": text})
        done_part = {"type": part, "transcript": text}
        await self._emit(conn, {"type": "response.content_part.done", **base, "part": done_part})
        item = {**item, "status": "completed", "content": [done_part]}
        await self._emit(conn, {"type": "response.output_item.done", "response_id": record.id, "output_index": index,
                                "item": item})
        return item

    async def _function_call(self, conn: RealtimeConnection, record: ResponseRecord, turn: Turn, index: int) -> dict[str, Any]:
        tool = turn.tool
        assert tool is not None
        call_id = tool.call_id or self._id("call")
        record.call_id = call_id
        arguments = tool.arguments if isinstance(tool.arguments, str) else json.dumps(tool.arguments)
        item = {"id": self._id("item"), "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "call_id": call_id, "name": tool.name, "arguments": ""}
        await self._emit(conn, {"type": "response.output_item.added", "response_id": record.id, "output_index": index,
                                "item": item})
        base = {"response_id": record.id, "item_id": item["id"], "output_index": index, "call_id": call_id}
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            await self._emit(conn, {"type": "response.function_call_arguments.delta", **base, "delta": piece})
        # Answerable from the moment its arguments are done: a fast client sends the output before
        # the fake has sent the rest of the response.
        conn.pending_calls[call_id] = turn
        await self._emit(conn, {"type": "response.function_call_arguments.done", **base, "name": tool.name,
                                "arguments": arguments})
        item = {**item, "status": "completed", "arguments": arguments}
        await self._emit(conn, {"type": "response.output_item.done", "response_id": record.id, "output_index": index,
                                "item": item})
        return item

    async def _finish_response(self, conn: RealtimeConnection, status: str, reason: str | None) -> None:
        record = conn.active
        if record is None:
            return
        conn.active = None
        task, conn.streaming = conn.streaming, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record.status, record.reason = status, reason
        details = None if reason is None else {"type": status, "reason": reason}
        output = record.output
        if status == "cancelled":
            output = [{**item, "status": "incomplete"} for item in output]
        await self._emit(conn, {"type": "response.done", "response": {
            "id": record.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output, "usage": {"total_tokens": 0}}})

    def _out_bytes_per_ms(self, conn: RealtimeConnection) -> int:
        fmt = conn.session.get("audio", {}).get("output", {}).get("format", {})
        return 48 if fmt.get("type") == "audio/pcm" else 8

    def _audio(self, conn: RealtimeConnection, ms: int) -> bytes:
        """A tone in the session's output format (μ-law, or PCM16 24 kHz; A-law is sent as μ-law)."""
        fmt = conn.session.get("audio", {}).get("output", {}).get("format", {}).get("type")
        rate = 24000 if fmt == "audio/pcm" else 8000
        t = np.arange(rate * ms // 1000) / rate
        samples = (6000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        return samples.astype("<i2").tobytes() if fmt == "audio/pcm" else samples_to_ulaw(samples)


# --- the session shape ------------------------------------------------------------------------------


def default_session(model: str) -> dict[str, Any]:
    return {
        "type": "realtime", "object": "realtime.session", "id": "sess_fake", "model": model,
        "output_modalities": ["audio"], "instructions": "",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None, "noise_reduction": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 500, "create_response": True,
                                         "interrupt_response": True, "idle_timeout_ms": None}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "truncation": "auto",
    }


def merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Fields left out keep their value; objects merge, everything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key not in ("format", "turn_detection"):
            merge(target[key], value)
        else:
            target[key] = value


def validate_session(session: Any) -> tuple[str, str] | None:
    """(param, message) of the first thing the GA service would refuse, or None."""
    if not isinstance(session, dict):
        return "session", "Missing required parameter: 'session'."
    for key in session:
        if key not in SESSION_KEYS:
            return f"session.{key}", f"Unknown parameter: 'session.{key}'."
    if session.get("type") != "realtime":
        if "type" not in session:
            return "session.type", "Missing required parameter: 'session.type'."
        return "session.type", f"Invalid value: '{session.get('type')}'. This endpoint takes type 'realtime'."
    modalities = session.get("output_modalities")
    if modalities is not None and modalities not in (["audio"], ["text"]):
        return "session.output_modalities", "output_modalities must be ['audio'] or ['text']."
    audio = session.get("audio", {})
    if not isinstance(audio, dict):
        return "session.audio", "session.audio must be an object."
    for side in ("input", "output"):
        part = audio.get(side, {})
        if not isinstance(part, dict):
            return f"session.audio.{side}", f"session.audio.{side} must be an object."
        if "format" in part:
            fmt = part["format"]
            if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
                kind = fmt.get("type") if isinstance(fmt, dict) else fmt
                return f"session.audio.{side}.format.type", f"Invalid value: '{kind}'. Supported values are: " \
                    "'audio/pcm', 'audio/pcmu', and 'audio/pcma'."
            if fmt["type"] == "audio/pcm" and fmt.get("rate", 24000) != 24000:
                return f"session.audio.{side}.format.rate", "audio/pcm supports only rate 24000."
    audio_in, audio_out = audio.get("input", {}), audio.get("output", {})
    detection = audio_in.get("turn_detection", {})
    if detection is not None and "turn_detection" in audio_in:
        if not isinstance(detection, dict) or detection.get("type") not in ("server_vad", "semantic_vad"):
            return "session.audio.input.turn_detection.type", "turn_detection.type must be server_vad or semantic_vad."
        threshold = detection.get("threshold", 0.5)
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            return "session.audio.input.turn_detection.threshold", "threshold must be between 0 and 1."
        for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
            value = detection.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                return f"session.audio.input.turn_detection.{key}", f"{key} must be a non-negative integer."
    transcription = audio_in.get("transcription")
    if transcription is not None and (not isinstance(transcription, dict) or not isinstance(transcription.get("model"), str)):
        return "session.audio.input.transcription.model", "transcription needs a model."
    voice = audio_out.get("voice")
    if voice is not None and voice not in VOICES and not (isinstance(voice, dict) and "id" in voice):
        return "session.audio.output.voice", f"Invalid value: '{voice}'. Unknown voice."
    tools = session.get("tools", [])
    if not isinstance(tools, list):
        return "session.tools", "tools must be an array."
    for index, tool in enumerate(tools):
        where = f"session.tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return f"{where}.type", "Only tools of type 'function' are supported here."
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            return f"{where}.name", "A tool name must match ^[A-Za-z0-9_-]{1,64}$."
        if "description" in tool and not isinstance(tool["description"], str):
            return f"{where}.description", "description must be a string."
        parameters = tool.get("parameters")
        if not isinstance(parameters, dict) or parameters.get("type") != "object":
            return f"{where}.parameters", "parameters must be a JSON Schema object with type 'object'."
        for key in tool:
            if key not in ("type", "name", "description", "parameters"):
                return f"{where}.{key}", f"Unknown parameter: '{where}.{key}'."
    choice = session.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required") and not isinstance(choice, dict):
        return "session.tool_choice", "tool_choice must be auto, none, required or a tool."
    return None
