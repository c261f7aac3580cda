"""Plivo audio stream frames: start/media/dtmf/playedStream/clearedAudio in, playAudio/checkpoint/clearAudio out."""
from __future__ import annotations

import base64
import json
import re
from typing import Any

from ..media import (
    FrameError,
    MediaCodec,
    OutboundFrames,
    StreamCleared,
    StreamMark,
    StreamStart,
    StreamStop,
    check_mulaw,
    dtmf_frame,
    media_frame,
    optional_dict,
    optional_str,
    require_dict,
    string_parameters,
)

TOKEN_HEADER = "token"
# The <Stream> extraHeaders attribute takes "k=v,k2=v2"; Plivo's start-frame example shows "k=v;k2=v2".
_HEADER_SEPARATORS = re.compile(r"[;,]")
_PLAY_AUDIO_PREFIX = '{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"'


def header_value(text: str) -> str:
    """`text` as an extraHeaders value: Plivo allows only [A-Za-z0-9] there, so it travels hex-encoded."""
    return text.encode("utf-8").hex()


def extra_headers(**headers: str) -> str:
    """The extraHeaders attribute carrying `headers` (values encoded with header_value)."""
    return ",".join(f"{name}={header_value(value)}" for name, value in headers.items())


def parse_extra_headers(value: Any) -> dict[str, str]:
    """The start frame's `extra_headers` ("k=v;k2=v2" or "k=v,k2=v2") as a dict, values as sent."""
    if value is None or value == "" or isinstance(value, dict):
        return string_parameters(value, "extra_headers")
    if not isinstance(value, str):
        raise FrameError("extra_headers must be a string")
    headers: dict[str, str] = {}
    for item in _HEADER_SEPARATORS.split(value):
        name, _, header = item.partition("=")
        if name.strip():
            headers[name.strip()] = header.strip()
    return headers


def _token(headers: dict[str, str]) -> str | None:
    encoded = headers.get(TOKEN_HEADER)
    if not encoded:
        return None
    try:
        return bytes.fromhex(encoded).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise FrameError("extra_headers token is not hex-encoded text") from None


class PlivoFrames(OutboundFrames):
    """Frames for a <Stream bidirectional="true" contentType="audio/x-mulaw;rate=8000">."""

    def media(self, ulaw: bytes) -> str:
        return _PLAY_AUDIO_PREFIX + base64.b64encode(ulaw).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return json.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def clear(self) -> str:
        return '{"event":"clearAudio","streamId":' + self._quoted_id + "}"


class PlivoMediaCodec(MediaCodec):
    carrier = "plivo"

    def parse(self, message: dict[str, Any]):
        event = message.get("event")
        if event == "media":
            return media_frame(message, sequence_key="sequenceNumber")
        if event == "start":
            start = require_dict(message, "start")
            stream_id = optional_str(start.get("streamId") or message.get("streamId"), "start.streamId")
            if not stream_id:
                raise FrameError("start without streamId")
            fmt = optional_dict(start, "mediaFormat", "start.mediaFormat")
            check_mulaw(fmt.get("encoding"), fmt.get("sampleRate"))
            headers = parse_extra_headers(message.get("extra_headers"))
            return StreamStart(
                stream_id=stream_id,
                provider_call_id=optional_str(start.get("callId"), "start.callId"),
                token=_token(headers),
                parameters=headers,
            )
        # Plivo acknowledges a checkpoint by name once the audio before it played ("played" in older docs).
        if event in ("playedStream", "played"):
            name = optional_str(message.get("name"), f"{event}.name")
            if not name:
                raise FrameError(f"{event} without a name")
            return StreamMark(name)
        if event == "dtmf":
            return dtmf_frame(message)
        if event == "clearedAudio":
            return StreamCleared()
        if event == "stop":
            # Not documented (Plivo closes the socket instead), but some deployments send it.
            return StreamStop()
        raise FrameError(f"unknown event {event!r}")

    def outbound(self, stream_id: str) -> PlivoFrames:
        return PlivoFrames(stream_id)
