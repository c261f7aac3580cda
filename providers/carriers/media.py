"""Media-stream frame codecs: each carrier's WebSocket JSON frames ⇄ normalized frames.

A codec is pure: `parse()` turns one decoded JSON message into a frame dataclass (or raises
FrameError naming what is wrong), and `outbound(stream_id)` gives the builder of the frames we
send on that stream. Outbound media is built by string concatenation around a prefix made once
per stream, since it runs 50 times a second per call.
"""
from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

_URLSAFE = bytes.maketrans(b"-_", b"+/")


class FrameError(ValueError):
    """A malformed media frame; the message says what is wrong (never fatal for the stream)."""


@dataclass(frozen=True)
class StreamConnected:
    token: str | None = None


@dataclass(frozen=True)
class StreamStart:
    stream_id: str
    provider_call_id: str | None
    token: str | None = None
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    parameters: dict[str, str] = field(default_factory=dict)


# Not frozen, unlike the other frames: a frozen dataclass's __init__ costs twice as much, and this
# one is built 50 times a second per call (nothing changes it after parse).
@dataclass(slots=True)
class StreamMedia:
    payload: bytes
    sequence: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class StreamMark:
    name: str


@dataclass(frozen=True)
class StreamDtmf:
    digit: str


@dataclass(frozen=True)
class StreamCleared:
    pass


@dataclass(frozen=True)
class StreamStop:
    pass


@dataclass(frozen=True)
class StreamOther:
    """A frame we understand but do not act on (e.g. a carrier error report); logged."""

    event: str
    detail: str = ""


Frame = StreamConnected | StreamStart | StreamMedia | StreamMark | StreamDtmf | StreamCleared | StreamStop | StreamOther


def decode_payload(value: Any) -> bytes:
    """Base64 audio (standard or URL-safe alphabet, padding optional) → bytes."""
    if not isinstance(value, str):
        raise FrameError("media payload must be a base64 string")
    data = value.encode("ascii", "replace").translate(_URLSAFE)
    if len(data) % 4:
        data += b"=" * (-len(data) % 4)
    try:
        # strict_mode validates in C what b64decode(validate=True) checks with a regex first
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise FrameError("media payload is not base64") from None


# Sequence numbers and millisecond timestamps fit in 63 bits; a larger one (JSON integers have no
# limit) overflowed the lag arithmetic and closed the stream (found by the fuzz job).
MAX_FRAME_INT = 2**63 - 1


def optional_int(value: Any, name: str) -> int | None:
    """Carriers send numbers as strings or integers; anything else (or beyond 63 bits) is a malformed frame."""
    if isinstance(value, str) and value.isdigit() and len(value) < 19:  # the usual case, on every media frame
        return int(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise FrameError(f"{name} must be a number")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) < 40:
        value = int(value)
    if isinstance(value, int):
        if abs(value) > MAX_FRAME_INT:
            raise FrameError(f"{name} is out of range")
        return value
    raise FrameError(f"{name} must be a number")


def require_dict(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise FrameError(f"{key} must be an object")
    return value


def optional_dict(container: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    """A sub-object that may be left out (then empty); present, it must be an object."""
    value = container.get(key) or {}
    if not isinstance(value, dict):
        raise FrameError(f"{name} must be an object")
    return value


def optional_str(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FrameError(f"{name} must be a string")
    return value


MULAW_NAMES = frozenset({"audio/x-mulaw", "pcmu", "mulaw", "audio/pcmu"})


def check_mulaw(encoding: Any, sample_rate: Any) -> None:
    """Streams must carry μ-law at 8 kHz; any other codec is refused at start."""
    name = str(encoding or "audio/x-mulaw").split(";")[0].strip().lower()
    rate = optional_int(sample_rate, "sample rate") or 8000
    if name not in MULAW_NAMES or rate != 8000:
        raise FrameError(f"unsupported stream codec {encoding!r} at {rate} Hz (expected μ-law 8000 Hz)")


INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})


def media_frame(message: dict[str, Any], *, sequence_key: str) -> StreamMedia | StreamOther:
    """A `media` frame: audio in `media.payload`, `media.timestamp` in ms, the sequence number at the top.

    Only the caller's track is transcribed; another track (a fork of both) is reported, not decoded.
    """
    media = require_dict(message, "media")
    track = media.get("track", "inbound")
    if not isinstance(track, str):  # an object or a list is not hashable: `in` would raise TypeError
        raise FrameError("media.track must be a string")
    if track not in INBOUND_TRACKS:
        return StreamOther("media", f"track {track!r} ignored")
    return StreamMedia(
        decode_payload(media.get("payload")),
        sequence=optional_int(message.get(sequence_key), sequence_key),
        timestamp_ms=optional_int(media.get("timestamp"), "media.timestamp"),
    )


def mark_frame(message: dict[str, Any]) -> StreamMark:
    """The echo of a mark we sent: `{"mark": {"name": ...}}`."""
    name = optional_str(require_dict(message, "mark").get("name"), "mark.name")
    if not name:
        raise FrameError("mark without a name")
    return StreamMark(name)


def dtmf_frame(message: dict[str, Any]) -> StreamDtmf:
    """A key the caller pressed: `{"dtmf": {"digit": ...}}`."""
    digit = optional_str(require_dict(message, "dtmf").get("digit"), "dtmf.digit")
    if not digit:
        raise FrameError("dtmf without a digit")
    return StreamDtmf(digit)


def string_parameters(value: Any, name: str) -> dict[str, str]:
    """Custom stream parameters (absent or empty means none), every value as a string.

    Besides an object, a list of {"name", "value"} objects is read: the form Telnyx takes them in
    (streaming_start's custom_parameters), in case a frame echoes them that way.
    """
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, list) and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in value):
        return {item["name"]: str(item.get("value", "")) for item in value}
    if not isinstance(value, dict):
        raise FrameError(f"{name} must be an object")
    return {str(k): str(v) for k, v in value.items()}


class OutboundFrames:
    """The frames we send on one stream. Subclasses fill in the carrier's JSON shapes."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self._quoted_id = json.dumps(stream_id)

    def media(self, ulaw: bytes) -> str:
        raise NotImplementedError

    def mark(self, name: str) -> str:
        raise NotImplementedError

    def clear(self) -> str:
        raise NotImplementedError


class MediaCodec:
    """A carrier's stream format. `parse` must raise FrameError for anything malformed."""

    carrier: ClassVar[str] = ""
    # Query parameter / header that may carry the stream token (besides the start frame).
    token_header: ClassVar[str | None] = None
    # Inbound media frames held back (at most this many) to put them in sequence order; 0: taken as they come.
    reorder_window: ClassVar[int] = 0
    sequence_key: ClassVar[str] = "sequenceNumber"  # where a frame's sequence number is, at its top level

    def parse(self, message: dict[str, Any]) -> Frame:
        raise NotImplementedError

    def outbound(self, stream_id: str) -> OutboundFrames:
        raise NotImplementedError
