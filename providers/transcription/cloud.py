"""Pieces the cloud transcription sessions share: key check, setup handshakes, URLs, utterance text, gateway-side turns."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, ClassVar
from urllib.parse import urlencode

from core import jsonsafe
from core.jsonsafe import JsonInputError

from .base import TranscriptionError, TranscriptionProvider, WebsocketSession
from .vad import DEFAULT_SILENCE_MS, DEFAULT_THRESHOLD, EnergyVad

log = logging.getLogger(__name__)

class _Marker(bytes):
    """A queue entry that is not audio; recognised by identity."""


# Queued after the last frame of a turn by GatewayTurnsMixin; audio_message() turns it into the
# provider's end-of-turn message, so it reaches the socket right after that turn's audio.
TURN_END = _Marker()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def number_setting(provider: TranscriptionProvider, key: str, default: float, *,
                   minimum: float = 0, integer: bool = True) -> Any:
    """A numeric setting, checked; a bad value is a TranscriptionError naming the setting."""
    value = provider.setting(key, default)
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise TranscriptionError(f"{provider.name} transcription: streaming.providers.{provider.name}.{key}"
                                 f" must be a number ≥ {minimum} (got {value!r})")
    return number


def describe_error(error: Any) -> str:
    """A provider's error payload (an object with message/code, or plain text) as one line."""
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    return str(error or "unspecified error")


def flag(value: Any) -> str:
    """A boolean as query parameters spell it."""
    if isinstance(value, str):
        return "false" if value.strip().lower() in ("false", "0", "no", "off") else "true"
    return "true" if value else "false"


def with_query(url: str, params: dict[str, Any]) -> str:
    """`url` plus `params`, leaving out None values."""
    query = urlencode({key: value for key, value in params.items() if value is not None})
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


def websocket_url(url: str) -> str:
    """An http(s) URL as the ws(s) URL of the same place."""
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            return secure + url[len(plain):]
    return url


class Utterance:
    """What the caller said so far in this turn: locked segments, the newest interim text, and
    whether the turn's speech start was reported."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.locked: list[str] = []
        self.interim = ""
        self.announced = False

    def hear(self, text: str) -> str:
        """An interim hypothesis for the unlocked tail; returns the whole utterance so far."""
        self.interim = text.strip()
        return self.text()

    def lock(self, text: str) -> str:
        """A segment the provider will not revise; returns the whole utterance so far."""
        text = text.strip()
        if text:
            self.locked.append(text)
        self.interim = ""
        return self.text()

    def text(self) -> str:
        return " ".join(part for part in (*self.locked, self.interim) if part)

    def take(self) -> str:
        """The locked text, and start a new utterance (an unlocked interim is superseded by its final)."""
        text = " ".join(self.locked)
        self.reset()
        return text


class CloudSession(WebsocketSession):
    """A WebsocketSession with the helpers every cloud protocol uses."""

    # The JSON field that names a message's kind.
    type_key: ClassVar[str] = "type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gave_up = False
        self._closer: asyncio.Task | None = None

    async def connect(self) -> None:
        if not self.provider.configured():
            raise TranscriptionError(
                f"{self.provider.name} transcription: no API key (set streaming.providers.{self.provider.name}.apiKey"
                f" or {self.provider.api_key_env})")
        await super().connect()

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.provider.api_key()}"}

    def endpoint(self, path: str, params: dict[str, Any]) -> str:
        return with_query(self.provider.base_url() + path, params)

    def send_audio(self, ulaw: bytes) -> None:
        # An empty chunk carries nothing, and providers may take an empty audio message as "end of stream".
        if ulaw or ulaw is TURN_END:
            super().send_audio(ulaw)

    def audio_message(self, ulaw: bytes) -> str | bytes:
        return self.turn_end_message() if ulaw is TURN_END else self.chunk_message(ulaw)

    def chunk_message(self, ulaw: bytes) -> str | bytes:
        """The frame that carries one chunk of caller audio."""
        raise NotImplementedError

    def turn_end_message(self) -> str:
        """The message that ends a turn (only for sessions that find turns themselves)."""
        raise NotImplementedError

    def error_text(self, message: dict[str, Any]) -> str | None:
        """What went wrong, if `message` is the provider's error report."""
        if message.get(self.type_key) != "error":
            return None
        return describe_error(message.get("error") or message.get("message"))

    async def expect(self, ws: Any, wanted: str) -> dict[str, Any]:
        """Read until the `wanted` message arrives; an error message fails the setup."""
        while True:
            raw = await ws.recv()
            try:
                message = jsonsafe.loads(raw)
            except JsonInputError as exc:
                log.info("%s transcription sent a frame that is not JSON we can use (%s); ignored", self.provider.name, exc)
                continue
            if not isinstance(message, dict):
                continue
            if message.get(self.type_key) == wanted:
                return message
            problem = self.error_text(message)
            if problem:
                raise TranscriptionError(f"{self.provider.name} transcription: setup refused ({problem})")

    async def send_json(self, ws: Any, message: dict[str, Any]) -> None:
        await ws.send(json.dumps(message))

    def report_speech(self, utterance: Utterance) -> None:
        """Report the caller's speech start once per utterance."""
        if not utterance.announced:
            utterance.announced = True
            self.listener.on_speech_started()

    def report_final(self, utterance: Utterance) -> None:
        text = utterance.take()
        if text:
            self.listener.on_final(text)

    def give_up(self, problem: str) -> None:
        """A failure that reconnecting cannot cure: tell the listener once and close the session."""
        if self._gave_up:
            return
        self._gave_up = True
        log.warning("%s transcription: %s; giving up", self.provider.name, problem)
        self.listener.on_error(TranscriptionError(f"{self.provider.name} transcription: {problem}"))
        # Closing from a separate task: this runs inside the receive task that close() cancels.
        self._closer = asyncio.get_running_loop().create_task(self.close())


class GatewayTurnsMixin:
    """For models without turn detection: an EnergyVad on the caller's audio reports speech
    starts and queues TURN_END after each turn (settings silenceDurationMs, energyThreshold)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        provider = self.provider
        self.vad = EnergyVad(
            silence_ms=number_setting(provider, "silenceDurationMs", DEFAULT_SILENCE_MS, minimum=1),
            threshold=number_setting(provider, "energyThreshold", DEFAULT_THRESHOLD, minimum=1, integer=False),
        )

    def send_audio(self, ulaw: bytes) -> None:
        # Detection runs as audio arrives, not as it is sent, so barge-in works while reconnecting.
        if self._closing or not ulaw:
            return
        event = self.vad.feed(ulaw)
        super().send_audio(ulaw)
        if event == "start":
            self.turn_started()
            self.listener.on_speech_started()
        elif event == "end":
            super().send_audio(TURN_END)

    def turn_started(self) -> None:
        """Hook: the gateway VAD heard a new turn begin."""
