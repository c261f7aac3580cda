"""A loopback fake of Gemini Live (BidiGenerateContent over WebSocket) that speaks its real protocol."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.audio import rms
from tests.waiting import await_until, wait_until

from .server import FakeWebsocketServer

__all__ = ["FakeGeminiLive", "GeminiConnection", "Line", "tone_pcm24k"]

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
INVALID = "Request contains an invalid argument."
CLIENT_KEYS = ("setup", "clientContent", "realtimeInput", "toolResponse")
LOUD_RMS = 1000.0
SPEECH_FRAMES = 3  # loud 20 ms frames before the fake decides the caller is talking
FRAME_BYTES_16K = 640  # 20 ms of PCM16 at 16 kHz
SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL", "TYPE_UNSPECIFIED"}
SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
               "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "anyOf",
               "propertyOrdering", "default", "example", "minProperties", "maxProperties"}
DECLARATION_KEYS = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema",
                    "behavior"}
FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
SENSITIVITIES = {"startOfSpeechSensitivity": ("START_SENSITIVITY_UNSPECIFIED", "START_SENSITIVITY_HIGH",
                                              "START_SENSITIVITY_LOW"),
                 "endOfSpeechSensitivity": ("END_SENSITIVITY_UNSPECIFIED", "END_SENSITIVITY_HIGH",
                                            "END_SENSITIVITY_LOW")}


@dataclass
class Line:
    """One caller utterance and how the model answers it.

    `tool` is (name, args): the model first calls that function and answers only after the
    client's toolResponse (kept in `GeminiConnection.tool_responses`).
    """

    transcript: str = "hello there"
    reply: str = "Sure, I can help with that."
    tool: tuple[str, dict[str, Any]] | None = None
    reply_ms: int = 480


@dataclass
class GeminiConnection:
    """One WebSocket the client opened, as the fake saw it."""

    ws: ServerConnection
    query: dict[str, str]
    headers: dict[str, str]
    setup: dict[str, Any] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)  # every JSON message the client sent
    binary_frames: int = 0  # frames from the client that came as binary
    sent: list[dict[str, Any]] = field(default_factory=list)
    binary_sent: int = 0  # of the fake's messages, how many went as binary frames
    audio: bytearray = field(default_factory=bytearray)  # caller PCM16 16 kHz, as decoded
    audio_messages: int = 0
    texts: list[str] = field(default_factory=list)  # clientContent text turns
    tool_responses: list[dict[str, Any]] = field(default_factory=list)
    hung_up: int | None = None
    problem: str | None = None  # why the fake refused the setup (closed 1007)
    closed: threading.Event = field(default_factory=threading.Event)
    # detector state
    speaking: bool = False
    loud: int = 0
    quiet_ms: int = 0
    pending_tool: str | None = None
    cancelled_tools: set[str] = field(default_factory=set)
    late_tool_responses: list[dict[str, Any]] = field(default_factory=list)
    tool_answered: asyncio.Event | None = None
    reply_task: asyncio.Task | None = None
    interrupt: bool = False

    def messages(self, key: str) -> list[Any]:
        """The bodies of the client's messages of one kind (e.g. "realtimeInput")."""
        return [m[key] for m in self.received if key in m]

    def events(self, key: str) -> list[Any]:
        """The bodies of the fake's messages of one kind (e.g. "toolCall")."""
        return [m[key] for m in self.sent if key in m]

    def server_content(self, key: str) -> list[Any]:
        return [m["serverContent"][key] for m in self.sent if key in m.get("serverContent", {})]

    @property
    def resumption_handle(self) -> Any:
        """The handle the client's setup asked to resume (accepted or not)."""
        setups = self.messages("setup")
        return ((setups[0] if setups else {}).get("sessionResumption") or {}).get("handle")


def tone_pcm24k(ms: int, freq: float = 440.0, amplitude: int = 8000, *, start: int = 0) -> bytes:
    """An audible tone as PCM16 LE 24 kHz (what Gemini speaks)."""
    n = np.arange(start, start + 24 * ms)
    return (amplitude * np.sin(2 * np.pi * freq * n / 24000)).astype("<i2").tobytes()


class FakeGeminiLive(FakeWebsocketServer):
    """Gemini Live on 127.0.0.1.

    It checks the key (`x-goog-api-key` header or `?key=`; HTTP 401 on the upgrade otherwise), wants
    `setup` first and validates it (close 1007 "Request contains an invalid argument." otherwise),
    answers `setupComplete`, and sends its JSON as binary frames every other message (`binary`), so a
    client must take both. Caller audio (`realtimeInput.audio`, PCM16 16 kHz only) goes through an
    energy detector counted in audio time: `SPEECH_FRAMES` loud 20 ms frames start an utterance,
    the setup's silenceDurationMs (or `silence_ms`) of quiet ends it. Each utterance plays the next
    entry of `script`: the caller's words as inputTranscription, an optional tool call (the fake waits
    for its toolResponse), then a spoken reply: 24 kHz PCM16 tone chunks faster than real time with
    outputTranscription, generationComplete, turnComplete, and a sessionResumptionUpdate when the setup
    asked for resumption. Loud caller audio during a reply interrupts it (`interrupted`, turnComplete).
    `clientContent` with turnComplete is answered with `greeting_reply`; its text is kept in `texts`.

    Run it in the test's loop (`await fake.start()` / `async with`) or on its own thread and loop
    (`fake.start_thread()` / `with fake:`), for a gateway served from another thread. Knob actions
    (`go_away`, `close`, `send_raw`, `send_message`) may be called from any thread; attributes are
    plain knobs, read when used.

    Scripting: `script` is a list of `Line` (or plain strings: the caller's words with the default
    reply), one per caller utterance (the last repeats); `greeting_reply` answers text turns.
    Knobs: `binary` ("alternate", True, False), `chunk_ms` (ms of audio per modelTurn message),
    `speed` (how much faster than real time audio is sent; 0 = no pauses at all), `silence_ms`
    (end of utterance when the setup gives none), `input_finished` (send `finished: true` with the
    caller's transcription), `never_setup` (read setup, never answer), `close_after_setup` ((code,
    reason): close right after setupComplete), `tool_cancellation` (send toolCallCancellation for a
    pending call on barge-in), `refuse_status` (refuse upgrades with this HTTP status),
    `drop_after_audio` / `drop_code` / `drop_reason` / `drops` (close a connection after that many
    audio messages, `drops` times: a provider that goes away mid-call).
    """

    serve_options = {"compression": None}
    thread_name = "fake-gemini-live"

    def __init__(self, *, api_key: str = "test-key", script: list[Line | str] | None = None,
                 greeting_reply: str = "Hello, thanks for calling. How can I help?") -> None:
        self.api_key = api_key
        self.script = [Line(transcript=s) if isinstance(s, str) else s for s in (script or [Line()])]
        self.greeting_reply = greeting_reply
        self.binary: bool | str = "alternate"
        self.chunk_ms = 40
        self.speed = 4.0
        self.silence_ms = 500
        self.input_finished = False
        self.never_setup = False
        self.close_after_setup: tuple[int, str] | None = None
        self.tool_cancellation = False
        self.refuse_status: int | None = None
        self.drop_after_audio: int | None = None
        self.drop_code = 1011
        self.drop_reason = "Internal error encountered."
        self.drops = 1
        self.connections: list[GeminiConnection] = []
        self.utterances = 0
        self.handles: list[str] = []  # resumption handles issued
        self.refused = 0
        self._init_server()
        self._sent_count = 0
        self._tool_ids = 0

    async def stop(self) -> None:
        for conn in self.connections:
            if conn.reply_task is not None:
                conn.reply_task.cancel()
        await super().stop()

    @property
    def texts(self) -> list[str]:
        """Every clientContent text turn, over all connections."""
        return [text for conn in self.connections for text in conn.texts]

    @property
    def tool_responses(self) -> list[dict[str, Any]]:
        return [r for conn in self.connections for r in conn.tool_responses]

    # --- knob actions (any thread) --------------------------------------------------------

    def go_away(self, time_left: float = 0.05) -> Any:
        """Send goAway on the newest connection, then close it 1000 after `time_left` seconds."""
        return self._schedule(self._go_away(self.last, time_left))

    def close(self, code: int = 1011, reason: str = "Internal error encountered.") -> Any:
        """Close the newest connection with this code and reason."""
        return self._schedule(self._close(self.last, code, reason))

    def send_raw(self, data: str | bytes) -> Any:
        """Send any frame (e.g. not JSON) on the newest connection."""
        return self._schedule(self.last.ws.send(data))

    def send_message(self, message: dict[str, Any]) -> Any:
        """Send a JSON message on the newest connection (binary or text per `binary`)."""
        return self._schedule(self._emit(self.last, message))

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        """Block (sync tests) until `count` connections have completed setup."""
        wait_until(lambda: sum(1 for c in self.connections if c.setup is not None) >= count,
                   f"{count} set-up connections to the fake Gemini Live", timeout=timeout)

    async def await_connections(self, count: int, timeout: float = 10.0) -> None:
        await await_until(lambda: sum(1 for c in self.connections if c.setup is not None) >= count,
                          f"{count} set-up connections to the fake Gemini Live", timeout=timeout)

    def _schedule(self, coro: Any) -> Any:
        assert self._loop is not None, "start the fake first"
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return self._loop.create_task(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # --- the protocol -------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if self.refuse_status is not None:
            self.refused += 1
            return connection.respond(self.refuse_status, "refused by the fake\n")
        if parts.path != PATH:
            return connection.respond(404, f"no such path {parts.path}\n")
        query = dict(parse_qsl(parts.query))
        if self.api_key not in (request.headers.get("x-goog-api-key"), query.get("key")):
            return connection.respond(401, "API key not valid. Please pass a valid API key.\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        conn = GeminiConnection(ws=ws, query=dict(parse_qsl(parts.query)),
                                headers={k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(conn)
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    conn.binary_frames += 1
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = None
                if not isinstance(message, dict) or len(message) != 1 or next(iter(message)) not in CLIENT_KEYS:
                    await self._close(conn, 1007, INVALID)
                    continue
                conn.received.append(message)
                if conn.hung_up is None:
                    await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            if conn.reply_task is not None:
                conn.reply_task.cancel()
            conn.closed.set()

    async def _on_message(self, conn: GeminiConnection, message: dict[str, Any]) -> None:
        kind, body = next(iter(message.items()))
        if conn.setup is None:
            if kind != "setup":
                conn.problem = f"{kind} before setup"
                await self._close(conn, 1007, INVALID)
                return
            conn.problem = self._setup_problem(body)
            if conn.problem is not None:
                await self._close(conn, 1007, INVALID)
                return
            if not self._resumable(body):
                conn.problem = "unknown resumption handle"
                await self._close(conn, 1007, "Invalid session resumption handle.")
                return
            conn.setup = body
            if self.never_setup:
                return
            await self._emit(conn, {"setupComplete": {}})
            if self.close_after_setup is not None:
                await self._close(conn, *self.close_after_setup)
        elif kind == "setup":
            conn.problem = "a second setup"
            await self._close(conn, 1007, INVALID)
        elif kind == "realtimeInput":
            await self._realtime_input(conn, body)
        elif kind == "clientContent":
            await self._client_content(conn, body)
        elif kind == "toolResponse":
            await self._tool_response(conn, body)

    def _setup_problem(self, setup: Any) -> str | None:
        if not isinstance(setup, dict):
            return "setup is not an object"
        if not str(setup.get("model") or "").startswith("models/"):
            return "model must start with models/"
        generation = setup.get("generationConfig") or {}
        if generation.get("responseModalities") != ["AUDIO"]:
            return "responseModalities must be [AUDIO]"
        detection = (setup.get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
        for key, allowed in SENSITIVITIES.items():
            if key in detection and detection[key] not in allowed:
                return f"bad {key}"
        for tool in setup.get("tools") or []:
            for declaration in tool.get("functionDeclarations") or []:
                if set(declaration) - DECLARATION_KEYS:
                    return "unknown function declaration field"
                if not FUNCTION_NAME.match(str(declaration.get("name") or "")):
                    return "bad function name"
                if "parameters" in declaration and not _schema_ok(declaration["parameters"]):
                    return "bad parameters schema"
        return None

    def _resumable(self, setup: Any) -> bool:
        handle = ((setup or {}).get("sessionResumption") or {}).get("handle") if isinstance(setup, dict) else None
        return handle is None or handle in self.handles

    async def _realtime_input(self, conn: GeminiConnection, body: dict[str, Any]) -> None:
        if "activityStart" in body or "activityEnd" in body:
            await self._close(conn, 1007, INVALID)  # automatic activity detection is on
            return
        audio = body.get("audio")
        if audio is None:
            return
        mime = str(audio.get("mimeType") or "").replace(" ", "")
        if not mime.startswith("audio/pcm") or "rate=16000" not in mime:
            await self._close(conn, 1007, INVALID)
            return
        try:
            pcm = base64.b64decode(audio.get("data") or "", validate=True)
        except ValueError:
            await self._close(conn, 1007, INVALID)
            return
        conn.audio += pcm
        conn.audio_messages += 1
        if self.drop_after_audio is not None and self.drops > 0 and conn.audio_messages == self.drop_after_audio:
            self.drops -= 1
            await self._close(conn, self.drop_code, self.drop_reason)
            return
        for start in range(0, len(pcm), FRAME_BYTES_16K):
            await self._hear(conn, pcm[start:start + FRAME_BYTES_16K])

    async def _hear(self, conn: GeminiConnection, pcm: bytes) -> None:
        samples = np.frombuffer(pcm[:len(pcm) & ~1], dtype="<i2")
        ms = len(samples) // 16
        if rms(samples) >= LOUD_RMS:
            conn.loud += 1
            conn.quiet_ms = 0
            if not conn.speaking and conn.loud >= SPEECH_FRAMES:
                conn.speaking = True
                if conn.reply_task is not None and not conn.reply_task.done():
                    conn.interrupt = True  # barge-in: the reply stops at its next chunk
                    if conn.tool_answered is not None:
                        conn.tool_answered.set()  # a reply waiting on its tool gives up too
            return
        conn.loud = 0
        if conn.speaking:
            conn.quiet_ms += ms
            if conn.quiet_ms >= self._silence(conn):
                conn.speaking = False
                conn.quiet_ms = 0
                await self._utterance(conn)

    def _silence(self, conn: GeminiConnection) -> int:
        detection = ((conn.setup or {}).get("realtimeInputConfig") or {}).get("automaticActivityDetection") or {}
        return int(detection.get("silenceDurationMs") or self.silence_ms)

    async def _utterance(self, conn: GeminiConnection) -> None:
        line = self.script[min(self.utterances, len(self.script) - 1)]
        self.utterances += 1
        if conn.reply_task is not None and not conn.reply_task.done():
            await asyncio.gather(conn.reply_task, return_exceptions=True)  # the interrupted reply winds up first
        if conn.setup.get("inputAudioTranscription") is not None:
            words = line.transcript.split()
            half = len(words) // 2 or len(words)
            await self._emit(conn, {"serverContent": {"inputTranscription": {"text": " ".join(words[:half])}}})
            rest = {"text": " " + " ".join(words[half:])} if words[half:] else {"text": ""}
            if self.input_finished:
                rest["finished"] = True
            if rest["text"] or self.input_finished:
                await self._emit(conn, {"serverContent": {"inputTranscription": rest}})
        conn.reply_task = asyncio.get_running_loop().create_task(self._answer(conn, line))

    async def _client_content(self, conn: GeminiConnection, body: dict[str, Any]) -> None:
        turns = body.get("turns") or []
        for turn in turns:
            for part in turn.get("parts") or []:
                if isinstance(part.get("text"), str):
                    conn.texts.append(part["text"])
        if body.get("turnComplete"):
            if conn.reply_task is not None and not conn.reply_task.done():
                conn.interrupt = True  # on 3.x a text turn ends the answer in progress
                if conn.tool_answered is not None:
                    conn.tool_answered.set()
                await asyncio.gather(conn.reply_task, return_exceptions=True)
            conn.reply_task = asyncio.get_running_loop().create_task(
                self._answer(conn, Line(transcript="", reply=self.greeting_reply)))

    async def _tool_response(self, conn: GeminiConnection, body: dict[str, Any]) -> None:
        responses = body.get("functionResponses")
        if not isinstance(responses, list) or not responses:
            await self._close(conn, 1007, INVALID)
            return
        for response in responses:
            if response.get("id") in conn.cancelled_tools:
                conn.late_tool_responses.append(response)  # answered after its cancellation: ignored
                continue
            if conn.pending_tool is None or response.get("id") != conn.pending_tool \
                    or not isinstance(response.get("response"), dict):
                await self._close(conn, 1007, INVALID)
                return
            conn.tool_responses.append(response)
            conn.pending_tool = None
            if conn.tool_answered is not None:
                conn.tool_answered.set()

    async def _answer(self, conn: GeminiConnection, line: Line) -> None:
        conn.interrupt = False
        if line.tool is not None:
            self._tool_ids += 1
            call_id = f"fc-{self._tool_ids}"
            conn.pending_tool = call_id
            conn.tool_answered = asyncio.Event()
            name, args = line.tool
            await self._emit(conn, {"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": args}]}})
            await conn.tool_answered.wait()
            conn.tool_answered = None
        chunks = max(1, line.reply_ms // self.chunk_ms)
        words = line.reply.split()
        per_chunk = -(-len(words) // chunks)  # the text keeps ahead of the audio, as Gemini's does
        pause = self.chunk_ms / 1000 / self.speed if self.speed else 0.0
        for index in range(chunks):
            if conn.interrupt:
                break
            audio = tone_pcm24k(self.chunk_ms, start=index * 24 * self.chunk_ms)
            await self._emit(conn, {"serverContent": {"modelTurn": {"parts": [{"inlineData": {
                "mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(audio).decode()}}]}}})
            share = words[index * per_chunk:(index + 1) * per_chunk]
            if share and conn.setup.get("outputAudioTranscription") is not None:
                await self._emit(conn, {"serverContent": {"outputTranscription": {
                    "text": (" " if index else "") + " ".join(share)}}})
            await asyncio.sleep(pause)  # at least a yield, so caller audio is read between chunks
        if conn.interrupt:
            await self._emit(conn, {"serverContent": {"interrupted": True}})
            if conn.pending_tool is not None:
                # The interrupted call is moot: it is cancelled (told only with the knob on).
                conn.cancelled_tools.add(conn.pending_tool)
                if self.tool_cancellation:
                    await self._emit(conn, {"toolCallCancellation": {"ids": [conn.pending_tool]}})
                conn.pending_tool = None
            await self._emit(conn, {"serverContent": {"turnComplete": True}})
        else:
            await self._emit(conn, {"serverContent": {"generationComplete": True}})
            await self._emit(conn, {"serverContent": {"turnComplete": True}, "usageMetadata": {"totalTokenCount": 42}})
        conn.interrupt = False
        if conn.setup.get("sessionResumption") is not None:
            handle = f"h-{len(self.handles) + 1}"
            self.handles.append(handle)
            await self._emit(conn, {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _go_away(self, conn: GeminiConnection, time_left: float) -> None:
        await self._emit(conn, {"goAway": {"timeLeft": f"{time_left}s"}})
        await asyncio.sleep(time_left)  # the protocol's own notice period
        await self._close(conn, 1000, "")

    async def _close(self, conn: GeminiConnection, code: int, reason: str) -> None:
        if conn.hung_up is not None:
            return
        conn.hung_up = code
        # Not awaited inline: the closing handshake needs this handler to keep reading.
        asyncio.get_running_loop().create_task(conn.ws.close(code, reason))

    async def _emit(self, conn: GeminiConnection, message: dict[str, Any]) -> None:
        conn.sent.append(message)
        text = json.dumps(message)
        self._sent_count += 1
        binary = self.binary if isinstance(self.binary, bool) else self._sent_count % 2 == 1
        conn.binary_sent += binary
        try:
            await conn.ws.send(text.encode() if binary else text)
        except ConnectionClosed:
            pass


def _schema_ok(schema: Any) -> bool:
    """Gemini's Schema: upper-case type names and only the keys it knows."""
    if not isinstance(schema, dict) or set(schema) - SCHEMA_KEYS:
        return False
    if "type" in schema and schema["type"] not in SCHEMA_TYPES:
        return False
    if not all(_schema_ok(sub) for sub in (schema.get("properties") or {}).values()):
        return False
    if "items" in schema and not _schema_ok(schema["items"]):
        return False
    return all(_schema_ok(sub) for sub in schema.get("anyOf") or [])
