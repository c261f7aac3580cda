"""Mistral realtime transcription (Voxtral) as a streaming transcription provider.

The model streams text but finds no turn ends, so the gateway's energy VAD does: it reports the
speech start, and at the end of speech the session sends `input_audio.flush`. The turn's final
text is then delivered
- at once when the server sends `transcription.segment` or `transcription.done` after the flush;
- otherwise once no new text arrived for finalSettleMs (default 600) after the flush or the last
  delta; if no text came at all, the session keeps waiting up to 3 s, then drops the empty turn.
Text that arrives outside a turn (late words after the final was delivered) is dropped when the
next turn starts; a turn that starts while the previous one still waits delivers that one first.
No language is sent: the 2602 model detects it, and the session's `language` field is not in the SDK.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from .base import TranscriptListener, TranscriptionProvider, TranscriptionSession
from .cloud import CloudSession, GatewayTurnsMixin, b64, number_setting

log = logging.getLogger(__name__)

DEFAULT_MODEL = "voxtral-mini-transcribe-realtime-2602"
DEFAULT_SETTLE_MS = 600
MAX_TURN_WAIT_S = 3.0
MAX_APPEND_BYTES = 262_144


class MistralSession(GatewayTurnsMixin, CloudSession):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settle_s = number_setting(self.provider, "finalSettleMs", DEFAULT_SETTLE_MS, minimum=1) / 1000
        self._text = ""
        self._flushed_at: float | None = None  # set while a flushed turn waits for its text
        self._timer: asyncio.TimerHandle | None = None

    def url(self) -> str:
        return self.endpoint("/v1/audio/transcriptions/realtime", {"model": self.provider.setting("model", DEFAULT_MODEL)})

    def headers(self) -> dict[str, str]:
        return self.bearer()

    async def configure(self, ws: Any) -> None:
        await self.expect(ws, "session.created")
        session: dict[str, Any] = {"audio_format": {"encoding": "pcm_mulaw", "sample_rate": 8000}}
        if self.provider.setting("targetStreamingDelayMs") is not None:
            session["target_streaming_delay_ms"] = number_setting(self.provider, "targetStreamingDelayMs", 0)
        # Must precede the first audio: the server freezes the settings once audio flowed.
        await self.send_json(ws, {"type": "session.update", "session": session})
        await self.expect(ws, "session.updated")

    def send_audio(self, ulaw: bytes) -> None:
        for start in range(0, len(ulaw), MAX_APPEND_BYTES):
            super().send_audio(ulaw[start:start + MAX_APPEND_BYTES])

    def chunk_message(self, ulaw: bytes) -> str:
        return json.dumps({"type": "input_audio.append", "audio": b64(ulaw)})

    def turn_end_message(self) -> str:
        # Runs as the flush is really sent, so the settle time counts from then.
        self._flushed_at = asyncio.get_running_loop().time()
        self._arm()
        return json.dumps({"type": "input_audio.flush"})

    def turn_started(self) -> None:
        if self._flushed_at is not None:
            self._deliver()
        self._text = ""

    async def finish(self, ws: Any) -> bool:
        await self.send_json(ws, {"type": "input_audio.end"})
        return True  # the last results come back before the server closes

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "transcription.text.delta":
            self._text += str(message.get("text") or "")
            if self._text.strip():
                self.listener.on_partial(self._text.strip())
            if self._flushed_at is not None:
                self._arm()
        elif kind in ("transcription.segment", "transcription.done"):
            if self._flushed_at is not None:
                self._deliver()
        elif kind == "error":
            log.warning("mistral transcription error: %s", self.error_text(message))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.settle_s, self._settled)

    def _settled(self) -> None:
        self._timer = None
        if self._flushed_at is None:
            return
        waited = asyncio.get_running_loop().time() - self._flushed_at
        if self._text.strip() or waited >= MAX_TURN_WAIT_S:
            self._deliver()
        else:
            self._arm()

    def _deliver(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flushed_at = None
        text, self._text = self._text.strip(), ""
        if text:
            self.listener.on_final(text)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().close()


class MistralTranscription(TranscriptionProvider):
    name = "mistral"
    api_key_env = "MISTRAL_API_KEY"
    default_base_url = "wss://api.mistral.ai"

    def create_session(self, listener: TranscriptListener, *, language: str | None = None) -> TranscriptionSession:
        return MistralSession(self, listener, language=language)
