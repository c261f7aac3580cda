"""OpenAI Realtime (GA protocol) speech-to-speech sessions over a WebSocket, μ-law both ways."""
from __future__ import annotations

import base64
import asyncio
import binascii
import itertools
import json
import logging
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import quote

from core import jsonsafe
from core.jsonsafe import JsonInputError
from core.redact import redact

from . import base
from .base import (
    RealtimeError,
    RealtimeListener,
    RealtimeProvider,
    RealtimeSession,
    RealtimeWebsocketSession,
    SessionSetup,
    ToolCall,
)

log = logging.getLogger(__name__)

DEFAULT_VOICE = "marin"
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
DEFAULT_VAD_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_MS = 500
# The phone line's own format both ways: nothing to resample, 8 bytes per millisecond.
ULAW_FORMAT = {"type": "audio/pcmu"}
NOISE_REDUCTION = ("near_field", "far_field")
# A misbehaving server could send the same bad event thousands of times: log the first few, then rarely.
LOGGED_SKIPS = 5
SKIP_LOG_EVERY = 100
# A response.create the service neither starts nor refuses within this long no longer holds up the next one.
RESPONSE_START_WAIT = 5.0
# Transcript text kept per item until its ".done": bounded, old items fall out first.
MAX_TRACKED_ITEMS = 64

# GA names and the beta names some OpenAI-compatible servers still use mean the same thing.
AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
TRANSCRIPT_DELTA = frozenset({"response.output_audio_transcript.delta", "response.audio_transcript.delta"})
TRANSCRIPT_DONE = frozenset({"response.output_audio_transcript.done", "response.audio_transcript.done"})
# Events with nothing for the listener (acknowledgements, progress): ignored without a log line.
QUIET_EVENTS = frozenset({
    "session.created", "session.updated", "conversation.created", "rate_limits.updated",
    "input_audio_buffer.committed", "input_audio_buffer.cleared", "input_audio_buffer.timeout_triggered",
    "conversation.item.added", "conversation.item.done", "conversation.item.created", "conversation.item.truncated",
    "conversation.item.deleted", "conversation.item.retrieved",
    "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.segment",
    "response.output_item.done", "response.content_part.added",
    "response.content_part.done", "response.output_audio.done", "response.audio.done",
    "response.output_text.delta", "response.output_text.done", "response.text.delta", "response.text.done",
    "response.function_call_arguments.delta",
})


class OpenAIRealtime(RealtimeProvider):
    """`realtime.providers.openai`: apiKey, baseUrl, model, voice, silenceDurationMs, vadThreshold,
    prefixPaddingMs, idleTimeoutMs, transcriptionModel, noiseReduction."""

    name = "openai"
    default_base_url = "wss://api.openai.com"
    default_model = "gpt-realtime"
    api_key_env = "OPENAI_API_KEY"
    handles_barge_in = True

    def problems(self) -> list[str]:
        found = super().problems()
        try:
            self.turn_detection()
        except RealtimeError as exc:
            found.append(str(exc))
        noise = self.setting("noiseReduction")
        if noise is not None and noise not in NOISE_REDUCTION:
            found.append(f"realtime.providers.{self.name}.noiseReduction must be one of {', '.join(NOISE_REDUCTION)}"
                         f" (got {noise!r})")
        return found

    def number(self, key: str, default: float | None, *, integer: bool = True, maximum: float | None = None) -> Any:
        """A numeric setting, checked; a bad value is a RealtimeError naming the setting."""
        value = self.setting(key, default)
        if value is None:
            return None
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or number < 0 or (maximum is not None and number > maximum):
            limit = f"between 0 and {maximum}" if maximum is not None else "≥ 0"
            raise RealtimeError(f"realtime.providers.{self.name}.{key} must be a number {limit} (got {value!r})")
        return number

    def turn_detection(self) -> dict[str, Any]:
        """Server VAD: it ends the caller's turns, answers them, and interrupts the model when the caller talks."""
        detection = {
            "type": "server_vad",
            "threshold": self.number("vadThreshold", DEFAULT_VAD_THRESHOLD, integer=False, maximum=1),
            "prefix_padding_ms": self.number("prefixPaddingMs", DEFAULT_PREFIX_PADDING_MS),
            "silence_duration_ms": self.number("silenceDurationMs", DEFAULT_SILENCE_MS),
            "create_response": True,
            "interrupt_response": True,
        }
        idle = self.number("idleTimeoutMs", None)
        if idle is not None:
            detection["idle_timeout_ms"] = idle
        return detection

    def create_session(self, listener: RealtimeListener, setup: SessionSetup) -> RealtimeSession:
        return OpenAIRealtimeSession(self, listener, setup)


class OpenAIRealtimeSession(RealtimeWebsocketSession):
    """One call's conversation with the model; events are mapped onto the listener."""

    provider: OpenAIRealtime

    def __init__(self, provider: OpenAIRealtime, listener: RealtimeListener, setup: SessionSetup) -> None:
        super().__init__(provider, listener, setup)
        self._transcripts: OrderedDict[str, str] = OrderedDict()  # item id → transcript deltas so far
        self._audio_items: OrderedDict[str, str] = OrderedDict()  # response id → its (last) audio item id
        self._calls_seen: OrderedDict[str, None] = OrderedDict()  # function call ids already reported
        self._call_names: OrderedDict[str, str] = OrderedDict()  # call id → name, from output_item.added
        self._skips: dict[str, int] = {}
        self.errors = 0  # error events the provider sent (each logged)
        # The service refuses a response.create while a response is in progress, so one asked for meanwhile
        # (a tool answer after a "checking" notice, injected speech) waits for that response's end.
        self._responding = False  # response.created seen, its response.done not yet
        self._requested = False  # a response.create sent, its response.created not yet
        self._deferred: deque[dict[str, Any]] = deque()
        self._last_request: dict[str, Any] = {}
        self._request_timer: asyncio.TimerHandle | None = None
        self._requests = itertools.count(1)
        self._stage = ""  # what connect() is waiting for, for its timeout message

    # --- connection --------------------------------------------------------------------------

    def url(self) -> str:
        return f"{self.provider.base_url()}/v1/realtime?model={quote(self.provider.model(), safe='')}"

    def headers(self) -> dict[str, str]:
        # GA only: an OpenAI-Beta header gets the session refused (the beta interface is switched off).
        return {"Authorization": f"Bearer {self.provider.api_key()}"}

    async def connect(self) -> None:
        if not self.provider.configured():
            raise RealtimeError(f"openai realtime: no API key (set realtime.providers.openai.apiKey or {self.provider.api_key_env})")
        self.session_config()  # a bad setting fails here, before any socket is opened
        self._stage = "the WebSocket upgrade"
        try:
            await super().connect()
        except RealtimeError as exc:
            if isinstance(exc.__cause__, TimeoutError):
                raise RealtimeError(f"openai realtime: cannot connect (no answer within {base.CONNECT_TIMEOUT:g} s,"
                                    f" waiting for {self._stage})") from exc
            raise

    def session_config(self) -> dict[str, Any]:
        provider, setup = self.provider, self.setup
        transcription: dict[str, Any] = {"model": str(provider.setting("transcriptionModel", DEFAULT_TRANSCRIPTION_MODEL))}
        if setup.language:
            # The transcriber takes ISO-639-1 ("en"), routes often say "en-US".
            transcription["language"] = setup.language.replace("_", "-").split("-")[0].lower()
        audio_input: dict[str, Any] = {
            "format": dict(ULAW_FORMAT),
            "transcription": transcription,
            "turn_detection": provider.turn_detection(),
        }
        noise = provider.setting("noiseReduction")
        if noise in NOISE_REDUCTION:
            audio_input["noise_reduction"] = {"type": noise}
        return {
            "type": "realtime",
            "instructions": setup.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_input,
                "output": {"format": dict(ULAW_FORMAT),
                           "voice": setup.voice or str(provider.setting("voice", DEFAULT_VOICE))},
            },
            "tools": [{"type": "function", "name": tool.name, "description": tool.description,
                       "parameters": tool.parameters} for tool in setup.tools],
            "tool_choice": "auto",
        }

    async def configure(self, ws: Any, *, reconnect: bool) -> None:
        await self._expect(ws, "session.created")
        if reconnect:
            # A new connection is a new session with no conversation: the setup goes again, the history is gone.
            log.info("openai realtime: reconnected as a new session without the earlier conversation; sending the setup again")
        await ws.send(json.dumps({"type": "session.update", "session": self.session_config()}, separators=(",", ":")))
        await self._expect(ws, "session.updated")
        if reconnect:
            # Nothing is in progress in a new session; what waited for the old one's response goes now.
            self._responding = False
            self._request_answered()
            self._next_response()

    async def _expect(self, ws: Any, wanted: str) -> dict[str, Any]:
        """Read until `wanted` arrives (bounded by the connect timeout); an error event fails the setup."""
        self._stage = wanted
        while True:
            raw = await ws.recv()
            try:
                message = jsonsafe.loads(raw)
            except JsonInputError as exc:
                log.info("openai realtime sent a frame that is not JSON we can use (%s) while %s was awaited; ignored", exc, wanted)
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == wanted:
                return message
            if kind == "error":
                raise RealtimeError(f"openai realtime refused the session setup ({self.redact(error_text(message.get('error')))})")
            log.debug("openai realtime: %s arrived while %s was awaited; ignored", kind, wanted)

    # --- sending -------------------------------------------------------------------------------

    def audio_message(self, ulaw: bytes) -> str:
        return '{"type":"input_audio_buffer.append","audio":"%s"}' % base64.b64encode(ulaw).decode("ascii")

    def send_audio(self, ulaw: bytes) -> None:
        if ulaw:  # appending nothing is pointless, and the server answers it with an error
            super().send_audio(ulaw)

    async def respond(self, instructions: str) -> None:
        self._request_response({"type": "response.create", "response": {"instructions": instructions}})

    async def send_tool_result(self, call: ToolCall, output: dict[str, Any]) -> None:
        self.send_json({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call.call_id,
            "output": json.dumps(output, ensure_ascii=False, default=str)}})
        # The model does not go on by itself after a function output.
        self._request_response({"type": "response.create"})

    def _request_response(self, message: dict[str, Any]) -> None:
        # An event id the service echoes in an error, so a refusal can be told apart from other errors.
        message["event_id"] = f"response_create_{next(self._requests)}"
        self._deferred.append(message)
        if self._responding or self._requested:
            log.debug("openai realtime: a response is in progress; the next one waits for its end")
            return
        self._next_response()

    def _next_response(self) -> None:
        if self._deferred and not (self._responding or self._requested or self._closing):
            self._requested = True
            self._last_request = self._deferred.popleft()
            self.send_json(self._last_request)
            self._request_timer = asyncio.get_running_loop().call_later(RESPONSE_START_WAIT, self._request_lapsed)

    def _request_answered(self) -> None:
        self._requested = False
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_lapsed(self) -> None:
        self._request_timer = None
        if self._requested:
            log.warning("openai realtime: no response started %.0f s after response.create; going on", RESPONSE_START_WAIT)
            self._requested = False
            self._next_response()

    async def truncate(self, item_id: str, played_ms: int) -> None:
        self.send_json({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                        "audio_end_ms": max(0, int(played_ms))})

    async def cancel_response(self) -> None:
        self.send_json({"type": "response.cancel"})

    async def close(self) -> None:
        self._request_answered()
        self._deferred.clear()
        await super().close()

    # --- receiving -----------------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if not isinstance(kind, str):
            self._skip("untyped", "an event without a type")
            return
        if kind in AUDIO_DELTA:
            self._audio_delta(message)
        elif kind in TRANSCRIPT_DELTA:
            item = message.get("item_id")
            delta = message.get("delta")
            if isinstance(item, str) and isinstance(delta, str):
                self._remember(self._transcripts, item, self._transcripts.get(item, "") + delta)
        elif kind in TRANSCRIPT_DONE:
            self._transcript_done(message)
        elif kind == "response.created":
            self._responding = True
            self._request_answered()
        elif kind == "response.done":
            self._responding = False
            self._response_done(message)
            self._next_response()
        elif kind == "input_audio_buffer.speech_started":
            self.listener.on_speech_started()
        elif kind == "input_audio_buffer.speech_stopped":
            self.listener.on_speech_stopped()
        elif kind == "conversation.item.input_audio_transcription.completed":
            text = message.get("transcript")
            if not isinstance(text, str):
                self._skip(kind, "an input transcription without its transcript")
            elif text.strip():
                self.listener.on_input_transcript(text.strip())
        elif kind == "conversation.item.input_audio_transcription.failed":
            log.warning("openai realtime: transcribing the caller's item %s failed (%s)",
                        str(message.get("item_id"))[:64], self.redact(error_text(message.get("error"))))
        elif kind == "response.output_item.added":
            item = message.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                call_id, name = item.get("call_id"), item.get("name")
                if isinstance(call_id, str) and isinstance(name, str):
                    self._remember(self._call_names, call_id, name)
        elif kind == "response.function_call_arguments.done":
            self._tool_call(message)
        elif kind == "error":
            self.errors += 1
            error = message.get("error")
            log.warning("openai realtime error event: %s", self.redact(error_text(error)))
            if self._requested and isinstance(error, dict) and (
                    error.get("event_id") == self._last_request.get("event_id")
                    or error.get("code") == "conversation_already_has_active_response"):
                self._request_answered()
                if error.get("code") == "conversation_already_has_active_response":
                    # The server started a response of its own (the caller's turn) just before ours arrived:
                    # ours goes again once that one is done.
                    self._responding = True
                    self._deferred.appendleft(self._last_request)
                else:
                    self._next_response()
        elif kind not in QUIET_EVENTS:
            log.debug("openai realtime: unhandled event %s", kind[:80])

    def _audio_delta(self, message: dict[str, Any]) -> None:
        item, delta = message.get("item_id"), message.get("delta")
        if not isinstance(item, str) or not item or not isinstance(delta, str):
            self._skip("audio", "an audio delta without its item_id or delta")
            return
        try:
            ulaw = base64.b64decode(delta, validate=True)
        except (binascii.Error, ValueError):
            self._skip("audio-base64", "an audio delta that is not valid base64")
            return
        response = message.get("response_id")
        if isinstance(response, str):
            self._remember(self._audio_items, response, item)
        if ulaw:
            self.listener.on_audio(ulaw, item)

    def _transcript_done(self, message: dict[str, Any]) -> None:
        item = message.get("item_id")
        if not isinstance(item, str) or not item:
            self._skip("transcript", "an output transcript without its item_id")
            return
        so_far = self._transcripts.pop(item, "")
        text = message.get("transcript")
        text = text if isinstance(text, str) else so_far
        if text.strip():
            self.listener.on_output_transcript(item, text.strip())

    def _response_done(self, message: dict[str, Any]) -> None:
        response = message.get("response")
        if not isinstance(response, dict):
            self._skip("response.done", "a response.done without its response")
            return
        status = response.get("status")
        status = status if isinstance(status, str) and status else "completed"
        item = None
        response_id = response.get("id")
        if isinstance(response_id, str):
            item = self._audio_items.pop(response_id, None)
        if item is None:
            # Nothing streamed (or no ids on the deltas): the response's spoken message item, if any.
            for output in response.get("output") or ():
                if isinstance(output, dict) and output.get("type") == "message" and isinstance(output.get("id"), str):
                    item = output["id"]
        so_far = self._transcripts.pop(item, "") if item is not None else ""
        if so_far.strip():
            # Cut off before its transcript was done (a barge-in cancelled it): the words made so far
            # are the item's text, which the bridge cuts to what the caller heard.
            self.listener.on_output_transcript(item, so_far.strip())
        if status not in ("completed", "cancelled"):
            details = response.get("status_details")
            reason = details.get("reason") or details.get("type") if isinstance(details, dict) else None
            error = details.get("error") if isinstance(details, dict) else None
            log.info("openai realtime: response %s ended %s (%s)", str(response_id)[:64], status,
                     self.redact(error_text(error)) if error else reason or "no reason given")
        self.listener.on_response_done(item, status)

    def _tool_call(self, message: dict[str, Any]) -> None:
        call_id = message.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            self._skip("tool", "a function call without its call_id")
            return
        name = message.get("name")
        if not isinstance(name, str) or not name:
            name = self._call_names.get(call_id)
        if not name:
            # Still reported: the model waits for an output for this call id, so it gets an error result.
            self._skip("tool", "a function call without its name")
            name = ""
        if call_id in self._calls_seen:
            return
        self._remember(self._calls_seen, call_id, None)
        arguments = message.get("arguments")
        if not isinstance(arguments, str):
            # The bridge parses the text itself (and answers bad JSON with an error result).
            arguments = "{}" if arguments is None else json.dumps(arguments)
        self.listener.on_tool_call(ToolCall(call_id=call_id, name=name, arguments=arguments))

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _remember(table: OrderedDict, key: str, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > MAX_TRACKED_ITEMS:
            table.popitem(last=False)

    def _skip(self, kind: str, what: str) -> None:
        count = self._skips.get(kind, 0) + 1
        self._skips[kind] = count
        if count <= LOGGED_SKIPS or count % SKIP_LOG_EVERY == 0:
            log.warning("openai realtime sent %s; skipped (%d so far)", what, count)


def error_text(error: Any) -> str:
    """An error payload as one line: type, code, message and param, each cut short."""
    if not isinstance(error, dict):
        return redact(str(error or "unspecified error"))[:300]
    # Redacted before each part is cut, so no credential is left half masked.
    parts = [f"{key} {redact(str(error[key]))[:200]}" for key in ("type", "code", "message", "param") if error.get(key)]
    return "; ".join(parts) or "unspecified error"
