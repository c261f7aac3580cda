"""Telnyx media streaming frames: connected, start, media, mark, dtmf, error, stop; media/mark/clear out."""
from __future__ import annotations

import base64
import json
from typing import Any

from ..media import (
    FrameError,
    MediaCodec,
    OutboundFrames,
    StreamConnected,
    StreamOther,
    StreamStart,
    StreamStop,
    check_mulaw,
    dtmf_frame,
    mark_frame,
    media_frame,
    optional_dict,
    optional_str,
    require_dict,
    string_parameters,
)

AUTH_TOKEN_HEADER = "x-telnyx-streaming-auth-token"
# Telnyx plays what we send on the socket it came from, so our frames need no stream id.
_MEDIA_PREFIX = '{"event":"media","media":{"payload":"'


class TelnyxFrames(OutboundFrames):
    """Frames for a stream dialled with stream_bidirectional_mode "rtp": raw PCMU in each media frame."""

    def media(self, ulaw: bytes) -> str:
        return _MEDIA_PREFIX + base64.b64encode(ulaw).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        return '{"event":"clear"}'


def _connected_token(message: dict[str, Any]) -> str | None:
    """The stream_auth_token we dialled with, echoed at the top of the frame or inside `connected`."""
    token = optional_str(message.get(AUTH_TOKEN_HEADER), AUTH_TOKEN_HEADER)
    if token is None:
        connected = optional_dict(message, "connected", "connected")
        token = optional_str(connected.get(AUTH_TOKEN_HEADER), f"connected.{AUTH_TOKEN_HEADER}")
    return token


def _error_detail(message: dict[str, Any]) -> str:
    """Telnyx's report of a frame it refused, for the log; its inner shape is not documented, so any is read."""
    payload = message.get("payload")
    if isinstance(payload, dict):
        parts = [str(payload[key]) for key in ("code", "title", "detail") if payload.get(key) not in (None, "")]
        return ": ".join(parts) or json.dumps(payload)[:200]
    return "" if payload is None else str(payload)[:200]


class TelnyxMediaCodec(MediaCodec):
    carrier = "telnyx"
    token_header = AUTH_TOKEN_HEADER
    # Telnyx does not promise order: up to 4 frames (80 ms) wait for a late one before its gap is skipped.
    reorder_window = 4
    sequence_key = "sequence_number"

    def parse(self, message: dict[str, Any]):
        event = message.get("event")
        if event == "media":
            # Telnyx does not promise order; the sequence number and timestamp travel with the audio.
            return media_frame(message, sequence_key=self.sequence_key)
        if event == "start":
            start = require_dict(message, "start")
            stream_id = optional_str(message.get("stream_id"), "stream_id")
            if not stream_id:
                raise FrameError("start without stream_id")
            fmt = optional_dict(start, "media_format", "start.media_format")
            check_mulaw(fmt.get("encoding"), fmt.get("sample_rate"))
            params = string_parameters(start.get("custom_parameters"), "start.custom_parameters")
            return StreamStart(
                stream_id=stream_id,
                provider_call_id=optional_str(start.get("call_control_id"), "start.call_control_id"),
                token=params.get("token"),
                parameters=params,
            )
        if event == "mark":
            return mark_frame(message)
        if event == "dtmf":
            return dtmf_frame(message)
        if event == "error":
            return StreamOther("error", _error_detail(message))
        if event == "stop":
            return StreamStop()
        if event == "connected":
            return StreamConnected(_connected_token(message))
        raise FrameError(f"unknown event {event!r}")

    def outbound(self, stream_id: str) -> TelnyxFrames:
        return TelnyxFrames(stream_id)
