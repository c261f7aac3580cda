"""Twilio Media Streams frames: connected, start, media, mark, dtmf, stop; media/mark/clear out."""
from __future__ import annotations

import base64
import json
from typing import Any

from ..media import (
    FrameError,
    MediaCodec,
    OutboundFrames,
    StreamConnected,
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


class TwilioFrames(OutboundFrames):
    def __init__(self, stream_id: str) -> None:
        super().__init__(stream_id)
        self._media_prefix = '{"event":"media","streamSid":' + self._quoted_id + ',"media":{"payload":"'

    def media(self, ulaw: bytes) -> str:
        return self._media_prefix + base64.b64encode(ulaw).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_id, "mark": {"name": name}})

    def clear(self) -> str:
        return '{"event":"clear","streamSid":' + self._quoted_id + "}"


class TwilioMediaCodec(MediaCodec):
    carrier = "twilio"

    def parse(self, message: dict[str, Any]):
        event = message.get("event")
        if event == "media":
            return media_frame(message, sequence_key="sequenceNumber")
        if event == "start":
            start = require_dict(message, "start")
            stream_id = optional_str(message.get("streamSid") or start.get("streamSid"), "streamSid")
            if not stream_id:
                raise FrameError("start without streamSid")
            fmt = optional_dict(start, "mediaFormat", "start.mediaFormat")
            check_mulaw(fmt.get("encoding"), fmt.get("sampleRate"))
            params = string_parameters(start.get("customParameters"), "start.customParameters")
            return StreamStart(
                stream_id=stream_id,
                provider_call_id=optional_str(start.get("callSid"), "start.callSid"),
                token=params.get("token"),
                parameters=params,
            )
        if event == "mark":
            return mark_frame(message)
        if event == "dtmf":
            return dtmf_frame(message)
        if event == "stop":
            return StreamStop()
        if event == "connected":
            return StreamConnected()
        raise FrameError(f"unknown event {event!r}")

    def outbound(self, stream_id: str) -> TwilioFrames:
        return TwilioFrames(stream_id)
