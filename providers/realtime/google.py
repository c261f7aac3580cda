"""Gemini Live (BidiGenerateContent over WebSocket) as a realtime voice provider, without the SDK."""
from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from core import jsonsafe
from core.audio import AudioFormat, TelephonyEncoder, ulaw_to_samples
from core.jsonsafe import JsonInputError
from core.redact import remember_secret

from .base import (
    RECOVERABLE_CLOSE_CODES,
    RealtimeError,
    RealtimeListener,
    RealtimeProvider,
    RealtimeSession,
    RealtimeWebsocketSession,
    SessionSetup,
    ToolCall,
    ToolSpec,
)

log = logging.getLogger(__name__)

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
INPUT_RATE = 16000
OUTPUT_RATE = 24000
INPUT_MIME = f"audio/pcm;rate={INPUT_RATE}"
DEFAULT_VOICE = "Kore"
API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

# Close codes Gemini uses: 1007 bad argument (setup, expired key, bad resumption handle) and 1008
# policy are final, a new connection would be refused the same way; 1011 is an internal error or
# "Deadline expired" (worth resuming) unless the reason says RESOURCE_EXHAUSTED: a quota or the
# concurrency limit, which a few seconds of retries will not lift, so the call ends cleanly instead
# of holding the caller in silence.
FINAL_CLOSE_CODES = frozenset({1007, 1008})
EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED|quota", re.IGNORECASE)

# JSON Schema → Gemini Schema: type names, and the keys Gemini's Schema object knows (it refuses
# others, such as additionalProperties or $schema, with close 1007).
SCHEMA_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
                "array": "ARRAY", "object": "OBJECT"}
SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
               "minItems", "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "anyOf",
               "propertyOrdering", "default", "example", "minProperties", "maxProperties"}


class _Upsampler:
    """8 kHz → 16 kHz PCM16 with a short polyphase windowed-sinc filter that keeps its history.

    soxr's streams hold audio back in blocks (about 100 ms at its HQ setting, 60 ms at LQ) before
    releasing any, more than a caller's turn can afford; its QQ setting passes 20 ms frames straight
    through but leaves images near 3 kHz only 10 dB down. These 48 taps pass the telephone band
    (within 1 dB to 3.4 kHz), keep images over 55 dB down, delay 1.5 ms and cost about 10 µs a frame.
    """

    TAPS = 48

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        cutoff = 3800 / INPUT_RATE
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(self.TAPS, 8.0)
        taps *= 2 / taps.sum()  # gain 2: half the interpolated samples are the zeros stuffed in
        self._even, self._odd = taps[0::2].copy(), taps[1::2].copy()
        self._history = np.zeros(len(self._even) - 1)

    def process(self, samples: np.ndarray) -> bytes:
        x = np.concatenate((self._history, samples))
        self._history = x[len(x) - len(self._history):]
        out = np.empty(2 * len(samples))
        out[0::2] = np.convolve(x, self._even, "valid")
        out[1::2] = np.convolve(x, self._odd, "valid")
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()


def gemini_schema(schema: Any, where: str = "parameters") -> Any:
    """A JSON Schema (as tools are declared) in Gemini's Schema dialect."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            log.debug("google realtime: %s.%s is not part of Gemini's schema; left out", where, key)
            continue
        if key == "type":
            names = value if isinstance(value, list) else [value]
            if "null" in names:
                out["nullable"] = True
            names = [n for n in names if n != "null"]
            if names:
                out["type"] = SCHEMA_TYPES.get(str(names[0]).lower(), str(names[0]).upper())
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value, f"{where}[]")
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [gemini_schema(sub, where) for sub in value]
        elif key == "enum" and isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "STRING"
    return out


def function_declaration(tool: ToolSpec) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": tool.name, "description": tool.description}
    parameters = gemini_schema(tool.parameters or {}, f"tools.{tool.name}")
    if parameters.get("properties"):
        declaration["parameters"] = parameters
    # Newer Live models call functions asynchronously unless told otherwise; the bridge answers
    # each call and expects the model to wait for it.
    declaration["behavior"] = "BLOCKING"
    return declaration


class GoogleRealtimeSession(RealtimeWebsocketSession):
    """One call's Gemini Live session.

    What goes over the socket:

    - first a `setup` message: `models/<model>`, audio responses with the configured prebuilt voice
      (and the call's language), the system instruction, the tools as function declarations (JSON
      Schema types turned into Gemini's upper-case names), server voice detection with barge-in
      (`START_OF_ACTIVITY_INTERRUPTS`; `silenceDurationMs`, `prefixPaddingMs`, `startSensitivity`,
      `endSensitivity` from the provider block), transcription of both sides, session resumption
      (with the newest handle after a reconnect) and sliding-window context compression; nothing else
      is sent until `setupComplete` comes back;
    - the caller's audio as `realtimeInput.audio`: 8 kHz μ-law → PCM16 16 kHz, one message per 20 ms
      frame, so nothing waits for a batch;
    - `clientContent` (a user text turn with `turnComplete`) for `respond()`, `toolResponse` for tool
      results.

    What comes back (binary or text frames, both JSON): model audio as PCM16 24 kHz, resampled here to
    8 kHz μ-law; transcripts of both sides; `interrupted` (the server's own barge-in); `toolCall`;
    `sessionResumptionUpdate`; `goAway`. Gemini reports errors only as close codes with a reason.

    Gemini sends no "the caller stopped talking" event by default: the model simply starts answering.
    `on_speech_stopped()` is therefore called when the caller's input transcription says `finished`,
    or else when the first output of a model turn (audio, transcript or tool call) arrives after the
    caller was heard, so a turn's measured latency starts there at the latest.
    """

    def __init__(self, provider: GoogleRealtime, listener: RealtimeListener, setup: SessionSetup) -> None:
        super().__init__(provider, listener, setup)
        # Built once per session: each carries its filter state from one frame to the next.
        self._upsampler = _Upsampler()
        self._downsampler = TelephonyEncoder(AudioFormat("pcm16", OUTPUT_RATE))
        self.handle_token: str | None = None  # the newest session-resumption handle
        self._going_away = False
        self._turns = 0
        self._turn: str | None = None  # the model turn being spoken
        self._output_text: list[str] = []
        self._input_text: list[str] = []
        self._caller_heard = False  # caller input since the model last spoke: a speech stop is due
        self._speech_stop_sent = False
        # respond() was sent and its turn has not begun: an `interrupted` now is the text turn
        # ending the answer in progress (Gemini 3.x does that), not the caller talking.
        self._responding = False

    # --- connection ---------------------------------------------------------------------

    def url(self) -> str:
        return self.provider.base_url() + PATH

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.provider.api_key() or ""}

    def setup_message(self) -> dict[str, Any]:
        provider, setup = self.provider, self.setup
        speech: dict[str, Any] = {"voiceConfig": {"prebuiltVoiceConfig": {
            "voiceName": setup.voice or provider.setting("voice") or DEFAULT_VOICE}}}
        if setup.language:
            speech["languageCode"] = setup.language
        generation: dict[str, Any] = {"responseModalities": ["AUDIO"], "speechConfig": speech}
        temperature = provider.setting("temperature")
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            generation["temperature"] = temperature
        message: dict[str, Any] = {
            "model": _model_name(provider.model()),
            "generationConfig": generation,
            "systemInstruction": {"parts": [{"text": setup.instructions}]},
            "realtimeInputConfig": {
                "automaticActivityDetection": self._activity_detection(),
                "activityHandling": "START_OF_ACTIVITY_INTERRUPTS",
            },
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
        }
        if setup.tools:
            message["tools"] = [{"functionDeclarations": [function_declaration(tool) for tool in setup.tools]}]
        if provider.setting("sessionResumption", True) is not False:
            message["sessionResumption"] = {"handle": self.handle_token}
        if provider.setting("contextWindowCompression", True) is not False:
            message["contextWindowCompression"] = {"slidingWindow": {}}
        return {"setup": message}

    def _activity_detection(self) -> dict[str, Any]:
        provider = self.provider
        detection: dict[str, Any] = {"disabled": False}
        for key in ("silenceDurationMs", "prefixPaddingMs"):
            value = provider.setting(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                log.warning("google realtime: realtime.providers.google.%s must be a number of ms (got %r); ignored",
                            key, value)
                continue
            detection[key] = int(value)
        for key, field, prefix in (("startSensitivity", "startOfSpeechSensitivity", "START"),
                                   ("endSensitivity", "endOfSpeechSensitivity", "END")):
            value = provider.setting(key)
            if value is None:
                continue
            level = _sensitivity(value, prefix)
            if level is None:
                log.warning("google realtime: realtime.providers.google.%s must be high or low (got %r); ignored",
                            key, value)
                continue
            detection[field] = level
        return detection

    async def configure(self, ws: Any, *, reconnect: bool) -> None:
        self._going_away = False
        if reconnect:
            self._end_turn("cancelled")  # whatever was being said died with the old socket
        await ws.send(json.dumps(self.setup_message(), separators=(",", ":")))
        # Bounded by the connect timeout around this call; anything before setupComplete is noise.
        try:
            async for raw in ws:
                message = _parse(raw)
                if message is None:
                    log.info("google realtime sent a malformed frame before setupComplete; ignored")
                    continue
                if "setupComplete" in message:
                    return
                log.info("google realtime sent %s before setupComplete; ignored", _kinds(message))
        except ConnectionClosed:
            pass
        # The socket closed instead: say why (Gemini gives its errors only as close codes and reasons).
        code, reason = ws.close_code, self.redact(ws.close_reason or "")
        if reconnect and code == 1007 and self.handle_token:
            # A refused resumption handle would be refused on every retry: start afresh instead.
            log.warning("google realtime: resuming was refused (%s %s); the next attempt starts a new session",
                        code, reason)
            self.handle_token = None
        raise RealtimeError(f"google realtime: the provider closed the session during setup ({code} {reason})".rstrip())

    def recoverable(self, code: int | None, reason: str) -> bool:
        reason = self.redact(reason)
        if self._going_away:
            log.info("google realtime: connection closed after goAway (%s %s); resuming", code, reason)
            return True
        if code in FINAL_CLOSE_CODES or (code == 1011 and EXHAUSTED.search(reason)):
            log.warning("google realtime: the provider closed the session (%s %s)", code, reason)
            return False
        if code == 1000:
            log.info("google realtime: the provider ended the session (1000 %s)", reason)
            return False
        log.info("google realtime: connection closed (%s %s)", code, reason)
        return code is None or code in RECOVERABLE_CLOSE_CODES

    # --- sending ------------------------------------------------------------------------

    def send_audio(self, ulaw: bytes) -> None:
        if self._closing or not ulaw:
            return
        # Converted here, not when sent: a frame resent after a reconnect must not pass the filter twice.
        super().send_audio(self._upsampler.process(ulaw_to_samples(ulaw)))

    def audio_message(self, pcm: bytes) -> str:
        return ('{"realtimeInput":{"audio":{"mimeType":"' + INPUT_MIME + '","data":"'
                + base64.b64encode(pcm).decode("ascii") + '"}}}')

    async def respond(self, instructions: str) -> None:
        # A user text turn with turnComplete starts generation now (and ends one in progress).
        self._responding = True
        self.send_json({"clientContent": {"turns": [{"role": "user", "parts": [{"text": instructions}]}],
                                          "turnComplete": True}})

    async def send_tool_result(self, call: ToolCall, output: dict[str, Any]) -> None:
        if set(output) == {"error"}:
            response: dict[str, Any] = {"error": output["error"]}
        else:
            response = {"output": output}
        self.send_json({"toolResponse": {"functionResponses": [
            {"id": call.call_id, "name": call.name, "response": response}]}})

    async def truncate(self, item_id: str, played_ms: int) -> None:
        """Nothing to send: Gemini keeps only what it had already sent of an interrupted turn."""

    async def cancel_response(self) -> None:
        """Nothing to send: Gemini has no cancel message; its own voice detection interrupts the
        answer when the caller talks (START_OF_ACTIVITY_INTERRUPTS), and `respond()` ends any
        answer in progress."""

    # --- receiving ----------------------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        content = message.get("serverContent")
        if content is not None:
            if isinstance(content, dict):
                self._server_content(content)
            else:
                log.info("google realtime: serverContent is not an object; ignored")
        if "toolCall" in message:
            self._tool_call(message["toolCall"])
        if "toolCallCancellation" in message:
            ids = (message["toolCallCancellation"] or {}).get("ids") if isinstance(message["toolCallCancellation"], dict) else None
            # The bridge has no way to take a call back; its result will simply be ignored by the model.
            log.info("google realtime: the model cancelled tool call(s) %s", ids)
        if "sessionResumptionUpdate" in message:
            update = message["sessionResumptionUpdate"]
            if isinstance(update, dict) and update.get("resumable") and isinstance(update.get("newHandle"), str) \
                    and update["newHandle"]:
                self.handle_token = update["newHandle"]
        if "goAway" in message:
            going = message["goAway"]
            left = going.get("timeLeft") if isinstance(going, dict) else None
            log.info("google realtime: goAway (time left %s); will resume on a new connection", left)
            self._going_away = True

    def _server_content(self, content: dict[str, Any]) -> None:
        heard = content.get("inputTranscription")
        if isinstance(heard, dict):
            text = heard.get("text")
            if isinstance(text, str) and text:
                self._input_text.append(text)
                self._caller_heard = True
            if heard.get("finished"):
                self._speech_stopped()
                self._flush_input()
        turn = content.get("modelTurn")
        if isinstance(turn, dict):
            parts = turn.get("parts")
            for part in parts if isinstance(parts, list) else ():
                data = part.get("inlineData") if isinstance(part, dict) else None
                if isinstance(data, dict):
                    self._model_audio(data)
        spoken = content.get("outputTranscription")
        if isinstance(spoken, dict) and isinstance(spoken.get("text"), str) and spoken["text"]:
            self._begin_turn()
            self._output_text.append(spoken["text"])
        if content.get("interrupted"):
            if self._responding:
                log.debug("google realtime: the answer in progress gave way to a text turn")
            else:
                # The server heard the caller and already stopped talking: barge-in.
                self.listener.on_speech_started()
                self._caller_heard = True
                self._speech_stop_sent = False
            self._end_turn("cancelled")
        if content.get("turnComplete"):
            self._end_turn("completed")

    def _model_audio(self, data: dict[str, Any]) -> None:
        mime = str(data.get("mimeType") or "audio/pcm;rate=24000")
        if not mime.startswith("audio/pcm"):
            log.info("google realtime: model sent %s, not PCM audio; ignored", mime[:60])
            return
        if f"rate={OUTPUT_RATE}" not in mime.replace(" ", "") and "rate=" in mime:
            log.info("google realtime: model audio at %s; only 24 kHz is expected; ignored", mime[:60])
            return
        try:
            pcm = base64.b64decode(data.get("data") or "", validate=True)
        except (ValueError, TypeError):
            log.info("google realtime: model audio is not base64; ignored")
            return
        if not pcm:
            return
        item = self._begin_turn()
        ulaw = self._downsampler.encode(pcm)
        if ulaw:
            self.listener.on_audio(ulaw, item)

    def _tool_call(self, body: Any) -> None:
        calls = body.get("functionCalls") if isinstance(body, dict) else None
        if not isinstance(calls, list):
            log.info("google realtime: toolCall without functionCalls; ignored")
            return
        self._model_answering()
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                log.info("google realtime: a function call without a name; ignored")
                continue
            call_id = call.get("id")
            args = call.get("args")
            try:
                arguments = json.dumps({} if args is None else args)
            except (TypeError, ValueError):
                arguments = "{}"
            self.listener.on_tool_call(ToolCall(str(call_id or ""), call["name"], arguments))

    # --- turns --------------------------------------------------------------------------

    def _begin_turn(self) -> str:
        if self._turn is None:
            self._responding = False
            self._model_answering()
            self._turns += 1
            self._turn = f"turn-{self._turns}"
        return self._turn

    def _model_answering(self) -> None:
        """The model started to answer: the caller's turn is over."""
        if self._caller_heard:
            self._speech_stopped()
        self._flush_input()
        self._caller_heard = False
        self._speech_stop_sent = False

    def _speech_stopped(self) -> None:
        if not self._speech_stop_sent:
            self._speech_stop_sent = True
            self.listener.on_speech_stopped()

    def _flush_input(self) -> None:
        text = "".join(self._input_text).strip()
        self._input_text.clear()
        if text:
            self.listener.on_input_transcript(" ".join(text.split()))

    def _end_turn(self, status: str) -> None:
        item, self._turn = self._turn, None
        tail = self._downsampler.flush()  # also resets the filter for the next turn
        if item is None:
            return
        if status == "completed" and tail:
            self.listener.on_audio(tail, item)
        if status == "completed" and self._input_text:
            # Transcription is not ordered with the audio: caller text that came in during a turn
            # the caller did not interrupt is the late end of what this turn answered.
            self._flush_input()
            self._caller_heard = False
        text = "".join(self._output_text).strip()
        self._output_text.clear()
        if text:
            self.listener.on_output_transcript(item, " ".join(text.split()))
        self.listener.on_response_done(item, status)


class GoogleRealtime(RealtimeProvider):
    name = "google"
    default_base_url = "wss://generativelanguage.googleapis.com"
    default_model = "gemini-3.1-flash-live-preview"
    api_key_env = API_KEY_ENVS[0]
    # A text turn ends the model's turn, and with it a BLOCKING function call still waiting for its
    # response: the consult's answer would be refused. The model waits for it in silence instead.
    speaks_while_tool_runs = False

    def api_key(self) -> str | None:
        secret = self.settings.get("apiKey")
        if secret not in (None, ""):
            key = secret.reveal() if hasattr(secret, "reveal") else str(secret)
            remember_secret(key)
            return key
        for env in API_KEY_ENVS:
            if self.environ.get(env):
                remember_secret(self.environ[env])
                return self.environ[env]
        return None

    def problems(self) -> list[str]:
        if not self.api_key():
            return [f"realtime provider google has no API key (realtime.providers.google.apiKey, "
                    f"or {' or '.join(API_KEY_ENVS)})"]
        return []

    def create_session(self, listener: RealtimeListener, setup: SessionSetup) -> RealtimeSession:
        return GoogleRealtimeSession(self, listener, setup)


def _model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


def _sensitivity(value: Any, prefix: str) -> str | None:
    text = str(value).strip().upper()
    if text in ("HIGH", "LOW"):
        return f"{prefix}_SENSITIVITY_{text}"
    if text in (f"{prefix}_SENSITIVITY_HIGH", f"{prefix}_SENSITIVITY_LOW", f"{prefix}_SENSITIVITY_UNSPECIFIED"):
        return text
    return None


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    try:
        message = jsonsafe.loads(raw)
    except JsonInputError:
        return None
    return message if isinstance(message, dict) else None


def _kinds(message: dict[str, Any]) -> str:
    return ",".join(sorted(message))[:80] or "an empty message"
